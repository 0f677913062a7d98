"""Learn: the formula behind each compression method, each with a live toy plot computed by the engine itself.

The toy tensor is 2,000 seeded normal weights plus a few outliers; every level, threshold and mask drawn here
comes from `compression_core.compress.compress_weight` (the per-layer step of `compress`), the quantizer's own
transfer function and `compression_core.histograms` — the same code that compresses real models, nothing
re-implemented in the UI.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st
import torch
from torch import nn

from compression_core import quantize as quant_ops
from compression_core import quantize_blocks as blocks
from compression_core.compress import compress_weight
from compression_core.compressed import LayerCompression
from compression_core.config import PruneSpec, QuantSpec
from compression_core.methods import prune_methods, quantizers
from compression_core.repair_gptq import gptq_weight, layer_hessians
from compression_core.size import layer_size
from dashboard import frame, layer_services
from dashboard.charts import layers as layer_charts
from dashboard.charts import learn as learn_charts
from dashboard.charts.common import bits_label

TOY_SIZE = 2000
OUTLIERS = (-0.42, -0.31, 0.29, 0.36, 0.47)  # a few large weights, as trained layers have
SKEWED_OUTLIERS = (0.41, 0.48, 0.59)  # a one-sided tail: the asymmetric example


def toy_tensor(shift: float = 0.0, outliers: tuple[float, ...] = OUTLIERS) -> torch.Tensor:
    """(1, 2000 + outliers) float32: 2,000 seeded N(shift, 0.05²) weights plus outliers (one 'output channel')."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(TOY_SIZE, generator=gen) * 0.05 + shift
    return torch.cat([w, torch.tensor(outliers)]).unsqueeze(0)


def plot_layer(w: torch.Tensor, layer: LayerCompression, key: str, *, hide_zeros: bool = False,
               title: str | None = None) -> None:
    hist, grid = layer_services.histogram_view(w, layer, bins=90, hide_zeros=hide_zeros)
    st.plotly_chart(layer_charts.weight_histogram(hist, grid, title=title, height=300), key=key,
                    config={"displaylogo": False})


def error_caption(w: torch.Tensor, layer: LayerCompression) -> None:
    mse = float(((layer.weight - w) ** 2).mean())
    levels = int(layer.codebook.numel()) if layer.codebook is not None else None
    extra = f" · {levels} distinct levels" if levels is not None else ""
    st.caption(f"Mean squared error {mse:.2e}{extra}")


def uniform_symmetric() -> None:
    st.latex(r"s = \frac{\max_i |w_i|}{2^{b-1}-1},\qquad q = \operatorname{clamp}\!\left(\operatorname{round}"
             r"\!\left(\tfrac{w}{s}\right),\ -(2^{b-1}-1),\ 2^{b-1}-1\right),\qquad \hat w = s\,q")
    st.markdown("One scale for the whole tensor, zero maps to zero, and the grid is symmetric around it. "
                "The outliers set `max |w|`, so most weights share only a few levels at low bit-widths.")
    bits = st.slider("Bits", 2, 8, 3, key="learn_sym_bits", bind="query-params")
    w = toy_tensor()
    layer = compress_weight(w, QuantSpec(bits=bits, scheme="sym", granularity="tensor"))
    plot_layer(w, layer, "learn_sym_hist", title=f"{bits}-bit symmetric grid: {2 ** bits - 1} levels")
    error_caption(w, layer)


