"""Compression settings: frozen, validated, hashable dataclasses that round-trip through JSON.

A `CompressionConfig` holds global `QuantSpec` and `PruneSpec` plus per-layer overrides. Its `config_hash`
is the key used by the store and the caches, so two configs that mean the same thing hash the same.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, replace

from .errors import shown
from .methods import DEFAULT_PRUNE_METHOD, DEFAULT_QUANTIZER, prune_methods, quantizers

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
SCHEMES = ("sym", "asym")
GRANULARITIES = ("tensor", "channel", "group")
SCALE_DTYPES = ("fp32", "fp16", "e8m0")  # storage types of a scale (compression_core.quantize_blocks)
MAX_GROUP_SIZE = 1 << 16
# QuantSpec fields left out of CompressionConfig.to_dict at these values, so older configs keep their hash
QUANT_DEFAULTS_OMITTED = {"group_size": None, "scale_dtype": "fp32", "double_quant": True}
RANGES = ("minmax", "percentile", "mse")
SCOPES = ("layer", "global")
ACT_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
REPAIRS = ("none", "gptq", "awq", "smoothquant")  # calibrated repairs (repair_gptq.py, repair_scaling.py)
IMPORTANCES = ("norm", "bn", "taylor")  # structured pruning: channel importance (prune_structured.py)
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
# CompressionConfig fields added after records were first stored: left out of to_dict() while at their default,
# so the hash of every config that does not use them is what it was
CONFIG_DEFAULTS_OMITTED = {"repair": "none", "alpha": 0.5, "act_order": False, "finetune_epochs": 0,
                           "finetune_optimizer": "adam", "finetune_lr": 1e-4, "finetune_schedule": "constant",
                           "finetune_batch": 128, "distill": 0.0, "gradual": 0}


def __getattr__(name: str) -> tuple[str, ...]:
    """`QUANTIZERS` / `PRUNE_METHODS`: the registered names (compression_core.methods), in their order."""
    if name == "QUANTIZERS":
        return tuple(quantizers())
    if name == "PRUNE_METHODS":
        return tuple(prune_methods())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
    """A setting is out of range; the message names the field, the bad value and what is allowed."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_nm(value: object, name: str = "nm") -> tuple[int, int]:
    """An N:M pattern as `(n, m)`, from "2:4" or (2, 4); the range 1 <= N < M <= 64 is checked by PruneSpec.

    Args:
        value: the text "N:M" or a pair of integers.
        name: what the value is called in the message (the CLI passes "--nm").

    Raises:
        ConfigError: not two integers separated by ':'.

    Examples:
        >>> parse_nm("2:4"), parse_nm((1, 8))
        ((2, 4), (1, 8))
    """
    try:
        n, m = value.split(":") if isinstance(value, str) else value
        return int(n), int(m)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must look like N:M, e.g. 2:4; got {shown(value)}") from None


