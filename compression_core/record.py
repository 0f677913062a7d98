"""The record: what one compress-and-evaluate run produced; the CLI prints it, the store keeps it, pages show it.

`Record` (one config on one evaluation set) and `LayerRow` (one compressible layer of it) are TypedDicts, so
records stay plain dicts that serialise to JSON as they are. `RECORD_FIELDS` and `LAYER_FIELDS` are the single
source of truth for the field names, their types, units and meaning: readers take their field lists from there
(`TABLE_COLUMNS` and `table_row` for CSV and table rows, the store's transient fields), the tests check that
the TypedDicts and `Experiment.run` agree with them, and docs/ENGINE_API.md carries `fields_markdown(...)`.

Example:
    >>> [f.unit for f in RECORD_FIELDS if f.name in ("accuracy", "accuracy_drop_pts", "size_bytes")]
    ['fraction 0-1', 'percentage points', 'bytes']
    >>> "layers" in TABLE_COLUMNS
    False
"""
# no `from __future__ import annotations`: TypedDict must see NotRequired[...] as a type, not a string (3.11)
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

FRACTION = "fraction 0-1"
NO_UNIT = ""


@dataclass(frozen=True)
class Field:
    """One field of a record or layer row.

    name: the dict key. type: its Python type (as in the TypedDict). unit: e.g. "fraction 0-1", "bytes",
    "seconds", "percentage points"; "" for names, labels and flags. doc: what it is, in one sentence.
    added_by: "" when `Experiment.run` writes it; otherwise the part that adds it later ("store", "sweep") —
    such fields are not part of the computed result and the store does not keep them inside the record.
    """

    name: str
    type: Any
    unit: str
    doc: str
    added_by: str = ""


class LayerRow(TypedDict):
    """One compressible layer of a record; field docs and units in `LAYER_FIELDS`."""

    name: str
    shape: list[int]
    bits: int
    quantizer: str
    sparsity: float
    n: int
    nnz: int
    index_format: str
    size_bits: int
    value_bits: int
    index_bits: int
    scale_bits: int
    codebook_bits: int
    other_bits: int
    macs: int
    skipped: bool
    input_scaled: bool
    dense_shape: list[int]


class Record(TypedDict):
    """One config evaluated on one (model, dataset, split, limit); field docs and units in `RECORD_FIELDS`."""

    model: str
    fingerprint: str
    dataset: str
    split: str
    limit: int | None
    task: str
    config_hash: str
    engine_version: str
    config: dict[str, Any]
    label: str
    bits: int
    quantizer: str
    prune_method: str
    sparsity: float
    act_bits: int
    metric: str
    metric_value: float
    baseline_metric_value: float
    accuracy: float | None
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    n_samples: int
    n_skipped: int
    correct: int | None
    top5: float | None
    loss: float | None
    baseline_accuracy: float | None
    accuracy_drop_pts: float | None
    agreement: float | None
    kl: float | None
    cosine: float | None
    rel_l2: float | None
    recall_at_10: float | None
    perplexity: float | None
    n_tokens: int | None
    dense_bytes: int
    size_bytes: int
    compression_ratio: float
    bits_per_weight: float
    realized_sparsity: float
    n_params: int
    n_weights: int
    nnz: int
    macs: int
    sparse_macs: int
    bitops: int
    sparse_bitops: int
    device: str
    memory_format: str
    eval_seconds: float
    compress_seconds: float | None
    batch_size: int
    eval_group: int
    latency_ms_per_batch: float
    finetune_final_loss: float | None
    bn_folded: list[list[str]]
    bn_fold_note: str
    repair: str
    repair_calib_samples: int | None
    repair_seconds: float | None
    protected_layers: str
    finetune_data: str
    finetune_steps_run: int | None
    finetune_lr: float | None
    finetune_batch_size: int | None
    finetune_seconds: float | None
    finetune_cached: bool | None
    layers: list[LayerRow]
    created_at: NotRequired[float]
    cached: NotRequired[bool]