def asymmetric() -> None:
    st.latex(r"\begin{gathered} s = \frac{\max(w, 0) - \min(w, 0)}{2^{b}-1},\qquad z = \operatorname{round}"
             r"\!\left(-\tfrac{\min(w, 0)}{s}\right) \\ q = \operatorname{clamp}\!\left(\operatorname{round}"
             r"\!\left(\tfrac{w}{s}\right) + z,\ 0,\ 2^{b}-1\right),\qquad \hat w = s\,(q - z) \end{gathered}")
    st.markdown("The integer zero point `z` shifts the grid so it covers `[min, max]` exactly; the float 0 is "
                "still exactly representable (`q = z`). For a skewed tensor no level is wasted on values that "
                "never occur.")
    bits = st.slider("Bits", 1, 8, 3, key="learn_asym_bits", bind="query-params")
    w = toy_tensor(shift=0.05, outliers=SKEWED_OUTLIERS)
    layer = compress_weight(w, QuantSpec(bits=bits, scheme="asym", granularity="tensor"))
    plot_layer(w, layer, "learn_asym_hist", title=f"{bits}-bit asymmetric grid on a shifted tensor")
    lo, hi = float(w.min()), float(w.max())
    xs = torch.linspace(lo - 0.05, hi + 0.05, 600).unsqueeze(0)
    qmin, qmax = quant_ops.qrange(bits, "asym")
    curve = quant_ops.fake_quantize(xs, layer.scale, layer.zero_point, qmin, qmax)
    frame_ = pd.DataFrame({"w": xs.flatten().tolist(), "w_hat": curve.flatten().tolist()})
    st.plotly_chart(learn_charts.transfer_curve(frame_, zero_point_value=0.0,
                                                clip=((qmin - int(layer.zero_point)) * float(layer.scale),
                                                      (qmax - int(layer.zero_point)) * float(layer.scale)),
                                                title=f"Transfer curve: s = {float(layer.scale):.4f}, "
                                                      f"z = {int(layer.zero_point)}"),
                    key="learn_asym_curve", config={"displaylogo": False})
    sym_bits = max(bits, 2)
    sym = compress_weight(w, QuantSpec(bits=sym_bits, scheme="sym", granularity="tensor"))
    st.caption(f"Mean squared error: asymmetric {float(((layer.weight - w) ** 2).mean()):.2e} vs symmetric "
               f"({sym_bits}-bit) {float(((sym.weight - w) ** 2).mean()):.2e}")


def percentile_clipping() -> None:
    st.latex(r"\begin{gathered} c = P_{p}\big(|w|\big),\qquad s = \frac{c}{2^{b-1}-1} \\ "
             r"\hat w = s\cdot\operatorname{clamp}\!\left(\operatorname{round}\!\left(\tfrac{w}{s}\right),"
             r"\ -(2^{b-1}-1),\ 2^{b-1}-1\right) \end{gathered}")
    st.markdown("Clipping the range at a percentile of `|w|` gives up the few outliers (they saturate at ±c) "
                "to get finer steps for everything else.")
    c = st.columns(2)
    bits = c[0].slider("Bits", 2, 8, 3, key="learn_clip_bits", bind="query-params")
    percentile = c[1].slider("Percentile p", 90.0, 100.0, 99.0, 0.1, key="learn_clip_percentile", bind="query-params")
    w = toy_tensor()
    layer = compress_weight(w, QuantSpec(bits=bits, scheme="sym", granularity="tensor", range="percentile",
                                   percentile=percentile))
    plot_layer(w, layer, "learn_clip_hist", title=f"{bits}-bit grid clipped at the {percentile:g}th percentile")
    minmax = compress_weight(w, QuantSpec(bits=bits, scheme="sym", granularity="tensor"))
    st.caption(f"Mean squared error: clipped {float(((layer.weight - w) ** 2).mean()):.2e} vs min-max "
               f"{float(((minmax.weight - w) ** 2).mean()):.2e}")


def magnitude_pruning() -> None:
    st.latex(r"k = \operatorname{round}(s\cdot n),\qquad \tau = \text{the }k\text{-th smallest }|w_i|,\qquad "
             r"m_i = \big[\,|w_i| > \tau\,\big],\qquad \hat w = m \odot w")
    st.markdown("Remove exactly `round(s·n)` weights with the smallest magnitude; the threshold τ is the "
                "largest removed `|w|`. Quantizing afterwards keeps the zeros exactly zero.")
    c = st.columns(2)
    sparsity = c[0].slider("Sparsity s", 0.0, 0.99, 0.5, 0.01, key="learn_prune_sparsity", bind="query-params")
    bits = c[1].select_slider("Then quantize to", [2, 3, 4, 5, 6, 7, 8, 32], value=32, key="learn_prune_bits",
                              bind="query-params", format_func=bits_label)
    w = toy_tensor()
    layer = compress_weight(w, QuantSpec(bits=bits, granularity="tensor"), PruneSpec(sparsity=sparsity))
    plot_layer(w, layer, "learn_prune_hist", hide_zeros=True,
               title=f"{layer.n - layer.nnz:,} of {w.numel():,} weights removed")