@dataclass(frozen=True)
class QuantSpec:
    """How one layer's weights are quantized.

    bits: 1-8 or 16 for integer grids, 32 = not quantized. A quantizer with one allowed width (the float casts
        `fp16` / `bf16`: 16) always uses it.
    quantizer: a registered quantizer (`compression_core.methods.quantizers()`): uniform (affine integer grid),
        kmeans (weight sharing, 2^bits centroids), pow2 (±2^k levels), fp16 / bf16 (plain float casts).
    scheme / granularity / range: only where the quantizer lists them; per-channel means per output channel
        (axis 0); group means blocks of `group_size` along the input dimension (in x kh x kw for convolutions).
        A quantizer with one granularity (MX, NF4: group) takes the default channel as that one; any other
        granularity a quantizer does not list is refused.
    percentile: the clip percentile of |w| used when range == "percentile".
    group_size: block length for granularity group, a positive integer; None = the quantizer's default (uniform
        and FP elements 128, NF4 64); MX formats always use 32.
    scale_dtype: storage type of each scale where the quantizer offers the choice (uniform, FP elements): fp32,
        fp16 or e8m0 (a power of two); rounded up to that type.
    double_quant: NF4 only: block scales double-quantized to int8 in blocks of 256 (QLoRA); False keeps fp32.
    """

    bits: int = 32
    quantizer: str = DEFAULT_QUANTIZER
    scheme: str = "sym"
    granularity: str = "channel"
    range: str = "minmax"
    percentile: float = 99.9
    group_size: int | None = None
    scale_dtype: str = "fp32"
    double_quant: bool = True

    def __post_init__(self) -> None:
        known = quantizers()
        _check(self.group_size is None or (isinstance(self.group_size, int) and not isinstance(self.group_size, bool)
                                           and 1 <= self.group_size <= MAX_GROUP_SIZE),
               f"group size must be a positive integer (e.g. 32, 64, 128, 256; at most {MAX_GROUP_SIZE}); "
               f"got {shown(self.group_size)}")
        _check(isinstance(self.double_quant, bool), f"double_quant must be true or false; got {self.double_quant!r}")
        _check(self.scale_dtype in SCALE_DTYPES,
               f"scale dtype must be one of {', '.join(SCALE_DTYPES)}; got {shown(self.scale_dtype)}")
        _check(self.quantizer in known, f"quantizer must be one of {', '.join(known)}; got {self.quantizer!r}")
        _check_formats(self, known[self.quantizer])
        _check(self.quantizer in known, f"quantizer must be one of {', '.join(known)}; got {self.quantizer!r}")
        _canonicalise(self, self._canonical())
        _check(
            isinstance(self.bits, int) and self.bits in ALLOWED_BITS,
            f"bits must be one of 1-8, 16 or 32 (32 = off); got {self.bits!r}",
        )
        info = known[self.quantizer]
        _check(self.bits in info.bits + (32,), f"bits for quantizer {self.quantizer} must be one of "
                                               f"{', '.join(map(str, info.bits))} or 32 (off); got {self.bits!r}")
        _check(self.scheme in SCHEMES, f"scheme must be sym or asym; got {self.scheme!r}")
        _check(self.granularity in GRANULARITIES,
               f"granularity must be one of {', '.join(GRANULARITIES)}; got {self.granularity!r}")
        _check(self.range in RANGES, f"range must be one of {', '.join(RANGES)}; got {self.range!r}")
        _check(
            isinstance(self.percentile, (int, float)) and 50.0 < float(self.percentile) <= 100.0,
            f"percentile must be in (50, 100]; got {self.percentile!r}",
        )
        one_bit = [name for name, q in known.items() if q.kind != "grid" and 1 in q.bits]
        _check(
            not (info.kind == "grid" and self.scheme == "sym" and self.bits == 1),
            "bits=1 needs scheme asym (a symmetric 1-bit grid has only the level 0) or quantizer "
            + "/".join(one_bit),
        )

    def _canonical(self) -> dict:
        """Fields that carry no meaning for this spec are reset, so equal meanings hash equally."""
        info = quantizers()[self.quantizer]
        fixed = {}
        if not info.uses_bits:
            fixed["bits"] = info.bits[0]  # e.g. a float cast has one width
        elif self.bits == 32:
            fixed["quantizer"] = DEFAULT_QUANTIZER  # 32 bits = not quantized, whatever the quantizer
        off = fixed.get("bits", self.bits) == 32
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, applies in (("scheme", info.schemes), ("granularity", info.granularities), ("range", info.ranges)):
            if off or not applies:
                fixed[key] = defaults[key]  # a setting that does not apply keeps its default
        fixed["percentile"] = float(self.percentile) if fixed.get("range", self.range) == "percentile" else 99.9
        if len(info.granularities) == 1 and not off:
            fixed["granularity"] = info.granularities[0]  # e.g. MX and NF4 are block formats only
        grouped = not off and fixed.get("granularity", self.granularity) == "group"
        size = info.default_group_size if info.fixed_group_size else self.group_size or info.default_group_size
        fixed["group_size"] = size if grouped else None
        fixed["scale_dtype"] = self.scale_dtype if info.scale_dtypes and not off else "fp32"
        fixed["double_quant"] = self.double_quant if info.double_quant and not off else True
        return fixed

    @property
    def enabled(self) -> bool:
        return self.bits < 32


