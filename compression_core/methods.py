"""One table per method family: what the rest of the engine needs to know about each quantizer and pruning method.

Each method registers a small frozen record beside its code (`quantize.py`, `prune.py`); config canonicalisation,
labels, the size model, the packed export, compress, the CLI and the dashboard's selectors read these records
instead of spelling method names. Adding a method = its function + one `register_*` call (+ its Learn entry).

    >>> quantizer_info("kmeans").kind, quantizer_info("fp16").value_storage
    ('codebook', 'float16')
    >>> prune_method_info("nm").uses_sparsity, prune_method_info("taylor").needs_calibration
    (False, True)

Registration order is the order shown to users (CLI choices, selectors); the first quantizer / pruning method
registered is the default (`DEFAULT_QUANTIZER`, `DEFAULT_PRUNE_METHOD`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from .config import PruneSpec, QuantSpec
    from .quantize import QuantResult

DEFAULT_QUANTIZER = "uniform"  # the affine integer grid; also what bits=32 (not quantized) canonicalises to
DEFAULT_PRUNE_METHOD = "magnitude"  # what sparsity=0 (not pruned) canonicalises to
KINDS = ("grid", "codebook", "cast", "format")
VALUE_STORAGE = ("code", "float16", "bfloat16")
SCALE_STORAGE = ("scale", "codebook", "side", "none")
# importing these registers the built-in methods
_BUILTIN_MODULES = (".quantize", ".quantize_formats", ".quantize_nf4", ".prune")


@dataclass(frozen=True)
class QuantizerInfo:
    """What the engine needs to know about one weight quantizer.

    name: the value of `QuantSpec.quantizer`. label: short display name; description: one sentence for help.
    kind: "grid" (integer codes on an affine grid, scale + zero point), "codebook" (integer codes into a table
        of float levels), "cast" (a plain float cast of fixed width) or "format" (element codes of a named number
        format: FP8 / FP6 / FP4, MX, NF4, with their scales stored beside them).
    bits: the widths `QuantSpec.bits` may take (32 = not quantized is always allowed as well); a single entry
        means a fixed width that config canonicalisation sets whatever the user asked (fp16: 16).
    schemes / granularities / ranges: the `QuantSpec` settings that apply; () = the setting does not apply and
        is reset to its default, so equal meanings hash equally.
    value_storage: "code" (unsigned integers of `bits` width: grid codes minus qmin, or codebook indices) or
        the float dtype the raw values are stored in ("float16", "bfloat16").
    scale_storage: side data per tensor / channel: "scale" (float32 scale per group, plus an int32 zero point
        per group for scheme asym), "codebook" (float32 levels, at most 2^bits), "side" (the named side tensors
        `side_layout` lists) or "none".
    quantize: (w, spec, mask) -> QuantResult; the weight must be exactly 0 where mask is False, and `codes`
        / `scale` / `zero_point` / `codebook` / `side` must be set as value_storage and scale_storage say.
    default_group_size: the block size `QuantSpec.group_size` takes when the user gives none (granularity group);
        fixed_group_size: the block size is part of the format (MX: 32) and always used.
    scale_dtypes: the storage types `QuantSpec.scale_dtype` may take (compression_core.quantize_blocks); () = the
        setting does not apply. double_quant: `QuantSpec.double_quant` applies (NF4).
    side_layout: (spec, weight shape) -> {side tensor name: (count, side kind)} when this spec stores named side
        tensors (QuantResult.side), else None; the size model counts them, the export writes and checks them.
    decode: (stored codes int64 like the weight, {name: side tensor}, spec) -> float32 weight, bit for bit the
        quantized weight; stored codes are the unsigned values in the file (grids: code - qmin).
    """

    name: str
    label: str
    description: str
    kind: str
    bits: tuple[int, ...]
    value_storage: str
    scale_storage: str
    quantize: Callable[["torch.Tensor", "QuantSpec", "torch.Tensor | None"], "QuantResult"]
    schemes: tuple[str, ...] = ()
    granularities: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    default_group_size: int = 128
    fixed_group_size: bool = False
    scale_dtypes: tuple[str, ...] = ()
    double_quant: bool = False
    side_layout: Callable | None = None
    decode: Callable | None = None

    @property
    def uses_bits(self) -> bool:
        """True when the user chooses the width (more than one allowed width)."""
        return len(self.bits) > 1

    def __post_init__(self) -> None:
        problems = [] if self.kind in KINDS else [f"kind {self.kind!r} (allowed: {', '.join(KINDS)})"]
        if self.value_storage not in VALUE_STORAGE:
            problems.append(f"value_storage {self.value_storage!r} (allowed: {', '.join(VALUE_STORAGE)})")
        if self.scale_storage not in SCALE_STORAGE:
            problems.append(f"scale_storage {self.scale_storage!r} (allowed: {', '.join(SCALE_STORAGE)})")
        if not self.bits or any(not isinstance(b, int) or not 1 <= b <= 16 for b in self.bits):
            problems.append(f"bits {self.bits!r} (need one or more integers in 1-16)")
        if (self.value_storage == "code") != (self.scale_storage != "none"):
            problems.append("integer codes need a scale or a codebook, and only codes have one")
        if (self.side_layout is None) != (self.decode is None) or (self.scale_storage == "side") > bool(self.decode):
            problems.append("side data needs both side_layout and decode")
        if problems:
            raise ValueError(f"quantizer {self.name!r} has a bad " + "; ".join(problems))


@dataclass(frozen=True)
class PruneMethodInfo:
    """What the engine needs to know about one pruning method.

    name: the value of `PruneSpec.method`. label / description: display name and one sentence of help.
    mask: (w, spec, scores) -> bool mask like w (True = kept) for one layer pruned on its own; `scores` are
        this layer's calibration scores (from `calibrate`) or None.
    rank: (w, scores, generator) -> per-weight ranking scores (higher = more important) for one ranking over
        all layers of scope "global"; None when the method cannot rank across layers (then scope is "layer").
        `generator` is the layer's own seeded CPU generator.
    calibrate: (model, layer_names, x, y) -> {layer name: scores like its weight}, computed on calibration
        data before masks are drawn; None when the method needs no data.
    structured: removes whole output channels (the `norm` setting applies).
    uses_sparsity: False when the method's own N:M pattern fixes the sparsity (the `n` / `m` settings apply
        and `sparsity` is reset to 0).
    magnitude_threshold: removes the smallest |w|, so one threshold on |w| can be drawn on a histogram.
    """

    name: str
    label: str
    description: str
    mask: Callable
    rank: Callable | None = None
    calibrate: Callable | None = None
    structured: bool = False
    uses_sparsity: bool = True
    magnitude_threshold: bool = False

    @property
    def ranks_globally(self) -> bool:
        """True when scope "global" applies: one ranking over all layers."""
        return self.rank is not None

    @property
    def needs_calibration(self) -> bool:
        """True when masks need calibration data (compress then requires `calib`)."""
        return self.calibrate is not None


_QUANTIZERS: dict[str, QuantizerInfo] = {}
_PRUNE_METHODS: dict[str, PruneMethodInfo] = {}


def _register(table: dict, info, family: str):
    if not isinstance(info.name, str) or not info.name.isidentifier():
        raise ValueError(f"a {family} name must be a short identifier such as 'ternary'; got {info.name!r}")
    if info.name in table:
        raise ValueError(f"{family} {info.name!r} is already registered; unregister it first or pick another name")
    table[info.name] = info
    return info


def register_quantizer(info: QuantizerInfo) -> QuantizerInfo:
    """Add a quantizer to the table (appended to the user-visible order); returns `info`.

    Raises:
        ValueError: the name is taken or not an identifier.
    """
    return _register(_QUANTIZERS, info, "quantizer")


def register_prune_method(info: PruneMethodInfo) -> PruneMethodInfo:
    """Add a pruning method to the table (appended to the user-visible order); returns `info`.

    Raises:
        ValueError: the name is taken or not an identifier.
    """
    return _register(_PRUNE_METHODS, info, "prune method")


def unregister_quantizer(name: str) -> None:
    """Remove a quantizer added with `register_quantizer` (e.g. a test's toy one); unknown names are ignored."""
    _QUANTIZERS.pop(name, None)


def unregister_prune_method(name: str) -> None:
    """Remove a pruning method added with `register_prune_method`; unknown names are ignored."""
    _PRUNE_METHODS.pop(name, None)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module, __package__)


def quantizers() -> dict[str, QuantizerInfo]:
    """Every registered quantizer, name -> info, in registration order (a copy)."""
    _load_builtins()
    return dict(_QUANTIZERS)


def prune_methods() -> dict[str, PruneMethodInfo]:
    """Every registered pruning method, name -> info, in registration order (a copy)."""
    _load_builtins()
    return dict(_PRUNE_METHODS)


def quantizer_info(name: str) -> QuantizerInfo:
    """The registered quantizer `name`.

    Raises:
        KeyError: no quantizer of that name (check `quantizers()` first where the name is user input).
    """
    return quantizers()[name]


def prune_method_info(name: str) -> PruneMethodInfo:
    """The registered pruning method `name`.

    Raises:
        KeyError: no method of that name (check `prune_methods()` first where the name is user input).
    """
    return prune_methods()[name]
