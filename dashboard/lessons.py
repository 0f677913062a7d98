"""Ready-made lessons: each opens Explore with its settings through the URL, and says in two sentences what to see.

A lesson is data (`Lesson`, frozen): a title, what to look at, the page it opens and the `View` (Explore's settings)
it opens with, plus the neighbouring views it asks the user to try. Every view of every lesson, and the bits ×
sparsity front of the first view (`FRONT`), is precomputed by `scripts/make_precomputed.py` for the default
selection (lenet5 on mnist, 1,000 test samples, cpu) and shipped in `dashboard/precomputed/`, so a class sees the
numbers at once (`services.evaluate` serves a shipped record when weights, data, engine and config all match).

URL values are what the widgets show (a selectbox's option label, e.g. `explore_granularity=per tensor`), as
Streamlit's query-parameter binding reads them.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

from compression_core.config import CompressionConfig
from dashboard import explore_state, precomputed, services
from dashboard.charts.common import option_label
from dashboard.selection import Selection

PAGES = {"explore": "views/explore.py", "sweep": "views/sweep.py", "layers": "views/layers.py",
         "runs": "views/runs.py"}  # page name -> its source, as st.page_link and AppTest.switch_page take it
PRECOMPUTED_SELECTION = Selection()  # lenet5 on mnist, 1,000 test samples, cpu: what the shipped files hold


@dataclass(frozen=True)
class View:
    """Explore's settings as a lesson opens them (the controls not named keep their defaults: fp32 activations,
    no repair, format-default blocks, fp32 scales).

    bits: weight bits (32 = not quantized). sparsity: target pruned fraction. quantizer / granularity / range /
    scheme: the weight quantizer's settings. prune / scope: the pruning method and its ranking scope.
    ft_epochs / ft_lr: retraining epochs (0 = off) and Adam's learning rate.
    """

    bits: int = 32
    sparsity: float = 0.0
    quantizer: str = "uniform"
    granularity: str = "channel"
    range: str = "minmax"
    scheme: str = "sym"
    prune: str = "magnitude"
    scope: str = "global"
    ft_epochs: int = 0
    ft_lr: float = 1e-4

    def config(self) -> CompressionConfig:
        """The config Explore's controls build from these settings (`explore_state.nearest_valid`, as `controls()`)."""
        config, _ = explore_state.nearest_valid({
            "explore_bits": self.bits, "explore_sparsity": self.sparsity, "explore_quantizer": self.quantizer,
            "explore_scheme": self.scheme, "explore_granularity": self.granularity, "explore_range": self.range,
            "explore_prune": self.prune, "explore_scope": self.scope})
        if not self.ft_epochs:
            return config
        return dataclasses.replace(config, finetune_epochs=self.ft_epochs, finetune_lr=self.ft_lr)

    def params(self) -> dict[str, str]:
        """The `explore_*` URL parameters of these settings, as the widgets show their values."""
        params = {"explore_bits": str(self.bits), "explore_sparsity": f"{self.sparsity:g}",
                  "explore_quantizer": option_label(self.quantizer), "explore_scheme": option_label(self.scheme),
                  "explore_granularity": option_label(self.granularity), "explore_range": option_label(self.range),
                  "explore_prune": option_label(self.prune), "explore_scope": option_label(self.scope)}
        if self.ft_epochs:
            params |= {"explore_ft_epochs": str(self.ft_epochs), "explore_ft_lr": f"{self.ft_lr:g}"}
        return params


@dataclass(frozen=True)
class Lesson:
    """One card of the gallery.

    slug: a stable id (widget keys, tests). title: the card's heading. look: two sentences of what to look at.
    page: the page the link opens (a key of PAGES). view: the settings it opens with. tries: the neighbouring
    settings the lesson asks the user to try (precomputed as well).
    """

    slug: str
    title: str
    look: str
    page: str
    view: View
    tries: tuple[View, ...] = ()

    @property
    def params(self) -> dict[str, str]:
        """Every URL parameter the link sets: the sidebar's selection, then the page's settings."""
        sidebar = {"model": PRECOMPUTED_SELECTION.model, "dataset": PRECOMPUTED_SELECTION.dataset,
                   "limit": str(PRECOMPUTED_SELECTION.limit)}
        return sidebar | self.view.params()

    @property
    def views(self) -> tuple[View, ...]:
        """The lesson's own view, then the ones it asks to try."""
        return (self.view, *(v for v in self.tries if v != self.view))


def _grid(**axes) -> tuple[View, ...]:
    """Every View over the product of the given settings (`_grid(bits=(2, 3), granularity=("tensor",))`)."""
    names = list(axes)
    return tuple(View(**dict(zip(names, values))) for values in itertools.product(*axes.values()))


# The first view's front: integer per-channel grids × global magnitude pruning (fp32 itself is computed live).
FRONT = tuple(v for v in _grid(bits=(2, 3, 4, 5, 6, 8, 32), sparsity=(0.0, 0.5, 0.7, 0.9))
              if (v.bits, v.sparsity) != (32, 0.0))