LAYER_FIELDS: tuple[Field, ...] = (
    Field("name", str, NO_UNIT, "module name of the layer in the model, e.g. `features.0`"),
    Field("shape", list[int], "elements per dimension", "shape of the layer's weight: (out, in) or (out, in, kh, kw)"),
    Field("bits", int, "bits", "width of one stored value in the winning storage format: the quantizer's bits "
          "(one more when a full codebook needs a code for 0), 16 for fp16 / bf16, 32 when not quantized"),
    Field("quantizer", str, NO_UNIT, "quantizer applied to this layer; `none` when it is not quantized or skipped"),
    Field("sparsity", float, FRACTION, "realised fraction of this layer's weights that are pruned (1 - nnz / n)"),
    Field("n", int, "weights", "number of weights of the layer (before structured pruning removed channels)"),
    Field("nnz", int, "weights", "number of weights kept (not pruned)"),
    Field("index_format", str, NO_UNIT, "storage format that won: dense, bitmask, csr or relative (see size.py)"),
    Field("size_bits", int, "bits", "the weight's storage in that format: values + sparse index + scales, zero "
          "points, codebook and activation qparams; the sum of the five fields below"),
    Field("value_bits", int, "bits", "the stored values: entries of the format × `bits` (dense: every weight, "
          "sparse formats: the kept ones, plus relative-index fillers)"),
    Field("index_bits", int, "bits", "the sparse index: bitmask, CSR row pointers and columns, or relative gaps; "
          "0 for dense"),
    Field("scale_bits", int, "bits", "the quantization grid's scales and zero points, or the format's side "
          "tensors (group / block scales of uniform group, FP, MX, NF4)"),
    Field("codebook_bits", int, "bits", "the codebook's float32 levels (kmeans, pow2); 0 otherwise"),
    Field("other_bits", int, "bits", "the quantized input's activation scale and zero point, and the float32 "
          "input-channel scales AWQ / SmoothQuant keep beside the weight; 0 otherwise"),
    Field("macs", int, "MACs per sample", "multiply-accumulates of this layer for one input sample (dense)"),
    Field("skipped", bool, NO_UNIT, "an override left this layer in fp32 and unpruned"),
    Field("input_scaled", bool, NO_UNIT, "AWQ / SmoothQuant scaled this layer's input channels; the 1/s is not folded "
          "into the previous operation but kept as the layer's input scaling, its C_in float32 scales counted in "
          "size_bits"),
    Field("dense_shape", list[int], "elements per dimension", "shape of the layer's weight before structured "
          "pruning removed channels (= `shape` when none were removed); `macs` are the dense layer's"),
)

