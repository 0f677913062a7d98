"""What the sidebar chose (`Selection`): the model, dataset, device and live subset every page and cache reads."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_MODEL = "lenet5"
DEFAULT_DATASET = "mnist"
DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class Selection:
    """What the sidebar chose; hashable, so it keys the caches in `services`.

    model: a built-in model name (e.g. "lenet5"), or for bring-your-own the factory spec ("pkg.mod:fn").
    dataset: registry dataset name (e.g. "mnist").
    device: the device actually used, resolved from the user's auto/cpu/cuda choice ("cpu", "cuda" or "mps").
    limit: size of the class-stratified live evaluation subset of the test split (None = the whole split).
    factory: the bring-your-own spec (factory or torchvision:NAME), None for built-ins.
    weights_id: content id of the uploaded weights (sha256 prefix + suffix; bring-your-own only), else None.
    num_classes: the class count passed to a bring-your-own constructor (None: its default).
    transform: the preset a dataset path on the server is decoded with (`auto` = the model's own; ignored for
        built-in datasets).
    task: classify | fidelity | lm, or None for the model's default (`compression_core.tasks`).
    """

    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    device: str = "cpu"
    limit: int | None = DEFAULT_LIMIT
    factory: str | None = None
    weights_id: str | None = None
    num_classes: int | None = None
    transform: str = "auto"
    task: str | None = None

    @property
    def key(self) -> str:
        """A stable string id of the selection, for per-selection data kept in session state."""
        return "|".join(str(v) for v in dataclasses.astuple(self))

    @property
    def label(self) -> str:
        """Short text for headers: 'lenet5 on mnist · cpu' (holds user text for bring-your-own: escape it)."""
        return f"{self.model} on {self.dataset} · {self.device}"