def codebook_demo(quantizer: str, title) -> None:
    """A bits slider driving a codebook quantizer (kmeans / pow2) on the toy tensor; `title(bits)` names the plot."""
    bits = st.slider("Bits", 1, 6, 3, key=f"learn_{quantizer}_bits", bind="query-params")
    w = toy_tensor()
    layer = compress_weight(w, QuantSpec(bits=bits, quantizer=quantizer))
    plot_layer(w, layer, f"learn_{quantizer}_hist", title=title(bits))
    error_caption(w, layer)


def kmeans_sharing() -> None:
    st.latex(r"\min_{c_1,\dots,c_K}\ \sum_i \min_k\, (w_i - c_k)^2,\qquad K = 2^{b},\qquad "
             r"\hat w_i = c_{\,\arg\min_k |w_i - c_k|}")
    st.markdown("Weight sharing (Deep Compression): 1-D k-means with centroids initialised linearly between min "
                "and max; each weight stores only the index of its centroid, the codebook stores the values.")
    codebook_demo("kmeans", lambda bits: f"k-means codebook with up to {2 ** bits} centroids")


def power_of_two() -> None:
    st.latex(r"\begin{gathered} \hat w = \operatorname{sign}(w)\cdot 2^{k}\ \text{ or }\ 0 \\ "
             r"k \in \{k_{\max} - 2^{b-1} + 2,\ \dots,\ k_{\max}\},\qquad k_{\max} = \operatorname{round}"
             r"\big(\log_2 \max_i |w_i|\big) \end{gathered}")
    st.markdown("Logarithmic levels: dense near zero where most weights are, sparse far out; multiplying by a "
                "power of two is a bit shift in hardware.")
    codebook_demo("pow2", lambda bits: f"{bits}-bit power-of-two levels")


def block_scales() -> None:
    st.latex(r"s_g = \frac{\max_{i \in g} |w_i|}{2^{b-1}-1}\ \text{ for each block } g \text{ of } G "
             r"\text{ inputs},\qquad \hat w_i = s_g \cdot \operatorname{clamp}\!\left(\operatorname{round}"
             r"\!\left(\tfrac{w_i}{s_g}\right),\ \pm(2^{b-1}-1)\right)")
    st.markdown("Group-wise (block) scales: every block of `G` consecutive inputs gets its own scale, so an "
                "outlier only coarsens its own block. Each scale costs storage of its own: 32 bits as fp32, 16 "
                "as fp16, 8 as e8m0 (a power of two, rounded up, as in the MX formats).")
    c = st.columns(3)
    bits = c[0].slider("Bits", 2, 8, 3, key="learn_block_bits", bind="query-params")
    group = c[1].segmented_control("Block size G", [8, 16, 32, 64], default=32, required=True,
                                   key="learn_block_size", bind="query-params") or 32
    scale_dtype = c[2].segmented_control("Scale stored as", list(blocks.SCALE_KIND), default="fp32", required=True,
                                         key="learn_block_scale_dtype", bind="query-params") or "fp32"
    w = toy_tensor()[:, :256].clone()
    w[0, [37, 150, 201]] = torch.tensor(OUTLIERS[-3:])  # outliers inside the row, not at its end
    spec = QuantSpec(bits=bits, granularity="group", group_size=group, scale_dtype=scale_dtype)
    layer = compress_weight(w, spec)
    tensor = compress_weight(w, QuantSpec(bits=bits, granularity="tensor"))
    scale = blocks.side_to_float(layer.side["scale"], blocks.SCALE_KIND[scale_dtype])
    reach = (scale * quant_ops.qrange(bits, "sym")[1]).repeat_interleave(group)[:w.numel()]
    row = pd.DataFrame({"index": range(w.numel()), "w": w[0].tolist(), "w_block": layer.weight[0].tolist(),
                        "w_tensor": tensor.weight[0].tolist(), "reach": reach.tolist()})
    st.plotly_chart(learn_charts.block_scales(row, title=f"{bits}-bit grid, one {scale_dtype} scale per {group} "
                                                         f"weights"), key="learn_block_chart",
                    config={"displaylogo": False})
    per_weight = layer_size(layer, index_bits=4).total_bits / layer.n
    st.caption(f"Mean squared error: blocks {float(((layer.weight - w) ** 2).mean()):.2e} vs one scale "
               f"{float(((tensor.weight - w) ** 2).mean()):.2e} · {per_weight:.3f} bits per weight with the scales")


