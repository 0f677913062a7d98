"""Training the built-in architectures: a fixed recipe per model, data held as tensors, deterministic for a seed.

`train_model` returns the trained model and its test metrics; `save_checkpoint` writes the safetensors file and
records it (sha256, dataset, test accuracy, recipe, seed, torch version) in the `manifest.json` next to it;
`train_and_save` does both for the CLI (`python -m compression_core train`). The shipped checkpoints in
`compression_core/checkpoints/` (package data, `models.CHECKPOINT_DIR`) were made this way.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import Dataset, load_dataset
from .evaluate import evaluate, select_device
from .models import ARCHITECTURES, MANIFEST, ModelLoadError, file_sha256, read_manifest


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: AdamW with a one-cycle learning-rate schedule (cosine annealing from `lr`).

    shift: random translation of each training sample by up to this many pixels (samples) per spatial axis.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    shift: int = 0
    label_smoothing: float = 0.0
    optimizer: str = "adamw"
    schedule: str = "onecycle"


RECIPES: dict[str, Recipe] = {
    "lenet300": Recipe(epochs=12, batch_size=128, lr=2e-3, shift=1),
    "lenet5": Recipe(epochs=8, batch_size=128, lr=3e-3, shift=2),
    "digits-cnn": Recipe(epochs=15, batch_size=64, lr=3e-3),
    "mnist1d-mlp": Recipe(epochs=200, batch_size=100, lr=2e-3, weight_decay=5e-2, shift=2),
    "mnist1d-cnn": Recipe(epochs=200, batch_size=100, lr=1e-2, weight_decay=1e-3, shift=3),
    "resnet20": Recipe(epochs=12, batch_size=128, lr=3e-3, shift=1, label_smoothing=0.1),
    "mobilenet-s": Recipe(epochs=10, batch_size=128, lr=3e-3, shift=1, label_smoothing=0.1),
    "vit-tiny": Recipe(epochs=15, batch_size=128, lr=2e-3, weight_decay=5e-2, shift=1, label_smoothing=0.1),
}


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator, fill: torch.Tensor) -> torch.Tensor:
    """Translate every sample by its own random offset in [-pixels, pixels] along each spatial axis.

    Args:
        x: (N, C, H, W) or (N, C, L).
        pixels: the largest offset.
        generator: source of the offsets (on x's device).
        fill: (1, C, 1, ...) value of the uncovered border (the normalised background).

    Returns:
        A new tensor shaped like x.
    """
    n, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    ones = [1] * len(spatial)
    padded = F.pad(x - fill, [pixels] * 2 * len(spatial)) + fill  # (N, C, H + 2p, W + 2p)
    offsets = torch.randint(0, 2 * pixels + 1, (n, len(spatial)), generator=generator, device=x.device)
    index = [torch.arange(n, device=x.device).view(n, 1, *ones), torch.arange(channels, device=x.device).view(1, -1, *ones)]
    for axis, size in enumerate(spatial):
        shape = [n, 1] + ones
        shape[2 + axis] = size
        index.append((offsets[:, axis:axis + 1] + torch.arange(size, device=x.device)).view(shape))
    return padded[tuple(index)]


def train_model(name: str, dataset: str | Dataset | None, *, epochs: int | None = None, seed: int = 0,
                device: str = "cpu", progress: Callable[[str], None] | None = None,
                recipe: Recipe | None = None) -> tuple[nn.Module, dict]:
    """Train a built-in architecture from scratch on a dataset's train split and measure it on the test split.

    Args:
        name: a built-in architecture (see `models.ARCHITECTURES`).
        dataset: a dataset name, a loaded `Dataset`, or None for the architecture's own dataset.
        epochs: passes over the train split (None: the recipe's).
        seed: seeds the initial weights, the batch order and the augmentation; same seed, same model (same device).
        device: auto | cpu | cuda | mps.
        progress: called with one line of text after every epoch.
        recipe: overrides `RECIPES[name]`.

    Returns:
        (model in eval mode on cpu, metrics dict: dataset, accuracy, n_test, loss, epochs, seconds, recipe, seed,
        history of per-epoch {epoch, train_loss, test_accuracy}).
    """
    if name not in ARCHITECTURES:
        raise ModelLoadError(f"train needs a built-in architecture: one of {', '.join(ARCHITECTURES)}; got {name!r}")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset or ARCHITECTURES[name].dataset)
    recipe = recipe or RECIPES[name]
    recipe = replace(recipe, epochs=epochs) if epochs is not None else recipe
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {recipe.epochs}")
    dev = select_device(device)
    x, y = (t.to(dev) for t in data.split("train"))
    x_test, y_test = (t.to(dev) for t in data.split("test"))
    fill_shape = (1, -1) + (1,) * (x.dim() - 2)
    fill = (-torch.tensor(data.info.mean) / torch.tensor(data.info.std)).view(fill_shape).to(dev)  # pixel value 0

    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ARCHITECTURES[name].build(data.info.num_classes).to(dev)
        _check_input(model, name, data, x)
        generator = torch.Generator(device=dev).manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps = math.ceil(len(y) / recipe.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps)
        history, start = [], time.perf_counter()
        for epoch in range(1, recipe.epochs + 1):
            train_loss = _train_epoch(model, x, y, recipe, optimizer, schedule, generator, fill)
            metrics = evaluate(model, x_test, y_test)
            history.append({"epoch": epoch, "train_loss": train_loss, "test_accuracy": metrics["accuracy"]})
            if progress:
                progress(f"{name} on {data.info.name}: epoch {epoch}/{recipe.epochs}, train loss "
                         f"{history[-1]['train_loss']:.4f}, test accuracy {metrics['accuracy']:.2%}")
    return model.cpu().eval(), {
        "dataset": data.info.name, "accuracy": metrics["accuracy"], "n_test": metrics["n_samples"],
        "loss": metrics["loss"], "epochs": recipe.epochs, "seconds": round(time.perf_counter() - start, 1),
        "recipe": asdict(recipe), "seed": seed, "history": history,
    }


def _train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, optimizer, schedule,
                 generator: torch.Generator, fill: torch.Tensor) -> float:
    """One pass over (x, y) in a seeded random order, shifted as the recipe says; the model is left in eval mode.

    Returns:
        The mean training loss over the samples.
    """
    model.train()
    order = torch.randperm(len(y), generator=generator, device=x.device)
    total = torch.zeros((), device=x.device)
    for batch in order.split(recipe.batch_size):
        xb = x[batch]
        if recipe.shift:
            xb = random_shift(xb, recipe.shift, generator, fill)
        loss = F.cross_entropy(model(xb), y[batch], label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.detach() * len(batch)
    model.eval()
    return float(total) / len(y)


def _check_input(model: nn.Module, name: str, data: Dataset, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            model(x[:1])
    except RuntimeError:
        raise ValueError(f"{name} cannot take inputs of shape {data.info.input_shape} (dataset {data.info.name}); "
                         "pick a model built for them") from None


def save_checkpoint(model: nn.Module, path: str | Path, *, name: str, dataset: str, accuracy: float, n_test: int,
                    recipe: dict, seed: int) -> dict:
    """Write the model's state dict as float32 safetensors and record it in `manifest.json` beside the file.

    Returns:
        The manifest entry: file, model, dataset, num_classes, sha256, accuracy, n_test, n_params, recipe, seed,
        torch.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in hash order, which would make the file's bytes vary
    about = json.dumps({"model": name, "dataset": dataset, "accuracy": round(accuracy, 6), "seed": seed}, sort_keys=True)
    save_file(state, str(path), metadata={"compression_explorer": about})
    path.chmod(0o644)  # safetensors writes owner-only files; checkpoints are meant to be shared
    num_classes = next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)).out_features
    entry = {"file": path.name, "model": name, "dataset": dataset, "num_classes": num_classes,
             "sha256": file_sha256(path), "accuracy": round(accuracy, 6), "n_test": n_test,
             "n_params": sum(p.numel() for p in model.parameters()), "recipe": recipe, "seed": seed,
             "torch": torch.__version__}
    manifest = read_manifest(path.parent)
    manifest[path.name] = entry
    tmp = path.parent / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"checkpoints": dict(sorted(manifest.items()))}, indent=2) + "\n")
    os.replace(tmp, path.parent / MANIFEST)  # atomic: readers never see half a manifest
    return entry


def train_and_save(name: str, dataset: str | None, *, epochs: int | None, seed: int, device: str, out: str | Path,
                   progress: Callable[[str], None] | None = None) -> dict:
    """`python -m compression_core train`: train, write `out` (.safetensors) and update the manifest beside it.

    Returns:
        The manifest entry plus seconds and the per-epoch history.
    """
    if Path(out).suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file; got {out}")
    model, metrics = train_model(name, dataset, epochs=epochs, seed=seed, device=device, progress=progress)
    entry = save_checkpoint(model, out, name=name, dataset=metrics["dataset"], accuracy=metrics["accuracy"],
                            n_test=metrics["n_test"], recipe=metrics["recipe"], seed=seed)
    return {**entry, "seconds": metrics["seconds"], "history": metrics["history"]}