RECORD_FIELDS: tuple[Field, ...] = (
    # ---- the key: what was evaluated where
    Field("model", str, NO_UNIT, "model name as given to `load_model` (built-in, `pkg.module:factory`, "
          "`torchvision:NAME`)"),
    Field("fingerprint", str, NO_UNIT, "first 16 hex digits of the sha256 of the model's state dict bytes"),
    Field("dataset", str, NO_UNIT, "dataset name as given to `load_dataset`; image folders append "
          "` [transform NAME]`"),
    Field("split", str, NO_UNIT, "evaluation split (`test` or `train`)"),
    Field("limit", int | None, "samples", "size of the fixed class-stratified evaluation subset; null = the "
          "whole split"),
    Field("task", str, NO_UNIT, "what quality means here: `classify` (labels: accuracy), `fidelity` (the outputs "
          "against the fp32 model's) or `lm` (perplexity); see `tasks.py`"),
    Field("config_hash", str, NO_UNIT, "first 16 hex digits of the sha256 of the canonical config JSON"),
    Field("engine_version", str, NO_UNIT, "version of `compression_core` that computed the record; the store "
          "serves only records of its own version as cache hits"),
    # ---- the config, in full and in the few fields tables and charts group by
    Field("config", dict[str, Any], NO_UNIT, "the full `CompressionConfig.to_dict()`"),
    Field("label", str, NO_UNIT, "short human label of the config, e.g. `int4 channel sym minmax · magnitude "
          "layer 50%`"),
    Field("bits", int, "bits", "global weight bits (32 = not quantized)"),
    Field("quantizer", str, NO_UNIT, "global quantizer"),
    Field("prune_method", str, NO_UNIT, "global pruning method; `none` when nothing is pruned"),
    Field("sparsity", float, FRACTION, "target sparsity of the config (1 - N/M for N:M)"),
    Field("act_bits", int, "bits", "activation bits of quantized layer inputs (32 = off)"),
    # ---- quality
    Field("metric", str, NO_UNIT, "the task's headline metric (`tasks.DEFAULT_METRIC`): accuracy, cosine or "
          "perplexity; `tasks.METRICS` says which way is better"),
    Field("metric_value", float, "as the metric", "the value of `metric` for this config"),
    Field("baseline_metric_value", float, "as the metric", "the value of `metric` for the uncompressed fp32 model "
          "on the same samples"),
    Field("accuracy", float | None, FRACTION, "top-1 accuracy on the evaluated samples; null without class labels "
          "(tasks fidelity, lm)"),
    Field("accuracy_ci_low", float | None, FRACTION, "lower end of the Wilson 95 % interval of accuracy"),
    Field("accuracy_ci_high", float | None, FRACTION, "upper end of the Wilson 95 % interval of accuracy"),
    Field("n_samples", int, "samples", "number of samples evaluated"),
    Field("n_skipped", int, "samples", "images of the dataset skipped as corrupt when it was decoded (0 for "
          "datasets that are not image folders)"),
    Field("correct", int | None, "samples", "number of samples whose top-1 prediction is right"),
    Field("top5", float | None, FRACTION, "top-5 accuracy; null when the dataset has 5 classes or fewer"),
    Field("loss", float | None, "nats", "mean cross-entropy over the evaluated samples (classify) or scored tokens "
          "(lm); null for fidelity"),
    Field("baseline_accuracy", float | None, FRACTION, "top-1 accuracy of the uncompressed fp32 model on the same "
          "samples"),
    Field("accuracy_drop_pts", float | None, "percentage points", "100 × (baseline_accuracy - accuracy); positive "
          "= worse than fp32"),
    Field("agreement", float | None, FRACTION, "fraction of samples (token positions for token logits) whose top-1 "
          "prediction equals the fp32 model's; null for embedding models and lm"),
    Field("kl", float | None, "nats", "fidelity of logits: mean KL(fp32 ‖ compressed) of the softmax distributions "
          "per sample (per token position for (N, L, V) logits)"),
    Field("cosine", float | None, "cosine -1..1", "fidelity: mean over samples of the cosine similarity of the "
          "compressed and fp32 outputs (flattened per sample)"),
    Field("rel_l2", float | None, "ratio", "fidelity: mean over samples of ‖compressed − fp32‖₂ / ‖fp32‖₂"),
    Field("recall_at_10", float | None, FRACTION, "fidelity of 2-D embeddings (N > 10): mean fraction of each "
          "sample's 10 nearest fp32 neighbours (cosine, itself excluded) that are among its 10 nearest compressed "
          "ones"),
    Field("perplexity", float | None, "perplexity", "lm: exp(mean cross-entropy) over the scored tokens"),
    Field("n_tokens", int | None, "tokens", "lm: number of scored tokens (labels != -100 after the shift)"),
    # ---- size
    Field("dense_bytes", int, "bytes", "the uncompressed model: every float tensor at 32 bits"),
    Field("size_bytes", int, "bytes", "honest compressed size: values, sparse index, quantization metadata and "
          "every other tensor (size.py; the exported file matches it)"),
    Field("compression_ratio", float, "ratio (×)", "dense size / compressed size, in bits"),
    Field("bits_per_weight", float, "bits", "stored bits of the compressible layers (values + index + metadata) "
          "per weight"),
    Field("realized_sparsity", float, FRACTION, "fraction of the compressible layers' weights that are pruned"),
    Field("n_params", int, "parameters", "floating-point entries of the model's state dict"),
    Field("n_weights", int, "weights", "weights of the compressible layers"),
    Field("nnz", int, "weights", "weights of the compressible layers that are kept"),
    # ---- compute
    Field("macs", int, "MACs per sample", "multiply-accumulates of the compressible layers, dense"),
    Field("sparse_macs", int, "MACs per sample", "multiply-accumulates that touch a kept weight"),
    Field("bitops", int, "bit operations per sample", "sum over layers of dense MACs × weight value bits × "
          "activation bits"),
    Field("sparse_bitops", int, "bit operations per sample", "sum over layers of sparse MACs (those that touch a "
          "kept weight) × weight value bits × activation bits; missing in records stored before it existed"),
    # ---- how it was measured
    Field("device", str, NO_UNIT, "torch device that evaluated, e.g. `cpu`, `cuda:0`"),
    Field("memory_format", str, NO_UNIT, "tensor layout of the evaluation: `channels_last` or `contiguous`"),
    Field("eval_seconds", float, "seconds", "wall time of the evaluation forward passes (a stacked forward's "
          "time divided by the configs that shared it)"),
    Field("compress_seconds", float | None, "seconds", "wall time of compression; null when the caller "
          "compressed beforehand and it was not measured"),
    Field("batch_size", int, "samples", "evaluation batch size"),
    Field("eval_group", int, "configs", "configs that shared one stacked forward (1 = evaluated alone)"),
    Field("latency_ms_per_batch", float, "milliseconds", "eval_seconds per evaluation batch"),
    Field("finetune_final_loss", float | None, "nats", "training loss of the last fine-tuning step; null "
          "without fine-tuning"),
    Field("bn_folded", list[list[str]], NO_UNIT, "[conv, BatchNorm] module-name pairs whose BatchNorm was folded "
          "into the conv before compression (the BN is an Identity in the compressed model); empty when none"),
    Field("bn_fold_note", str, NO_UNIT, "one line on BatchNorm folding: how many were folded, `off`, or why none "
          "was (no BatchNorm after a conv; torch.fx cannot trace the model)"),
    Field("repair", str, NO_UNIT, "calibrated repair of the weight rounding: `none`, `gptq`, `awq` or `smoothquant`"),
    Field("repair_calib_samples", int | None, "samples", "calibration samples the repair measured its inputs on; "
          "null without repair"),
    Field("repair_seconds", float | None, "seconds", "wall time of the repair (GPTQ: its Hessian passes and column "
          "updates; AWQ / SmoothQuant: statistics, scale search and rounding); null without repair"),
    Field("protected_layers", str, NO_UNIT, "comma-separated layers structured pruning never touches because their "
          "output is the model's output (e.g. the classifier); empty without structured pruning"),
    Field("finetune_data", str, NO_UNIT, "what retraining ran on: `train split` or `calibration batch`; empty "
          "without retraining"),
    Field("finetune_steps_run", int | None, "steps", "optimizer steps of retraining (epochs × batches per epoch, "
          "or finetune_steps); null without retraining"),
    Field("finetune_lr", float | None, "learning rate", "peak learning rate of retraining; null without it"),
    Field("finetune_batch_size", int | None, "samples", "samples per retraining step; null without retraining"),
    Field("finetune_seconds", float | None, "seconds", "wall time of retraining when it ran (a cached result "
          "keeps the time it took when it ran); null without retraining"),
    Field("finetune_cached", bool | None, NO_UNIT, "the retrained weights came from this process's cache (the "
          "same model, config and data were retrained before); null without retraining"),
    Field("layers", list[LayerRow], NO_UNIT, "one row per compressible layer, in model order (`LAYER_FIELDS`)"),
    # ---- added after the run
    Field("created_at", float, "Unix seconds", "when the store last wrote the record", added_by="store"),
    Field("cached", bool, NO_UNIT, "the sweep returned the record from the store instead of computing it",
          added_by="sweep"),
)