LESSONS: tuple[Lesson, ...] = (
    Lesson("per-channel", "Why per-channel scales",
           "One scale for the whole tensor must stretch over its widest output channel, so the narrow channels "
           "get only a few of the levels. Switch Granularity between per tensor and per channel at 8, 4, 3 and "
           "2 bits: the size hardly moves (one scale per channel), the accuracy gap opens as the bits go down.",
           "explore", View(bits=3, granularity="tensor"),
           _grid(bits=(2, 3, 4, 8), granularity=("tensor", "channel"))),
    Lesson("clipping", "Outliers and clipping",
           "A few large weights set the min-max range, so the steps are coarse for everything else; clipping "
           "at the 99.9th percentile of |w|, or the clip an MSE search finds, trades the outliers for finer "
           "steps. Compare Range min-max, percentile and MSE search at 4, 3 and 2 bits — at 2 bits the choice "
           "of range decides whether the model still works.",
           "explore", View(bits=3, granularity="tensor", range="percentile"),
           _grid(bits=(2, 3, 4), granularity=("tensor",), range=("minmax", "percentile", "mse"))),
    Lesson("pruning-cliff", "The pruning cliff",
           "Removing the smallest weights costs almost nothing for a long while, then the accuracy falls off a "
           "cliff. Step the sparsity from 0.5 to 0.99 (click the slider, then PageUp / PageDown) to find where "
           "it breaks, then switch Pruning scope to per layer and see the cliff come earlier.",
           "explore", View(sparsity=0.9),
           _grid(sparsity=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99), scope=("global", "layer"))),
    Lesson("kmeans", "k-means vs uniform levels",
           "A k-means codebook puts its 2^b levels where the weights are; a uniform grid spaces them evenly, "
           "wherever the weights are. Compare the quantizers k-means and uniform at 4, 3, 2 and 1 bits: the "
           "codebook costs a few bytes per layer and holds up at bit-widths where the grid breaks.",
           "explore", View(bits=2, quantizer="kmeans"),
           _grid(bits=(1, 2, 3, 4), quantizer=("kmeans",)) + _grid(bits=(2, 3, 4))),
    Lesson("fine-tuning", "What fine-tuning buys",
           "A 2-bit per-channel grid breaks the model; retraining with the rounding in the loop lets the weights "
           "adapt to their levels. Open the Retrain section (one epoch at learning rate 0.001 is set) and press "
           "Retrain: the retrained config becomes its own point on the chart, at the same size.",
           "explore", View(bits=2, ft_epochs=1, ft_lr=1e-3),
           (View(bits=2),)),
    Lesson("formats", "Modern 4-bit formats: NF4, MXFP4, FP4",
           "NF4 puts its 16 levels at the quantiles of a normal distribution, one scale per 64 weights; MXFP4 "
           "stores FP4 (E2M1) elements with a power-of-two scale shared by 32. Switch the Quantizer between "
           "NF4, MXFP4, FP4 E2M1 and uniform: at 4 bits they keep the accuracy alike, so compare the bits per "
           "weight each spends on its scales.",
           "explore", View(bits=4, quantizer="nf4"),
           _grid(bits=(4,), quantizer=("nf4", "mxfp4", "fp4_e2m1", "uniform"))
           + (View(bits=4, granularity="group"),)),
)


def lesson(slug: str) -> Lesson:
    """The lesson with this slug.

    Raises:
        KeyError: no lesson has it.
    """
    return {l.slug: l for l in LESSONS}[slug]


def shipped_configs() -> list[CompressionConfig]:
    """Every config the shipped files hold: the fp32 model (the sidebar's baseline), the front of the first view
    and each lesson's views, once each."""
    configs = {CompressionConfig().config_hash: CompressionConfig()}
    configs.update({v.config().config_hash: v.config() for v in FRONT})
    for l in LESSONS:
        configs.update({v.config().config_hash: v.config() for v in l.views})
    return list(configs.values())


def seed_points(selection: Selection, fields: tuple[str, ...] | None = None) -> list[dict]:
    """The shipped records of the first view's front (FRONT) for this selection, as chart points.

    Only records whose model fingerprint, data, subset, task, device, engine version and config hash match what
    this server computes now are returned (`precomputed.records`), so another model or a changed engine gets [].

    Args:
        selection: the sidebar's selection (the precomputed files hold lenet5 on mnist, 1,000 samples, cpu).
        fields: the record fields each point keeps (Explore's POINT_FIELDS); None keeps every field but `layers`.

    Returns:
        Point dicts with `precomputed: True`, in FRONT order.
    """
    if not precomputed.has_selection(selection.model, selection.dataset, selection.limit, selection.device):
        return []  # nothing shipped for it: do not load anything
    common = {**services.get_experiment(selection).key(CompressionConfig()), "device": selection.device}
    return [dict(p) for p in _front_points(tuple(common.items()), fields)]


@functools.lru_cache(maxsize=16)
def _front_points(common: tuple[tuple[str, object], ...], fields: tuple[str, ...] | None) -> tuple[dict, ...]:
    """seed_points' rows for one evaluation set (`common`: its key fields), computed once per process (the
    shipped files and FRONT do not change while it runs); callers get copies."""
    shipped = {r["config_hash"]: r for r in precomputed.records(dict(common))}
    rows = [shipped[h] for h in dict.fromkeys(v.config().config_hash for v in FRONT) if h in shipped]
    keep = fields if fields is not None else tuple(k for k in (rows[0] if rows else {}) if k != "layers")
    return tuple({f: r[f] for f in keep if r.get(f) is not None} | {"precomputed": True} for r in rows)


def merged(points: list[dict], seeds: list[dict]) -> list[dict]:
    """`points` then the seeds whose config is not among them (a config explored here is drawn as explored)."""
    seen = {p["config_hash"] for p in points}
    return points + [s for s in seeds if s["config_hash"] not in seen]
