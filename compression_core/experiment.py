"""Experiment: one model on one evaluation split, ready to compress and measure config after config.

Holds the pristine model (never mutated), the evaluation inputs on the device (tensors moved once; a large image
folder streamed batch by batch), the task and its fp32 reference (predictions for classify, outputs for fidelity),
a calibration batch from the train split and the dense MAC counts; `run(config)` returns the flat record
(`record.Record`) that the CLI prints, the store keeps and the dashboard plots.
"""
from __future__ import annotations

import copy
import threading
import time
from functools import cached_property

import torch

from ._version import __version__
from .compress import compress
from .compressed import COMPRESSIBLE_NAMES, CompressedModel, compressible_layers
from .config import CompressionConfig
from .datasets import Dataset, stratified_indices
from .evaluate import (evaluate, evaluate_stacked, forward, layer_macs, n_samples, select_device, take,
                       tune_forward)
from .models import LoadedModel
from .errors import error_line
from .record import LayerRow, Record
from .size import size_report
from .tasks import DEFAULT_METRIC, TASKS, default_task

CALIB_SIZE = 1024
STACK_GROUP = 8  # configs per stacked forward on a GPU


class ExperimentError(ValueError):
    """The model and the dataset do not fit together; the one-line message names both sides."""


def describe(sample) -> str:
    """The shapes of an input batch in words: `shape (1, 3, 224)` or `input_ids (1, 12), attention_mask (1, 12)`."""
    if isinstance(sample, dict):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in sample.items())
    return f"shape {tuple(sample.shape)}"


def check_fits(model: torch.nn.Module, name: str, dataset: Dataset, sample, task: str = "classify") -> None:
    """Refuse a model that has nothing to compress, cannot take the dataset's samples or gives the wrong output.

    Args:
        model: the model, on the device of `sample`, in eval mode.
        name: the model's name, for the message.
        dataset: the dataset whose samples (and, for classify, class count) the model must fit.
        sample: one input batch of one sample: a tensor (1, C, H, W) / (1, C, L) or a dict of (1, L) tensors.
        task: classify needs (1, classes) logits matching the dataset's class count; lm needs (1, L, V) token
            logits; fidelity takes any tensor output.

    Raises:
        ExperimentError: one line naming the model's and the dataset's side of the mismatch (both shapes).
    """
    info = dataset.info
    layers = compressible_layers(model)
    if not layers:
        raise ExperimentError(f"model {name!r} has no Linear/Conv layer to compress; give a model with at least one "
                              f"of {COMPRESSIBLE_NAMES}")
    first, layer = layers[0]
    takes = (f"{layer.in_features} input features" if isinstance(layer, torch.nn.Linear)
             else f"{layer.in_channels} input channels")
    try:
        with torch.no_grad():
            out = forward(model, sample)
    except Exception as err:  # user code: any failure of the forward pass is reported as one line
        raise ExperimentError(f"model {name!r} cannot take {info.name} samples of {describe(sample)} "
                              f"(its first layer {first} takes {takes})"
                              f": {type(err).__name__}: {error_line(err, first_line=True)}") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor):
        raise ExperimentError(f"model {name!r} returns {shape} for {info.name} samples of {describe(sample)}; "
                              "the engine needs a tensor (logits or embeddings)")
    if task == "lm" and out.dim() != 3:
        raise ExperimentError(f"task lm needs token logits (1, L, vocabulary) but model {name!r} outputs shape "
                              f"{shape} for {info.name} samples of {describe(sample)}; use a causal language model, "
                              "or --task fidelity")
    if task == "classify" and (out.dim() != 2 or out.shape[1] != info.num_classes):
        outputs = f"{out.shape[1]} classes" if out.dim() == 2 else f"shape {shape}"
        raise ExperimentError(f"model {name!r} outputs {outputs} for a batch of one, but {info.name} has "
                              f"{info.num_classes} classes (expected shape (1, {info.num_classes})); use a model "
                              f"built and trained for {info.num_classes} classes, or --task fidelity")