# The columns of a results table or CSV, in record order: every field but the per-layer rows (`config` and
# `bn_folded` go in as JSON text), so a new field reaches the CSV without a second list to update.
TABLE_COLUMNS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.name != "layers")
JSON_COLUMNS = ("config", "bn_folded")  # fields that are not one value: canonical JSON text in a cell


# Two evaluations of one config in two processes (Ray workers, shards, a shipped record and a fresh run) agree in
# every field but what each process measures for itself (timings, the layout / batch size it found fastest, where
# the record came from) and the means over batches, which another batch size sums in another order.
MEASURED_FIELDS = frozenset({f.name for f in RECORD_FIELDS if f.unit in ("seconds", "milliseconds", "Unix seconds")}
                            | {"batch_size", "eval_group", "memory_format", "device", "cached", "precomputed"})
AVERAGED_FIELDS = frozenset({"loss", "kl", "cosine", "rel_l2", "perplexity", "finetune_final_loss"})
AVERAGED_RTOL = 1e-5


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The fields in which two records of one config disagree beyond what two processes may: every field but
    `MEASURED_FIELDS` equal, `AVERAGED_FIELDS` within `AVERAGED_RTOL` (relative).

    Example:
        >>> differing_fields({"accuracy": 0.9, "loss": 0.1236155, "eval_seconds": 1.0},
        ...                  {"accuracy": 0.9, "loss": 0.1236156, "eval_seconds": 2.5})
        []
        >>> differing_fields({"accuracy": 0.9}, {"accuracy": 0.8, "size_bytes": 10})
        ['accuracy', 'size_bytes']
    """
    def agree(k: str) -> bool:
        x, y = a.get(k), b.get(k)
        if k in AVERAGED_FIELDS and isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=AVERAGED_RTOL)
        return x == y
    return sorted(k for k in set(a) | set(b) if k not in MEASURED_FIELDS and not agree(k))


def table_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One row of a results table or CSV: `record`'s TABLE_COLUMNS, `config` and `bn_folded` as canonical JSON.

    A field the record lacks (e.g. `sparse_bitops` in a record stored before it existed) is None, an empty cell:
    unknown, never 0.
    """
    row = {c: record.get(c) for c in TABLE_COLUMNS}
    for name in JSON_COLUMNS:
        value = row[name]
        if value is not None and not isinstance(value, str):
            row[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return row


def computed_fields(fields: tuple[Field, ...] = RECORD_FIELDS) -> tuple[str, ...]:
    """Names of the fields `Experiment.run` writes (those no later part adds), in table order."""
    return tuple(f.name for f in fields if not f.added_by)


def type_name(tp: Any) -> str:
    """`int`, `int | None`, `list[LayerRow]`: how a field's type reads in the docs."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace(f"{__name__}.", "").replace("typing.", "")


def fields_markdown(fields: tuple[Field, ...]) -> str:
    """The field table as Markdown (field | type | unit | meaning), as docs/ENGINE_API.md carries it."""
    lines = ["| field | type | unit | meaning |", "|---|---|---|---|"]
    for f in fields:
        added = f" (added by the {f.added_by})" if f.added_by else ""
        kind = type_name(f.type).replace("|", "\\|")  # a bare | would end the Markdown cell
        lines.append(f"| `{f.name}` | `{kind}` | {f.unit or '—'} | {f.doc}{added} |")
    return "\n".join(lines)
