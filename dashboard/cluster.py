"""Sweeps on a Ray cluster from the dashboard: the operator's cluster address, what it has, and the selection as the
plain-data `ExperimentSpec` its workers build their experiment from (`compression_core.executor_ray`).

The operator sets `COMPRESSION_EXPLORER_RAY_ADDRESS` (else Ray's own `RAY_ADDRESS`) before starting the dashboard;
without it the Sweep page offers in-process sweeps only.
"""
from __future__ import annotations

import os

import streamlit as st

from compression_core.datasets import TEXT_NAMES
from compression_core.executor_ray import ClusterError, RayExecutor, cluster_summary
from compression_core.spec import ExperimentSpec
from dashboard import services, uploads
from dashboard.selection import Selection
from dashboard.server_paths import check_server_path, data_roots

__all__ = ["RAY_ADDRESS_ENV", "ClusterError", "experiment_spec", "ray_address", "ray_cluster", "ray_executor"]

RAY_ADDRESS_ENV = "COMPRESSION_EXPLORER_RAY_ADDRESS"  # the operator's Ray cluster for sweeps (else RAY_ADDRESS)


def ray_address() -> str | None:
    """The Ray cluster sweeps may run on: $COMPRESSION_EXPLORER_RAY_ADDRESS, else $RAY_ADDRESS; None when unset."""
    return os.environ.get(RAY_ADDRESS_ENV) or os.environ.get("RAY_ADDRESS") or None


@st.cache_data(show_spinner="Asking the Ray cluster…", ttl=10)
def ray_cluster(address: str) -> dict:
    """`executor_ray.cluster_summary` (nodes, cpus, gpus, workers), read again after 10 s.

    Raises:
        ClusterError: Ray missing or the cluster unreachable; one line.
    """
    return cluster_summary(address)


def experiment_spec(selection: Selection) -> ExperimentSpec:
    """The selection as plain data for Ray workers: a built-in by name, a shared hf folder by its server path, an
    uploaded model with its weights as safetensors bytes (the upload itself is not kept after loading)."""
    from safetensors.torch import save

    loaded = services.selection_model(selection)
    model, weights = selection.model, None
    if selection.factory is not None and selection.factory.startswith("hf:"):
        model = check_server_path(selection.factory, data_roots())
    elif selection.factory is not None:
        model = selection.factory
        weights = save({k: v.detach().clone().contiguous() for k, v in loaded.model.state_dict().items()})
    text = selection.dataset in TEXT_NAMES or selection.dataset.startswith("text:")
    return ExperimentSpec(model=model, weights=weights, num_classes=selection.num_classes, dataset=selection.dataset,
                          transform=selection.transform, limit=selection.limit, device="auto", task=selection.task,
                          max_length=services.text_window(loaded) if text else services.TEXT_MAX_LENGTH,
                          allowed_factories=uploads.allowed_factories())


def ray_executor(selection: Selection, address: str):
    """A RayExecutor for the selection on the cluster at `address`: one worker per GPU there, else per CPU.

    Raises:
        ClusterError: Ray missing or the cluster unreachable; one line.
    """
    return RayExecutor(experiment_spec(selection), address=address, gpus_per_worker=min(1, ray_cluster(address)["gpus"]))