def float_elements() -> None:
    st.latex(r"\begin{gathered} v = (-1)^{S}\, 2^{E - \text{bias}} \left(1 + \tfrac{M}{2^{m}}\right)\ "
             r"(E > 0),\qquad v = (-1)^{S}\, 2^{1 - \text{bias}}\, \tfrac{M}{2^{m}}\ (E = 0) \\ "
             r"s = \frac{\max_i |w_i|}{v_{\max}},\qquad \hat w = s \cdot \operatorname{fp}\!\left("
             r"\tfrac{w}{s}\right) \end{gathered}")
    st.markdown("Floating-point elements (FP8 E4M3 / E5M2, FP6, FP4 E2M1) space their levels "
                "logarithmically: fine steps near zero where most weights are, coarse ones far out. The scale "
                "maps the largest weight to the format's largest value; rounding is to nearest, ties to even.")
    formats = [q for q, info in quantizers().items() if info.kind == "format" and "tensor" in info.granularities]
    name = st.segmented_control("Format", formats, default=formats[-1], required=True,
                                key="learn_fp_format", bind="query-params") or formats[-1]
    w = toy_tensor()
    spec = QuantSpec(quantizer=name, granularity="tensor")
    layer = compress_weight(w, spec)
    reach = float(w.abs().max())
    xs = torch.linspace(-reach, reach, 1500).unsqueeze(0)  # the same absmax, so the same scale as the toy
    curve = pd.DataFrame({"w": xs.flatten().tolist(), "w_hat": compress_weight(xs, spec).weight.flatten().tolist()})
    st.plotly_chart(learn_charts.transfer_curve(curve, title=f"{quantizers()[name].label}: "
                                                              f"{len(layer.weight.unique())} levels used by the toy"),
                    key="learn_fp_curve", config={"displaylogo": False})
    grid = compress_weight(w, QuantSpec(bits=spec.bits, granularity="tensor"))
    st.caption(f"Mean squared error: {name} {float(((layer.weight - w) ** 2).mean()):.2e} vs a {spec.bits}-bit "
               f"integer grid {float(((grid.weight - w) ** 2).mean()):.2e}")


def n_of_m() -> None:
    st.latex(r"m_{g,j} = \big[\, j \in \operatorname{top}_N\{|w_{g,1}|, \dots, |w_{g,M}|\}\,\big]\quad"
             r"\text{for every group } g \text{ of } M \text{ consecutive weights}")
    st.markdown("Semi-structured sparsity: exactly N of every M consecutive weights survive (2:4 is what "
                "sparse tensor cores run at full speed), so the sparsity is always 1 − N/M.")
    pattern = st.segmented_control("N:M", ["1:4", "2:4", "3:4", "2:8", "4:8"], default="2:4", required=True,
                                   key="learn_nm_pattern", bind="query-params") or "2:4"
    n, m = (int(v) for v in pattern.split(":"))
    w = toy_tensor()[:, :128].reshape(8, 16)  # (rows, columns): groups run along the columns
    mask = compress_weight(w, prune=PruneSpec(method="nm", n=n, m=m)).mask
    kept = pd.DataFrame(torch.where(mask, w, torch.full_like(w, float("nan"))).tolist())
    st.plotly_chart(learn_charts.mask_pattern(kept, m=m, title=f"{pattern}: {int(mask.sum())} of {w.numel()} kept"),
                    key="learn_nm_pattern_chart", config={"displaylogo": False})