def _subset(x, idx: torch.Tensor):
    """Samples `idx` of a tensor, a dict of tensors or a streamed split (which stays streamed)."""
    if isinstance(x, dict):
        return {k: v[idx] for k, v in x.items()}
    return x[idx] if isinstance(x, torch.Tensor) else x.take(idx)


def _to(x, device: torch.device):
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _check_task(task: str, y: torch.Tensor | None, info) -> None:
    if task not in TASKS:
        raise ExperimentError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if task == "classify" and (y is None or y.dim() != 1 or info.num_classes == 0):
        raise ExperimentError(f"task classify needs class labels, but {info.name} has none; use --task fidelity "
                              "(agreement, KL, cosine, recall@10 against the fp32 model)")
    if task == "lm" and (y is None or y.dim() != 2):
        raise ExperimentError(f"task lm needs token labels (a text file read as one token stream), but {info.name} "
                              "has none; give --dataset text:PATH with --task lm, or use --task fidelity")


class Experiment:
    """Compress-and-evaluate loop for one (model, dataset, split, limit, device, task).

    Args:
        loaded: the pristine model from `models.load_model`; it is only read (we work on our own copy).
        dataset: from `datasets.load_dataset`; a split's inputs are a tensor, a dict of tensors (text) or a
            streamed split (large image folders), its targets class labels, None or token labels.
        split: evaluation split name ("test" or "train").
        limit: evaluate a fixed subset of this many samples: class-stratified with class labels, else the first
            `limit` (None = the whole split).
        device: auto | cpu | cuda | mps.
        batch_size: evaluation batch; None = the fastest of a few, measured once here (`tune_forward`).
        task: classify | fidelity | lm (`tasks.TASKS`); None = lm for a causal LM, fidelity for an embedding model
            or an unlabelled dataset, else classify.

    Raises:
        ExperimentError: unknown split or task, a limit below 1, a task the dataset has no targets for, or a model
            that does not fit the dataset (`check_fits`).

    Example:
        >>> from compression_core import QuantSpec, load_dataset, load_model
        >>> exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=100, device="cpu")
        >>> record = exp.run(CompressionConfig(quant=QuantSpec(bits=4)))
        >>> record["task"], record["n_samples"], record["accuracy"] >= 0.95
        ('classify', 100, True)
    """

    def __init__(self, loaded: LoadedModel, dataset: Dataset, split: str = "test", limit: int | None = None,
                 device: str = "auto", batch_size: int | None = None, task: str | None = None):
        if split not in dataset.info.splits:
            raise ExperimentError(f"split must be one of {sorted(dataset.info.splits)}; got {split!r}")
        if limit is not None and limit < 1:
            raise ExperimentError(f"limit must be a positive number of samples; got {limit}")
        self.loaded = loaded
        self.dataset = dataset
        self.split = split
        self.device = select_device(device)
        x, y = dataset.split(split)
        kind = getattr(loaded, "kind", "classifier")
        labelled = y is not None and y.dim() == 1 and dataset.info.num_classes > 0
        self.task = task or default_task(kind, labelled)
        _check_task(self.task, y, dataset.info)
        self.logits = kind != "embedding"  # fidelity: logits (agreement, KL) or embeddings (recall@10)
        n = n_samples(x)
        if limit is not None and limit < n:
            idx = stratified_indices(y, limit) if labelled else torch.arange(limit)
            x, y = _subset(x, idx), None if y is None else y[idx]
        self.limit = limit if limit is not None and limit < n else None
        x, self.y = _to(x, self.device), None if y is None else y.to(self.device)
        # our own copy of the pristine model; its fastest layout and batch size for this device are measured at
        # the first use of the model or the data (`_tune`), so a server answering from shipped records never pays
        # for it
        self._model = copy.deepcopy(loaded.model).to(self.device).eval()
        self._x = x
        self.streamed = not isinstance(x, (torch.Tensor, dict))  # a large image folder read batch by batch
        check_fits(self._model, loaded.name, dataset, x.load(1) if self.streamed else take(x, 0, 1), self.task)
        self._batch_size = batch_size
        self._tuned: tuple[torch.memory_format, int] | None = None
        self._tune_lock = threading.Lock()

    # ---- the tuned model and data ---------------------------------------------------------------
    def _tune(self) -> tuple[torch.memory_format, int]:
        """(memory format, batch size) measured once (`tune_forward`); puts the model and data in that layout."""
        with self._tune_lock:
            if self._tuned is None:
                x = self._x
                fmt, batch = tune_forward(self._model, x.load(x.tune_samples) if self.streamed else x)
                self._model.to(memory_format=fmt)
                if isinstance(x, torch.Tensor):
                    self._x = x.contiguous(memory_format=fmt)
                elif self.streamed:
                    self._x = x.to(self.device, memory_format=fmt)
                self._tuned = (fmt, batch)
            return self._tuned

    @property
    def model(self) -> torch.nn.Module:
        """Our pristine model on the device, in the measured fastest layout (read it, never modify it)."""
        self._tune()
        return self._model

    @property
    def x(self):
        """The evaluation inputs on the device (a tensor, a dict of tensors or a streamed split)."""
        self._tune()
        return self._x

    @property
    def memory_format(self) -> torch.memory_format:
        return self._tune()[0]

    @property
    def batch_size(self) -> int:
        """The evaluation batch: the one given, else the fastest measured."""
        return self._batch_size or self._tune()[1]

    # ---- cached one-off work -------------------------------------------------------------------
    @cached_property
    def layer_names(self) -> list[str]:
        return [name for name, _ in compressible_layers(self._model)]  # the layout does not change the names

    @cached_property
    def calib(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A fixed, class-stratified calibration batch from the train split (never the evaluation split).

        None when the dataset has no train split with class labels and image / signal inputs (an image folder of
        class folders, a text set): configs that need calibration then fail with one line saying so.
        """
        if "train" not in self.dataset.tensors:
            return None
        x, y = self.dataset.split("train")
        if isinstance(x, dict) or y is None or y.dim() != 1:
            return None
        idx = stratified_indices(y, CALIB_SIZE, seed=1)
        x = x[idx] if isinstance(x, torch.Tensor) else x.take(idx).load(len(idx))  # a streamed split: read them
        return x.to(self.device), y[idx].to(self.device)

    @property
    def _train_split_held(self) -> bool:
        """Whether retraining can index the train split (none at all is refused later, by compress)."""
        return self.train_split is None or isinstance(self.train_split[0], torch.Tensor)

    @cached_property
    def train_split(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole train split on the device, for retraining; None when the dataset has none."""
        if "train" not in self.dataset.tensors:
            return None
        x, y = self.dataset.split("train")
        if not isinstance(x, torch.Tensor):  # streamed or text: not a held tensor split retraining can index
            return x, y
        return x.to(self.device), y.to(self.device)

    @cached_property
    def example(self):
        """One evaluation sample as an input batch (tensor or dict of tensors) on the device: traces graphs."""
        return self._x.load(1) if self.streamed else take(self._x, 0, 1)

    @cached_property
    def macs(self) -> dict[str, int]:
        return layer_macs(self.model, self.example)

    @cached_property
    def _baseline_eval(self) -> dict:
        """The fp32 model's metrics, keeping only what its task compares against: predictions (classify) or
        outputs on the cpu (fidelity); nothing for lm."""
        return evaluate(self.model, self.x, self.y, task=self.task, logits=self.logits, keep=self.task != "lm",
                        batch_size=self.batch_size)

    @property
    def _reference(self):
        base = self._baseline_eval
        return base.get("pred", base.get("outputs"))

    @cached_property
    def baseline(self) -> Record:
        """The fp32 record (bits 32, sparsity 0) that drops and agreement are measured against."""
        return self.run(CompressionConfig())

    # ---- the loop --------------------------------------------------------------------------------
    def key(self, config: CompressionConfig) -> dict:
        return {"model": self.loaded.name, "fingerprint": self.loaded.fingerprint, "dataset": self.dataset.info.name,
                "split": self.split, "limit": self.limit, "task": self.task, "config_hash": config.config_hash}

    def compress(self, config: CompressionConfig, progress=None, cancel=None) -> CompressedModel:
        """`compress()` on our pristine model; the calibration batch is used only by configs that need it, the
        train split only by configs that retrain; `cancel` (a threading.Event) stops retraining."""
        if config.retrains and (self.task != "classify" or not self._train_split_held):
            raise ExperimentError(f"retraining minimises the label loss of a classifier on a train split held in "
                                  f"memory; {self.dataset.info.name} under task {self.task} has none: retrain "
                                  "classifiers on built-in, idx: or small image-folder datasets")
        try:
            return compress(self.model, config, calib=self.calib, progress=progress, example=self.example,
                            train=self.train_split if config.retrains else None, cancel=cancel)
        except ValueError as err:
            if self.calib is not None or "calibration data" not in str(err):
                raise
            raise ExperimentError(f"dataset {self.dataset.info.name} has no train split to calibrate on; this config "
                                  "needs one (act_bits, bias correction, fine-tuning, calibrated pruning, repair): add "
                                  "train/ and test/ (or val/) subfolders") from None

    def run(self, config: CompressionConfig, progress=None, compressed: CompressedModel | None = None) -> Record:
        """Compress with `config`, evaluate on the split and return the record (fields: `record.RECORD_FIELDS`).

        `compressed`: the result of `self.compress(config)` when the caller already has it (compress_seconds
        is then None: it was not measured here).
        """
        if compressed is not None and compressed.config != config:
            raise ValueError("compressed was made with another config")
        t0 = time.perf_counter()
        cm = compressed or self.compress(config, progress)
        compress_seconds = None if compressed is not None else time.perf_counter() - t0
        base = self._baseline_eval
        metrics = evaluate(cm.model, self.x, self.y, task=self.task, reference=self._reference, logits=self.logits,
                           batch_size=self.batch_size)
        return self._record(config, cm, metrics, base, compress_seconds)

    def run_many(self, configs, *, group: int | None = None, cancel=None):
        """Yield the record of each config in order; on a GPU, `group` configs share one stacked forward.

        Args:
            configs: CompressionConfigs to run.
            group: configs evaluated per vmap-ed forward (default STACK_GROUP on cuda, 1 elsewhere). Configs with
                activation quantization (forward hooks) or structured pruning (other shapes) always run alone, and
                so does every config of a task other than classify or of inputs that are not one tensor (dict,
                streamed).
            cancel: a threading.Event; once set, no further group starts.
        """
        stackable = self.task == "classify" and isinstance(self.x, torch.Tensor)
        group = group or (STACK_GROUP if self.device.type == "cuda" and stackable else 1)
        configs = list(configs)
        for start in range(0, len(configs), group):
            if cancel is not None and cancel.is_set():
                return
            chunk = configs[start:start + group]
            alone = [c for c in chunk if c.act_bits < 32 or c.removes_channels] if len(chunk) > 1 else chunk
            stacked = [c for c in chunk if c not in alone]
            if stacked:
                t0 = time.perf_counter()
                cms = [self.compress(c) for c in stacked]
                compress_seconds = (time.perf_counter() - t0) / len(cms)
                base = self._baseline_eval
                results = evaluate_stacked([cm.model for cm in cms], self.x, self.y, reference=base["pred"],
                                           batch_size=self.batch_size)
                for config, cm, metrics in zip(stacked, cms, results):
                    yield self._record(config, cm, metrics, base, compress_seconds)
            for config in alone:
                yield self.run(config)

    def _quality(self, metrics: dict, base: dict) -> dict:
        """The task's fields of the record, in record order; those another task measures are None (e.g. accuracy
        without labels)."""
        metric = DEFAULT_METRIC[self.task]
        acc, base_acc = metrics.get("accuracy"), base.get("accuracy")
        return {
            "metric": metric, "metric_value": metrics[metric], "baseline_metric_value": base[metric],
            **{name: metrics.get(name) for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high")},
            "n_samples": metrics["n_samples"], "n_skipped": self.dataset.info.n_skipped,
            **{name: metrics.get(name) for name in ("correct", "top5", "loss")},
            "baseline_accuracy": base_acc, "accuracy_drop_pts": None if acc is None else 100.0 * (base_acc - acc),
            **{name: metrics.get(name) for name in ("agreement", "kl", "cosine", "rel_l2", "recall_at_10",
                                                    "perplexity", "n_tokens")},
        }

    def _record(self, config, cm, metrics, base, compress_seconds) -> Record:
        size = size_report(cm)
        layers, compute = self._layers_and_compute(config, cm, size)
        return {
            **self.key(config),
            "engine_version": __version__,
            "config": config.to_dict(),
            "label": config.label,
            "bits": config.quant.bits,
            "quantizer": config.quant.quantizer,
            "prune_method": config.prune.method if config.prune.enabled else "none",
            "sparsity": config.prune.target_sparsity,
            "act_bits": config.act_bits,
            **self._quality(metrics, base),
            "dense_bytes": size.dense_bytes,
            "size_bytes": size.total_bytes,
            "compression_ratio": size.compression_ratio,
            "bits_per_weight": size.bits_per_weight,
            "realized_sparsity": cm.realized_sparsity,
            "n_params": sum(t.numel() for t in self.model.state_dict().values() if t.is_floating_point()),
            "n_weights": cm.n_weights,
            "nnz": cm.nnz,
            **compute,
            "device": str(self.device),
            "memory_format": "channels_last" if self.memory_format == torch.channels_last else "contiguous",
            "eval_seconds": metrics["eval_seconds"],
            "compress_seconds": compress_seconds,
            "batch_size": metrics["batch_size"],
            "eval_group": metrics["eval_group"],
            "latency_ms_per_batch": metrics["latency_ms_per_batch"],
            "finetune_final_loss": cm.finetune_log[-1][1] if cm.finetune_log else None,
            "bn_folded": [list(pair) for pair in cm.folded],
            "bn_fold_note": cm.fold_note,
            "repair": config.repair,
            "repair_calib_samples": cm.repair_stats.get("calib_samples"),
            "repair_seconds": cm.repair_stats.get("seconds"),
            **_structure_fields(cm),
            "layers": layers,
        }

    def _layers_and_compute(self, config, cm, size) -> tuple[list[LayerRow], dict]:
        """The record's layer rows and its compute fields (macs, sparse_macs, bitops, sparse_bitops, in record
        order): per layer, the MACs that touch a kept weight are its dense MACs x nnz / n (each kept weight is used
        once per output position), and BitOps multiply MACs by the stored value bits and the activation bits."""
        size_by_layer = {l.name: l for l in size.layers}
        layers: list[LayerRow] = []
        bitops = sparse_bitops = sparse_macs = 0
        for name, lc in cm.layers.items():
            ls = size_by_layer[name]
            act = config.act_bits if name in cm.act_qparams else 32
            macs = self.macs.get(name, 0)
            kept_macs = round(macs * (1 - lc.sparsity))
            bitops += macs * ls.value_bits * act
            sparse_bitops += kept_macs * ls.value_bits * act
            sparse_macs += kept_macs
            layers.append({
                "name": name, "shape": list(lc.shape), "bits": ls.value_bits,
                "quantizer": "none" if lc.skipped or not lc.quant.enabled else lc.quant.quantizer,
                "sparsity": lc.sparsity, "n": lc.n_dense, "nnz": lc.nnz, "index_format": ls.index_format,
                "size_bits": ls.total_bits, **ls.breakdown(), "macs": macs, "skipped": lc.skipped,
                "input_scaled": lc.input_scale is not None,
                "dense_shape": list(lc.dense_shape or lc.shape),
            })
        compute = {"macs": sum(self.macs.values()), "sparse_macs": sparse_macs, "bitops": bitops,
                   "sparse_bitops": sparse_bitops}
        return layers, compute


def _structure_fields(cm: CompressedModel) -> dict:
    """The record's structured-pruning and retraining fields (record.RECORD_FIELDS)."""
    ft = cm.finetune
    return {
        "protected_layers": ",".join(cm.structure.protected) if cm.structure is not None else "",
        "finetune_data": ft.data if ft else "",
        "finetune_steps_run": ft.steps if ft else None,
        "finetune_lr": ft.lr if ft else None,
        "finetune_batch_size": ft.batch_size if ft else None,
        "finetune_seconds": ft.seconds if ft else None,
        "finetune_cached": ft.cached if ft else None,
    }
