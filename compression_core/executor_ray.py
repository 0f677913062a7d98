"""`RayExecutor`: a sweep's configs evaluated by Ray actors (one per GPU, or per N CPUs), on one machine or a cluster.

Each actor builds its `Experiment` once from an `ExperimentSpec` (weights given as bytes go into Ray's object store
once) and evaluates chunks of configs (`Experiment.run_many`: on a GPU a chunk shares stacked forwards). Records
come back as they finish, in any order; `sweep` alone writes the store. A worker that dies has its unfinished
configs run again on another worker, once; a config that fails twice comes back as a `sweep.ConfigFailure`.
Cancel stops submitting and kills the workers still computing within `POLL_S`.

Ray is an optional extra: `require_ray()` says how to install it. Cluster problems (an unreachable address, fewer
GPUs than asked for, every worker gone) raise `ClusterError`, one line.

Example (not run as a doctest: it starts a local Ray instance with two single-CPU workers):

    spec = ExperimentSpec(model="digits-cnn", dataset="digits", limit=200, device="cpu")
    with RayExecutor(spec, workers=2) as executor:
        records = sweep(spec.build(), configs, store=store, executor=executor)
"""
from __future__ import annotations

import itertools
import math
import socket
import sys
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from .config import CompressionConfig
from .errors import error_line
from .experiment import STACK_GROUP
from .spec import ExperimentSpec
from .sweep import ConfigFailure

INSTALL_HINT = "pip install 'compression-explorer[ray]'"
POLL_S = 0.2  # how often the driver looks at cancel while waiting for results
CONNECT_TIMEOUT_S = 5.0  # a HOST:PORT that does not answer within this is reported unreachable
MAX_ATTEMPTS = 2  # a config is tried on at most this many workers before it is reported failed
WORKER_PREFIX = "compression-explorer-worker"  # actor names; cluster_summary counts the live ones


class ClusterError(ConnectionError):
    """Ray is missing, the cluster cannot be reached or lacks what was asked, or every worker died: one line."""


def require_ray():
    """The `ray` module.

    Raises:
        ClusterError: Ray is not installed; the line says how to install it.
    """
    try:
        import ray
    except ImportError:
        raise ClusterError(f"the ray executor needs Ray, which is not installed; install it with {INSTALL_HINT}") \
            from None
    return ray


def connect(address: str | None):
    """Connect this process to Ray (once; later calls reuse the connection) and return the `ray` module.

    Args:
        address: None (RAY_ADDRESS if set, else a new local Ray instance), "auto" (the instance `ray start` runs on
            this machine), "ray://HOST:PORT" (Ray Client) or "HOST:PORT" (a head node's GCS).

    Raises:
        ClusterError: Ray missing, a malformed address, nothing answering at it within CONNECT_TIMEOUT_S, or Ray
            refusing to connect; one line.
    """
    ray = require_ray()
    if address not in (None, "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        return ray
    try:  # Ray's own notices (token authentication, ...) stay off the user's stderr; its errors are raised
        ray.init(address=address, include_dashboard=False if address is None else None, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                           f"{error_line(err, first_line=True)}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Raise ClusterError unless `address` is HOST:PORT (or ray://HOST:PORT) with something listening there."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} must be auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ClusterError(f"no Ray cluster answers at {address} ({err.strerror or type(err).__name__}); start one "
                           "there with `ray start --head`, or check the host and port") from None


def cluster_summary(address: str | None) -> dict:
    """What the Ray cluster at `address` has (connecting first, as `connect`).

    Returns:
        {"address", "nodes": alive nodes, "cpus", "gpus": totals over them, "workers": live sweep workers}.

    Raises:
        ClusterError: as `connect`.
    """
    ray = connect(address)
    resources = ray.cluster_resources()
    workers = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(WORKER_PREFIX)]
    return {"address": address or "local", "nodes": sum(n["Alive"] for n in ray.nodes()),
            "cpus": int(resources.get("CPU", 0)), "gpus": int(resources.get("GPU", 0)), "workers": len(workers)}


def _describe(summary: dict) -> str:
    return (f"{summary['nodes']} node{'s' * (summary['nodes'] != 1)}, {summary['cpus']} CPUs and "
            f"{summary['gpus']} GPUs")