def _check_formats(spec: QuantSpec, info) -> None:
    """A granularity or scale dtype the quantizer does not offer is refused (the message says what it offers)."""
    name, grans = spec.quantizer, info.granularities
    if grans and spec.granularity not in grans and not (len(grans) == 1 and spec.granularity == "channel"):
        blocks = f" ({info.default_group_size}-element blocks)" if info.fixed_group_size else ""
        raise ConfigError(f"granularity for quantizer {name} must be {' or '.join(grans)}{blocks}; "
                          f"got {shown(spec.granularity)}")
    if spec.scale_dtype != "fp32" and info.scale_dtypes and spec.scale_dtype not in info.scale_dtypes:
        raise ConfigError(f"scale dtype for quantizer {name} must be one of {', '.join(info.scale_dtypes)}; "
                          f"got {shown(spec.scale_dtype)}")


def quant_to_dict(spec: QuantSpec | None) -> dict | None:
    """A spec as plain data without the format fields at their defaults (older configs keep their hash)."""
    if spec is None:
        return None
    return {k: v for k, v in dataclasses.asdict(spec).items() if QUANT_DEFAULTS_OMITTED.get(k, ()) != v}


def _canonicalise(spec, fixed: dict) -> None:
    for key, value in fixed.items():
        object.__setattr__(spec, key, value)


