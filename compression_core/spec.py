"""`ExperimentSpec`: what an `Experiment` is made of, as plain data that pickles small and builds anywhere.

A sweep on other processes or machines sends this spec (and configs), never the loaded model: each worker calls
`spec.build()` once and evaluates many configs on the result. The CLI builds its experiments the same way
(`ExperimentSpec.from_args(args).build()`), so a worker and the CLI share one code path.

Example:
    >>> import pickle
    >>> spec = ExperimentSpec(model="digits-cnn", dataset="digits", limit=100, device="cpu")
    >>> pickle.loads(pickle.dumps(spec)) == spec
    True
    >>> spec.build().limit
    100
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .experiment import Experiment
from .models import LoadedModel, ModelLoadError

TEXT_MAX_LENGTH = 128  # tokens per text sample or lm window (the CLI's --max-length default)


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment as plain data (strings, numbers, bytes): model, weights, dataset, subset, device and task.

    Args:
        model: a built-in name, `pkg.module:factory`, `torchvision:NAME` or `hf:PATH_OR_ID` (as `load_model`).
        weights: None (a built-in's shipped checkpoint, a factory's own parameters), a .safetensors / .pt / .pth
            path every worker can read, "DEFAULT" (torchvision's published weights), or the file's bytes.
        weights_name: the file name of `weights` given as bytes; its suffix says how they are read, and errors
            name it (default weights.safetensors).
        num_classes: passed to the model constructor when given.
        dataset: a dataset name as `load_dataset` takes (None: the model's own).
        transform: image folders: auto | imagenet | cifar | gray28 | gray28-fashion | none.
        split, limit, device, task: as `Experiment` takes them.
        max_length, stride: text datasets: tokens per sample / window, and how far a task-lm window moves.
        allow_download: let torchvision / transformers fetch what is missing.
        allowed_factories: module prefixes a factory may come from (None: any outside the standard library).
    """

    model: str
    weights: str | bytes | None = None
    weights_name: str = "weights.safetensors"
    num_classes: int | None = None
    dataset: str | None = None
    transform: str = "auto"
    split: str = "test"
    limit: int | None = None
    device: str = "auto"
    task: str | None = None
    max_length: int = TEXT_MAX_LENGTH
    stride: int | None = None
    allow_download: bool = False
    allowed_factories: tuple[str, ...] | None = None

    @classmethod
    def from_args(cls, args) -> ExperimentSpec:
        """The spec the CLI's flags name (--model, --weights, --dataset, ...; those a subcommand lacks: defaults)."""
        return cls(model=args.model, weights=args.weights, num_classes=args.num_classes, dataset=args.dataset,
                   transform=args.transform, split=getattr(args, "split", "test"), limit=getattr(args, "limit", None),
                   device=args.device, task=getattr(args, "task", None),
                   max_length=getattr(args, "max_length", TEXT_MAX_LENGTH), stride=getattr(args, "stride", None),
                   allow_download=args.allow_download)

    def build(self) -> Experiment:
        """Load the model and the data and return the Experiment.

        A built-in model without weights brings its own shipped checkpoint whatever the dataset: an image folder or
        torchvision dataset names no checkpoint. A text dataset is read after the model, with its tokenizer.

        Raises:
            ModelLoadError, DatasetUnavailable, DeviceUnavailable, ExperimentError: one line saying what is wrong.
        """
        from .datasets import BUILTINS, load_dataset
        from .datasets_images import resolve_transform
        from .models.architectures import ARCHITECTURES

        transform = resolve_transform(self.transform, self.model)
        dataset = (load_dataset(self.dataset, allow_download=self.allow_download, transform=transform)
                   if self.dataset is not None and not _is_text(self.dataset) else None)
        trained_on = None if self.model in ARCHITECTURES and self.dataset not in BUILTINS else self.dataset
        loaded = self._load_model(trained_on)
        name = self.dataset or loaded.dataset
        if _is_text(name):
            dataset = self._text_dataset(loaded, name)
        dataset = dataset or load_dataset(name, allow_download=self.allow_download)
        return Experiment(loaded, dataset, split=self.split, limit=self.limit, device=self.device, task=self.task)

    def _load_model(self, trained_on: str | None) -> LoadedModel:
        """`load_model` with the spec's weights; bytes are read through a private temp file, deleted right after."""
        from .models import load_model

        def load(weights: str | None) -> LoadedModel:
            return load_model(self.model, dataset=trained_on, weights=weights, num_classes=self.num_classes,
                              allowed_factories=self.allowed_factories, allow_download=self.allow_download)

        if not isinstance(self.weights, bytes):
            return load(self.weights)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"weights{Path(self.weights_name).suffix}"
            path.write_bytes(self.weights)
            try:
                return load(str(path))
            except ModelLoadError as e:  # name the file as the user knows it, not by its temp path
                raise ModelLoadError(str(e).replace(str(path), self.weights_name)) from None

    def _text_dataset(self, loaded: LoadedModel, name: str):
        """A text dataset (`text:PATH` or the shipped `sentences`) tokenized with the model's own tokenizer: one
        token stream for task lm (sliding windows of max_length, stride), else one sample per line."""
        from .datasets import load_dataset
        from .tasks import default_task

        task = self.task or default_task(loaded.kind, labelled=False)
        return load_dataset(name, tokenizer=loaded.tokenizer, text_mode="stream" if task == "lm" else "lines",
                            max_length=self.max_length, stride=self.stride)


def _is_text(name: str | None) -> bool:
    from .datasets import TEXT_NAMES

    return name is not None and (name.startswith("text:") or name in TEXT_NAMES)