def gptq() -> None:
    st.latex(r"\begin{gathered} H = \tfrac{2}{n} X^\top X + \lambda I,\qquad U = \operatorname{chol}(H^{-1})^\top"
             r" \\ q_j = \operatorname{round}_{\text{grid}}(w_j),\qquad w_{j:} \leftarrow w_{j:} - "
             r"\frac{w_j - q_j}{U_{jj}}\, U_{j,\,j:} \end{gathered}")
    st.markdown("GPTQ rounds one input column at a time and moves its rounding error onto the columns not yet "
                "rounded, weighted by the inverse Hessian of the layer's calibration inputs: inputs that move "
                "together can cancel each other's errors. The grid and its scales are round-to-nearest's, so the "
                "size does not change; only which level each weight takes does.")
    c = st.columns(2)
    bits = c[0].slider("Bits", 2, 6, 3, key="learn_gptq_bits", bind="query-params")
    rho = c[1].slider("Input correlation ρ", 0.0, 0.99, 0.9, 0.01, key="learn_gptq_rho", bind="query-params",
                      help="How strongly the layer's two inputs move together.")
    gen = torch.Generator().manual_seed(0)
    base, noise = torch.randn(512, 1, generator=gen), torch.randn(512, 1, generator=gen)
    x = torch.cat([base, rho * base + (1 - rho ** 2) ** 0.5 * noise], dim=1)  # (512 samples, 2 inputs)
    layer = nn.Linear(2, 48, bias=False)  # a toy 2-input layer with 48 output rows
    with torch.no_grad():
        layer.weight.copy_(toy_tensor()[0, :96].reshape(48, 2))
    spec = QuantSpec(bits=bits, granularity="tensor")
    w = layer.weight.detach()
    rtn = compress_weight(w, spec).weight
    repaired = gptq_weight(w, layer_hessians(layer, layer, x), spec).weight
    errors = pd.DataFrame({"rtn": ((x @ (rtn - w).T) ** 2).mean(0).tolist(),
                           "gptq": ((x @ (repaired - w).T) ** 2).mean(0).tolist()})
    st.plotly_chart(learn_charts.rounding_errors(errors, title=f"{bits}-bit grid, inputs correlated at ρ = {rho:.2f}"),
                    key="learn_gptq_chart", config={"displaylogo": False})
    st.caption(f"Mean output error: round to nearest {errors['rtn'].mean():.2e} · GPTQ {errors['gptq'].mean():.2e} "
               f"· {int((errors['gptq'] < errors['rtn']).sum())} of 48 rows better, "
               f"{int((errors['gptq'] > errors['rtn']).sum())} worse")


def all_methods() -> None:
    """Every registered quantizer and pruning method, read from the engine's method tables."""
    st.markdown("Every method the engine knows, as its registry (`compression_core.methods`) describes it.")
    st.dataframe(pd.DataFrame([{"Quantizer": q.label, "Kind": q.kind, "Bits": ", ".join(map(str, q.bits)),
                                "Values stored as": q.value_storage, "Side data": q.scale_storage,
                                "What it does": q.description} for q in quantizers().values()]),
                 hide_index=True, key="learn_quantizers")
    st.dataframe(pd.DataFrame([{"Pruning method": p.label, "Global ranking": p.ranks_globally,
                                "Needs calibration data": p.needs_calibration, "Whole channels": p.structured,
                                "Sparsity setting": p.uses_sparsity, "What it does": p.description}
                               for p in prune_methods().values()]),
                 hide_index=True, key="learn_prune_methods")


SECTIONS = {
    "Uniform symmetric": uniform_symmetric,
    "Asymmetric & zero point": asymmetric,
    "Percentile clipping": percentile_clipping,
    "Magnitude pruning": magnitude_pruning,
    "k-means sharing": kmeans_sharing,
    "Power-of-two": power_of_two,
    "Block scales": block_scales,
    "Float elements": float_elements,
    "GPTQ": gptq,
    "N:M sparsity": n_of_m,
    "All methods": all_methods,
}

frame.hide_sidebar_settings()  # the toy tensor does not use the model or data chosen there
st.title("Learn")
st.page_link("views/lessons.py", label="Ready-made lessons for a class: each opens Explore with its settings",
             icon=":material/menu_book:")
st.caption("The formulas behind each method, with a toy tensor (2,000 seeded normal weights plus a few "
           "outliers) compressed live by the engine's own functions.")
for tab, section in zip(st.tabs(list(SECTIONS)), SECTIONS.values()):
    with tab:
        section()