@dataclass(frozen=True)
class PruneSpec:
    """How one layer's weights are pruned.

    sparsity: fraction of weights removed, 0 <= s < 1 (exactly round(s*n) of them; for `nm` it is implied by n:m).
    method: a registered method (`compression_core.methods.prune_methods()`): magnitude | random | structured
        (whole output channels by `norm`) | nm | taylor (|w * dL/dw|).
    scope: layer (each layer to `sparsity`) or global (one threshold over all prunable weights; only for
        methods that rank globally).
    norm / importance: structured only — how channels are ranked: "norm" (L1 or L2 by `norm`), "bn" (BatchNorm
        scale, network slimming) or "taylor" (|w * dL/dw| on calibration data); see prune_structured.py.
    """

    sparsity: float = 0.0
    method: str = DEFAULT_PRUNE_METHOD
    scope: str = "layer"
    n: int = 2
    m: int = 4
    norm: int = 1
    importance: str = "norm"

    def __post_init__(self) -> None:
        _check(
            isinstance(self.sparsity, (int, float)) and math.isfinite(self.sparsity) and 0.0 <= self.sparsity < 1.0,
            f"sparsity must be in [0, 1) (e.g. 0.9 removes 90 % of weights); got {self.sparsity!r}",
        )
        known = prune_methods()
        _check(self.method in known, f"prune method must be one of {', '.join(known)}; got {self.method!r}")
        _check(self.scope in SCOPES, f"scope must be layer or global; got {self.scope!r}")
        _check(
            isinstance(self.m, int) and isinstance(self.n, int) and 1 <= self.n < self.m <= 64,
            f"N:M needs integers 1 <= N < M <= 64; got {self.n}:{self.m}",
        )
        _check(self.norm in (1, 2), f"structured norm must be 1 or 2; got {self.norm!r}")
        _check(self.importance in IMPORTANCES,
               f"structured importance must be one of {', '.join(IMPORTANCES)}; got {self.importance!r}")
        info = known[self.method]
        fixed = {"sparsity": float(self.sparsity)}
        if not info.ranks_globally:
            fixed["scope"] = "layer"  # e.g. whole channels or N:M groups are ranked within their layer
        if info.uses_sparsity:
            fixed.update(n=2, m=4)
        else:
            fixed["sparsity"] = 0.0  # the pattern fixes the sparsity
        if not info.structured:
            fixed.update(norm=1, importance="norm")
        elif self.importance != "norm":
            fixed["norm"] = 1  # the norm ranks channels only for importance "norm"
        if info.uses_sparsity and self.sparsity == 0.0:
            fixed.update(method=DEFAULT_PRUNE_METHOD, scope="layer", importance="norm")  # nothing is pruned
        _canonicalise(self, fixed)

    @property
    def uses_pattern(self) -> bool:
        """True when the method's N:M pattern, not `sparsity`, says how much is removed."""
        return not prune_methods()[self.method].uses_sparsity

    @property
    def enabled(self) -> bool:
        return self.uses_pattern or self.sparsity > 0.0

    @property
    def needs_calibration(self) -> bool:
        """True when drawing this spec's masks / channels needs calibration data (taylor, method or importance)."""
        return self.enabled and (prune_methods()[self.method].needs_calibration or self.importance == "taylor")

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.uses_pattern else float(self.sparsity)


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings that replace the global ones for the layer called `name` (a module name)."""

    name: str
    quant: QuantSpec | None = None
    prune: PruneSpec | None = None
    skip: bool = False  # leave this layer in fp32, unpruned


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that defines one compressed model; the unit of a sweep and the key of the store.

    Retraining (finetune.py) runs finetune_steps steps, or finetune_epochs passes over the training data when
    that is set (it wins), with masks and removed channels fixed and quantization in the loop:
    finetune_optimizer adam | sgd (momentum 0.9), finetune_lr, finetune_schedule constant | cosine | step (x0.1 at
    50 % and 75 % of the steps), finetune_batch samples per step. distill: temperature T > 0 of knowledge
    distillation from the uncompressed model (0 = off). gradual: number of pruning stages on Zhu & Gupta's cubic
    schedule over the first 75 % of the retraining steps (0 = prune once, before retraining).
    """

    quant: QuantSpec = field(default_factory=QuantSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    act_bits: int = 32
    bias_correction: bool = False
    finetune_steps: int = 0
    index_bits: int = 4  # bits per entry of Deep-Compression relative indices
    overrides: tuple[LayerOverride, ...] = ()
    seed: int = 0
    fold_bn: bool = True  # fold each BatchNorm into the conv it follows before compressing (fold.py)
    repair: str = "none"  # calibrated repair of the weight rounding: none | gptq | awq | smoothquant
    alpha: float = 0.5  # SmoothQuant migration strength in [0, 1]
    act_order: bool = False  # GPTQ: round columns in decreasing order of the input Hessian's diagonal
    finetune_epochs: int = 0
    finetune_optimizer: str = "adam"
    finetune_lr: float = 1e-4
    finetune_schedule: str = "constant"
    finetune_batch: int = 128
    distill: float = 0.0
    gradual: int = 0

    def __post_init__(self) -> None:
        _check(self.act_bits in ACT_BITS, f"act_bits must be one of 2-8, 16 or 32 (32 = off); got {self.act_bits!r}")
        _check(
            isinstance(self.finetune_steps, int) and 0 <= self.finetune_steps <= 100_000,
            f"finetune_steps must be an integer in [0, 100000]; got {self.finetune_steps!r}",
        )
        _check(
            isinstance(self.index_bits, int) and 1 <= self.index_bits <= 16,
            f"index_bits must be an integer in [1, 16]; got {self.index_bits!r}",
        )
        _check(
            isinstance(self.seed, int) and 0 <= self.seed < 2 ** 63,
            f"seed must be an integer in [0, 2^63) (what torch.manual_seed takes); got {self.seed!r}",
        )
        _check(isinstance(self.fold_bn, bool), f"fold_bn must be true or false; got {self.fold_bn!r}")
        self._check_finetune()
        names = [o.name for o in self.overrides]
        _check(len(names) == len(set(names)), f"each layer may be overridden once; got {names}")
        # overrides are kept sorted so equal configs hash equally
        object.__setattr__(self, "overrides", tuple(sorted(self.overrides, key=lambda o: o.name)))
        _check_repair(self)

    def _check_finetune(self) -> None:
        _check(isinstance(self.finetune_epochs, int) and 0 <= self.finetune_epochs <= 1000,
               f"finetune_epochs must be an integer in [0, 1000]; got {self.finetune_epochs!r}")
        _check(self.finetune_optimizer in OPTIMIZERS,
               f"finetune_optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.finetune_optimizer!r}")
        _check(self.finetune_schedule in SCHEDULES,
               f"finetune_schedule must be one of {', '.join(SCHEDULES)}; got {self.finetune_schedule!r}")
        _check(isinstance(self.finetune_lr, (int, float)) and math.isfinite(self.finetune_lr)
               and 0.0 < self.finetune_lr <= 10.0, f"finetune_lr must be in (0, 10]; got {self.finetune_lr!r}")
        _check(isinstance(self.finetune_batch, int) and 1 <= self.finetune_batch <= 65536,
               f"finetune_batch must be an integer in [1, 65536]; got {self.finetune_batch!r}")
        _check(isinstance(self.distill, (int, float)) and math.isfinite(self.distill) and 0.0 <= self.distill <= 100,
               f"distill must be a temperature T > 0 (at most 100), or 0 for off; got {self.distill!r}")
        _check(isinstance(self.gradual, int) and 0 <= self.gradual <= 1000,
               f"gradual must be an integer number of pruning stages in [0, 1000]; got {self.gradual!r}")
        retrains = self.finetune_steps > 0 or self.finetune_epochs > 0
        _check(retrains or (self.distill == 0 and self.gradual == 0),
               "distill and gradual act during retraining: set finetune_epochs or finetune_steps as well")
        object.__setattr__(self, "finetune_lr", float(self.finetune_lr))
        object.__setattr__(self, "distill", float(self.distill))

    @property
    def removes_channels(self) -> bool:
        """True when structured pruning may make the model smaller in shape (then it cannot share a stacked
        forward with other configs)."""
        specs = [self.prune] + [o.prune for o in self.overrides if o.prune is not None]
        return any(p.enabled and prune_methods()[p.method].structured for p in specs)

    @property
    def retrains(self) -> bool:
        """True when the config retrains (fine-tunes) the compressed model."""
        return self.finetune_steps > 0 or self.finetune_epochs > 0

    # ---- per-layer view -------------------------------------------------------------------------
    def for_layer(self, name: str) -> tuple[QuantSpec, PruneSpec, bool]:
        """(quant, prune, skip) in force for the layer `name`."""
        for o in self.overrides:
            if o.name == name:
                return (o.quant or self.quant, o.prune or self.prune, o.skip)
        return self.quant, self.prune, False

    def with_override(self, override: LayerOverride) -> "CompressionConfig":
        rest = tuple(o for o in self.overrides if o.name != override.name)
        return replace(self, overrides=rest + (override,))

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The config as plain data. `fold_bn` appears only when False (folding, the default, is implied), so
        configs written before the field existed keep their hash and stored records stay valid."""
        d = dataclasses.asdict(self)
        if self.fold_bn:
            del d["fold_bn"]
        for key, default in CONFIG_DEFAULTS_OMITTED.items():
            if d[key] == default:
                del d[key]
        d["quant"] = quant_to_dict(self.quant)
        for o, override in zip(d["overrides"], self.overrides):
            o["quant"] = quant_to_dict(override.quant)
        for prune in [d["prune"]] + [o["prune"] for o in d["overrides"] if o["prune"]]:
            if prune["importance"] == "norm":
                del prune["importance"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionConfig":
        try:
            overrides = tuple(
                LayerOverride(
                    name=o["name"],
                    quant=QuantSpec(**o["quant"]) if o.get("quant") else None,
                    prune=PruneSpec(**o["prune"]) if o.get("prune") else None,
                    skip=bool(o.get("skip", False)),
                )
                for o in d.get("overrides", ())
            )
            rest = {k: v for k, v in d.items() if k not in ("quant", "prune", "overrides")}
            return cls(
                quant=QuantSpec(**d.get("quant", {})),
                prune=PruneSpec(**d.get("prune", {})),
                overrides=overrides,
                **rest,
            )
        except TypeError as e:
            raise ConfigError(f"config has an unknown or missing field: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "CompressionConfig":
        return cls.from_dict(json.loads(text))

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human label, e.g. 'int4 channel sym minmax · magnitude layer 50%', 'int3 tensor sym p99.9'."""
        q = self.quant
        kind = quantizers()[q.quantizer].kind
        if not q.enabled:
            qs = "fp32"
        elif kind == "cast":
            qs = q.quantizer
        elif kind == "grid":
            clip = f"p{q.percentile:g}" if q.range == "percentile" else q.range  # the percentile is the setting
            qs = f"int{q.bits} {_granularity_label(q)} {q.scheme} {clip}"
        elif kind == "format":
            qs = f"{q.quantizer} {_granularity_label(q)}" + ("" if q.double_quant else " no-dq")
        else:
            qs = f"{q.quantizer} {q.bits}b"
        p = self.prune
        ps = f" · {p.method} {p.n}:{p.m}" if p.uses_pattern else (
            f" · {p.method} {p.scope} {p.sparsity:.0%}" if p.enabled else "")
        extra = (f" · act{self.act_bits}" if self.act_bits < 32 else "") + (" · biascorr" if self.bias_correction else "")
        if p.enabled and prune_methods()[p.method].structured and p.importance != "norm":
            ps += f" {p.importance}"
        extra += f" · ft{self.finetune_steps}" if self.finetune_steps and not self.finetune_epochs else ""
        extra += f" · retrained {self.finetune_epochs} ep" if self.finetune_epochs else ""
        extra += f" · distill T={self.distill:g}" if self.distill else ""
        extra += f" · gradual {self.gradual}" if self.gradual else ""
        extra += f" · {len(self.overrides)} overrides" if self.overrides else ""
        extra += "" if self.fold_bn else " · BN unfolded"
        extra += "" if self.repair == "none" else f" · {self.repair}" + (" act-order" if self.act_order else "") + (
            f" α{self.alpha:g}" if self.repair == "smoothquant" else "")
        return qs + ps + extra


def _check_repair(c: CompressionConfig) -> None:
    """Validate the repair fields and reset those that carry no meaning (alpha outside SmoothQuant, act_order
    outside GPTQ; GPTQ / AWQ without weight quantization do nothing and are `none`)."""
    _check(c.repair in REPAIRS, f"repair must be one of {', '.join(REPAIRS)}; got {shown(c.repair)}")
    _check(isinstance(c.alpha, (int, float)) and not isinstance(c.alpha, bool) and 0.0 <= c.alpha <= 1.0,
           f"alpha must be a number in [0, 1] (SmoothQuant migration strength); got {shown(c.alpha)}")
    _check(isinstance(c.act_order, bool), f"act_order must be true or false; got {c.act_order!r}")
    repair = c.repair
    if repair in ("gptq", "awq") and not any(q.enabled for q in (c.quant, *(o.quant for o in c.overrides if o.quant))):
        repair = "none"  # nothing is rounded, nothing to repair
    _check(repair != "gptq" or quantizers()[c.quant.quantizer].kind == "grid",
           f"repair gptq needs quantizer uniform (tensor, channel or group grids); got quantizer {c.quant.quantizer}")
    _check(repair != "smoothquant" or c.act_bits == 8,
           f"repair smoothquant is for W8A8: it needs act_bits 8; got act_bits {c.act_bits}")
    _canonicalise(c, {"repair": repair, "alpha": float(c.alpha) if repair == "smoothquant" else 0.5,
                      "act_order": c.act_order and repair == "gptq"})


def _granularity_label(q: QuantSpec) -> str:
    """'channel', 'g64' for groups of 64, plus the scale dtype when it is not fp32: 'g32 e8m0'."""
    text = f"g{q.group_size}" if q.granularity == "group" else q.granularity
    return text + ("" if q.scale_dtype == "fp32" else f" {q.scale_dtype}")
