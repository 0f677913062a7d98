"""Explore's state, derived from one canonical config: what every control shows and whether it is enabled.

The controls hold raw choices (from the URL, from session state, from a drag); `nearest_valid` turns them into
the canonical `CompressionConfig` the page evaluates, switching an impossible combination to the nearest valid
one with a one-line note, and `widget_states` says what each control must then show. A disabled control shows the
value that applies (N:M 2:4 -> sparsity 0.50; fp16 -> 16 bits), so what is shown is what is evaluated. Only the
method choices (quantizer, pruning method) keep the user's pick while they do nothing (32 bits, sparsity 0), so
moving the slider back brings them into force. No Streamlit here: the page reads and writes the values.

    >>> config, note = nearest_valid({"explore_bits": 1, "explore_scheme": "sym"})
    >>> config.quant.scheme, note.startswith("1-bit")
    ('asym', True)
    >>> widget_states(nearest_valid({"explore_prune": "nm"})[0], {"explore_prune": "nm"})["explore_sparsity"]
    WidgetState(value=0.5, enabled=False)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from compression_core import methods
from compression_core.config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, RANGES, REPAIRS, SCALE_DTYPES, SCHEMES,
                                     SCOPES, CompressionConfig, ConfigError, PruneSpec, QuantSpec)

DEFAULT_CONFIG = CompressionConfig(quant=QuantSpec(bits=4, scheme="sym", granularity="channel", range="minmax"),
                                   prune=PruneSpec(sparsity=0.5, method="magnitude", scope="global"))
NM_PATTERNS = ("2:4", "1:4", "4:8", "2:8")
GROUP_SIZES = (0, 32, 64, 128, 256)  # 0 = not grouped (granularity tensor / channel)
MAX_SPARSITY = 0.99  # the slider's end


@dataclass(frozen=True)
class WidgetState:
    """What one control shows (its option value, not its label) and whether the user may change it."""

    value: object
    enabled: bool


def repair_options(q_info: methods.QuantizerInfo, on: bool, act_bits: int) -> list[str]:
    """The repairs that apply: GPTQ to integer grids, AWQ to any weight quantizer, SmoothQuant with 8-bit inputs."""
    return [r for r in REPAIRS if r == "none" or (r == "gptq" and on and q_info.kind == "grid")
            or (r == "awq" and on) or (r == "smoothquant" and act_bits == 8)]


def _choice(raw: Mapping, key: str, options, default):
    value = raw.get(key, default)
    return value if value in options else default


def _number(raw: Mapping, key: str, default: float) -> float:
    value = raw.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else default


def _quant(raw: Mapping, notes: list[str]) -> QuantSpec:
    """The weight quantization the raw choices describe, nudged to the nearest valid one."""
    d = DEFAULT_CONFIG.quant
    known = methods.quantizers()
    quantizer = _choice(raw, "explore_quantizer", known, d.quantizer)
    info = known[quantizer]
    bits = _choice(raw, "explore_bits", ALLOWED_BITS, d.bits)
    if info.uses_bits and bits not in info.bits + (32,):
        near = min(info.bits, key=lambda b: (abs(b - bits), b))
        notes.append(f"{info.label} takes {', '.join(map(str, info.bits))} bits: {bits} bits became {near}.")
        bits = near
    scheme = _choice(raw, "explore_scheme", SCHEMES, d.scheme)
    if info.kind == "grid" and bits == 1 and scheme == "sym":
        notes.append("1-bit weights need an asymmetric grid (a symmetric one has only the level 0): the scheme "
                     "switched to asymmetric.")
        scheme = "asym"
    granularity = _choice(raw, "explore_granularity", GRANULARITIES, d.granularity)
    if len(info.granularities) > 1 and granularity not in info.granularities:
        notes.append(f"{info.label} offers no {granularity} granularity: it switched to {info.granularities[0]}.")
        granularity = info.granularities[0]
    elif len(info.granularities) == 1:
        granularity = info.granularities[0]  # a block-only format (MX, NF4) uses its blocks
    scale_dtype = _choice(raw, "explore_scale_dtype", SCALE_DTYPES, d.scale_dtype)
    if info.scale_dtypes and scale_dtype not in info.scale_dtypes:
        notes.append(f"{info.label} stores no {scale_dtype} scales: they are stored as fp32.")
        scale_dtype = "fp32"
    group_size = _choice(raw, "explore_group_size", GROUP_SIZES, 0) or None
    return QuantSpec(bits=bits, quantizer=quantizer, scheme=scheme, granularity=granularity,
                     range=_choice(raw, "explore_range", RANGES, d.range), group_size=group_size,
                     scale_dtype=scale_dtype, double_quant=bool(raw.get("explore_double_quant", d.double_quant)))


def _prune(raw: Mapping) -> PruneSpec:
    d = DEFAULT_CONFIG.prune
    method = _choice(raw, "explore_prune", methods.prune_methods(), d.method)
    sparsity = _number(raw, "explore_sparsity", d.sparsity)
    sparsity = min(max(sparsity, 0.0), MAX_SPARSITY)
    n, m = (int(v) for v in _choice(raw, "explore_nm", NM_PATTERNS, NM_PATTERNS[0]).split(":"))
    return PruneSpec(sparsity=round(sparsity, 4), method=method, scope=_choice(raw, "explore_scope", SCOPES, d.scope),
                     n=n, m=m)


def nearest_valid(raw: Mapping[str, object]) -> tuple[CompressionConfig, str | None]:
    """The canonical config the controls' raw values describe, and one line when a choice had to change.

    Args:
        raw: widget key -> option value (`explore_bits`, `explore_quantizer`, ...); a missing or unknown value
            takes DEFAULT_CONFIG's.

    Returns:
        (config, note): the nearest valid config (1-bit symmetric -> asymmetric, a bit-width the quantizer lacks
        -> the closest it has, a repair that does not apply -> none, ...), and a sentence for the user saying what
        changed, or None when the choices were valid as they stood.
    """
    notes: list[str] = []
    quant, prune = _quant(raw, notes), _prune(raw)
    act_bits = _choice(raw, "explore_act_bits", ACT_BITS, DEFAULT_CONFIG.act_bits)
    repair = _choice(raw, "explore_repair", REPAIRS, DEFAULT_CONFIG.repair)
    options = repair_options(methods.quantizers()[quant.quantizer], quant.enabled, act_bits)
    if repair not in options:
        notes.append(f"Repair {repair} does not apply to these settings ("
                     + {"gptq": "it needs an integer grid", "awq": "it needs quantized weights",
                        "smoothquant": "it needs 8-bit activations"}[repair] + "): it switched to none.")
        repair = "none"
    try:
        config = CompressionConfig(quant=quant, prune=prune, act_bits=act_bits, repair=repair,
                                   alpha=min(max(_number(raw, "explore_alpha", DEFAULT_CONFIG.alpha), 0.0), 1.0),
                                   act_order=bool(raw.get("explore_act_order", False)))
    except ConfigError as e:  # a combination the table above does not foresee: start again from the default
        return DEFAULT_CONFIG, f"{e}; the controls went back to the default."
    return config, " ".join(notes) or None


def widget_states(config: CompressionConfig, raw: Mapping[str, object] | None = None) -> dict[str, WidgetState]:
    """What each Explore control shows and whether it is enabled, for the canonical `config`.

    Args:
        config: a config from `nearest_valid` (canonical; no per-layer overrides are shown here).
        raw: the raw choices; only the quantizer and pruning method are read from it, to keep showing the user's
            pick while it does nothing (32 bits, sparsity 0).

    Returns:
        widget key -> WidgetState, for every control of `explore.controls`.
    """
    raw = raw or {}
    q, p = config.quant, config.prune
    known_q, known_p = methods.quantizers(), methods.prune_methods()
    quantizer = q.quantizer if q.enabled else _choice(raw, "explore_quantizer", known_q, q.quantizer)
    method = p.method if p.enabled else _choice(raw, "explore_prune", known_p, p.method)
    qi, pi = known_q[quantizer], known_p[method]
    on = q.enabled
    grouped = on and q.granularity == "group"
    repairs = repair_options(qi, on, config.act_bits)
    return {
        "explore_bits": WidgetState(q.bits, qi.uses_bits),
        "explore_sparsity": WidgetState(round(p.target_sparsity, 4), pi.uses_sparsity),
        "explore_quantizer": WidgetState(quantizer, True),
        "explore_scheme": WidgetState(q.scheme, on and bool(qi.schemes)),
        "explore_granularity": WidgetState(q.granularity, on and len(qi.granularities) > 1),
        "explore_range": WidgetState(q.range, on and bool(qi.ranges)),
        "explore_group_size": WidgetState(q.group_size if grouped else 0, grouped and not qi.fixed_group_size),
        "explore_scale_dtype": WidgetState(q.scale_dtype, on and bool(qi.scale_dtypes)),
        "explore_double_quant": WidgetState(q.double_quant, on and qi.double_quant),
        "explore_prune": WidgetState(method, True),
        "explore_scope": WidgetState(p.scope, p.enabled and pi.ranks_globally),
        "explore_nm": WidgetState(f"{p.n}:{p.m}", not pi.uses_sparsity),
        "explore_act_bits": WidgetState(config.act_bits, True),
        "explore_repair": WidgetState(config.repair, len(repairs) > 1),
        "explore_alpha": WidgetState(config.alpha, config.repair == "smoothquant"),
        "explore_act_order": WidgetState(config.act_order, config.repair == "gptq"),
    }


DEFAULT_STATES = widget_states(DEFAULT_CONFIG)  # the controls' defaults: a value equal to these stays out of the URL