class _Worker:
    """The actor: builds the experiment once, then evaluates chunks of configs (one thread per reserved CPU)."""

    def __init__(self, spec: ExperimentSpec, weights: bytes | None, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            self.exp, self.error = (spec if weights is None else replace(spec, weights=weights)).build(), None
        except Exception as err:  # noqa: BLE001 - the driver reports it as one line
            self.exp, self.error = None, error_line(err, first_line=True)

    def run(self, configs: list[CompressionConfig]) -> dict:
        """{"records": [...], "errors": {config_hash: line}, "fatal": the build error or None}."""
        if self.exp is None:
            return {"records": [], "errors": {}, "fatal": self.error}
        records: list[dict] = []
        try:
            records.extend(self.exp.run_many(configs))
        except Exception:  # noqa: BLE001 - one bad config must not cost its chunk: the rest run one by one
            finished = {r["config_hash"] for r in records}
            return self._one_by_one([c for c in configs if c.config_hash not in finished], records)
        return {"records": records, "errors": {}, "fatal": None}

    def _one_by_one(self, configs: list[CompressionConfig], records: list[dict]) -> dict:
        errors = {}
        for config in configs:
            try:
                records.append(self.exp.run(config))
            except Exception as err:  # noqa: BLE001 - reported per config; the driver retries it elsewhere
                errors[config.config_hash] = error_line(err, first_line=True)
        return {"records": records, "errors": errors, "fatal": None}


@dataclass(frozen=True)
class _Chunk:
    """Configs sent to one worker in one task; `avoid`: workers they failed on (tried elsewhere first)."""

    configs: list[CompressionConfig]
    avoid: frozenset[int] = field(default_factory=frozenset)


class RayExecutor:
    """A `sweep.ConfigExecutor` on Ray actors; use it as a context manager (or call `close`) to end the actors.

    Args:
        spec: the experiment every worker builds (must key records as the driver's experiment does).
        address: as `connect` takes it.
        gpus_per_worker: GPUs each actor reserves (0: CPU workers, which then run on the cpu under device auto).
        cpus_per_worker: CPUs each actor reserves; also its torch thread count.
        workers: how many actors (default: the cluster's GPUs // gpus_per_worker, else CPUs // cpus_per_worker).

    Raises:
        ValueError: a negative GPU count, fewer than one CPU or worker.
    """

    claim_batch = sys.maxsize  # the whole pending grid is claimed and queued: workers never idle between batches

    def __init__(self, spec: ExperimentSpec, *, address: str | None = None, gpus_per_worker: float = 0,
                 cpus_per_worker: int = 1, workers: int | None = None) -> None:
        if not (math.isfinite(gpus_per_worker) and gpus_per_worker >= 0 and cpus_per_worker >= 1
                and (workers is None or workers >= 1)):
            raise ValueError(f"gpus_per_worker must be >= 0, cpus_per_worker >= 1 and workers >= 1; got "
                             f"{gpus_per_worker}, {cpus_per_worker}, {workers}")
        self.spec, self.address = spec, address
        self.gpus_per_worker, self.cpus_per_worker, self.workers = gpus_per_worker, cpus_per_worker, workers
        self.chunk = STACK_GROUP if gpus_per_worker > 0 else 1  # configs per task: a stacked forward's worth on GPU
        self._pool: dict[int, object] = {}  # worker id -> actor handle (alive as far as we know)
        self._ids = itertools.count()
        self._ray = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, configs: int | None = None) -> dict:
        """Connect, check the cluster has what the workers need, and start them; returns `cluster_summary`.

        Args:
            configs: how many configs are to run, when known: without `workers`, no more workers start than
                there are tasks for them (each builds its own experiment).

        Raises:
            ClusterError: as `connect`, or the cluster lacks the GPUs / CPUs asked for (the line says what it has).
        """
        self._ray = ray = connect(self.address)
        summary = cluster_summary(self.address)
        fit = int(summary["gpus"] // self.gpus_per_worker) if self.gpus_per_worker else \
            summary["cpus"] // self.cpus_per_worker
        n = self.workers or max(1, min(fit, -(-configs // self.chunk) if configs else fit))
        need_gpus, need_cpus = n * self.gpus_per_worker, n * self.cpus_per_worker
        if need_gpus > summary["gpus"] or need_cpus > summary["cpus"]:
            raise ClusterError(f"{n} worker{'s' * (n != 1)} of {self.gpus_per_worker:g} GPU(s) and "
                               f"{self.cpus_per_worker} CPU(s) need {need_gpus:g} GPU(s) and {need_cpus} CPU(s); the "
                               f"cluster at {summary['address']} has {_describe(summary)}")
        weights = ray.put(self.spec.weights) if isinstance(self.spec.weights, bytes) else None  # once, not per task
        spec = replace(self.spec, weights=None) if weights is not None else self.spec
        if self.gpus_per_worker == 0 and spec.device == "auto":
            spec = replace(spec, device="cpu")  # a CPU worker does not take a GPU it did not reserve
        actor = ray.remote(_Worker)
        for _ in range(n):
            self._pool[next(self._ids)] = actor.options(
                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0,
                name=f"{WORKER_PREFIX}-{uuid.uuid4().hex[:12]}").remote(spec, weights, self.cpus_per_worker)
        return summary

    def close(self) -> None:
        """Kill the workers (records already returned are unaffected)."""
        for handle in self._pool.values():
            self._ray.kill(handle)
        self._pool.clear()

    def run_configs(self, configs: Sequence[CompressionConfig],
                    cancel: threading.Event | None = None) -> Iterator[dict | ConfigFailure]:
        """Yield each config's record as a worker finishes it (any order), or a ConfigFailure after two failures.

        Raises:
            ClusterError: as `start`; a worker could not build the experiment; or every worker died (the records
                yielded so far stand).
        """
        if not self._pool:
            self.start(len(configs))
        ray = self._ray
        configs = list(configs)
        queue = deque(_Chunk(configs[i:i + self.chunk]) for i in range(0, len(configs), self.chunk))
        attempts: Counter[str] = Counter()
        idle, in_flight = list(self._pool), {}
        try:
            while queue or in_flight:
                if cancel is not None and cancel.is_set():
                    return
                self._submit(queue, idle, in_flight)
                if not in_flight:
                    raise ClusterError(f"every Ray worker died; {sum(len(c.configs) for c in queue)} configs were "
                                       "not evaluated (the finished ones are stored): run the same sweep again")
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    wid, chunk = in_flight.pop(ref)
                    yield from self._collect(ref, wid, chunk, queue, idle, attempts)
        finally:
            for wid, _ in in_flight.values():  # cancelled or abandoned: stop the computation, not just the wait
                ray.kill(self._pool.pop(wid))

    def _submit(self, queue: deque, idle: list[int], in_flight: dict) -> None:
        """Hand queued chunks to idle workers; a retried chunk waits for a worker it has not failed on."""
        for _ in range(len(queue)):
            if not idle:
                return
            chunk = queue.popleft()
            wid = next((w for w in idle if w not in chunk.avoid), None)
            if wid is None and any(w not in chunk.avoid for w in self._pool):
                queue.append(chunk)  # another live worker will be free soon
                continue
            wid = idle[0] if wid is None else wid
            idle.remove(wid)
            in_flight[self._pool[wid].run.remote(chunk.configs)] = (wid, chunk)

    def _collect(self, ref, wid: int, chunk: _Chunk, queue: deque, idle: list[int],
                 attempts: Counter) -> Iterator[dict | ConfigFailure]:
        """The finished task's records; its failed configs are queued again or, after MAX_ATTEMPTS, failures."""
        ray = self._ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:  # the worker died (killed, node lost, out of memory)
            self._pool.pop(wid, None)
            result = {"records": [], "fatal": None,
                      "errors": {c.config_hash: f"its Ray worker died ({error_line(err, first_line=True)})"
                                 for c in chunk.configs}}
        else:
            idle.append(wid)
        if result["fatal"] is not None:
            raise ClusterError(f"a Ray worker could not build the experiment: {result['fatal']}")
        yield from result["records"]
        for config in chunk.configs:
            line = result["errors"].get(config.config_hash)
            if line is None:
                continue
            attempts[config.config_hash] += 1
            if attempts[config.config_hash] >= MAX_ATTEMPTS:
                yield ConfigFailure(config, line)
            else:
                queue.append(_Chunk([config], chunk.avoid | {wid}))
