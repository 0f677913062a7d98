"""A streamed image split: uint8 rows of a decoded .npy file read batch by batch, normalised on the fly.

A large image folder does not become one float32 tensor (50k ImageNet-val images at 224 px would be 30 GB):
`StreamedImages` keeps the path of its decoded uint8 array (`datasets_cache`), the rows it covers, the labels and
the normalisation, and `batches(n)` reads n rows at a time with plain file reads (a background thread reads the
next batch while the model runs on this one), moves them to the device (pinned memory on CUDA) and normalises
there: x = (pixel / 255 - mean) / std, the same float32 operations as the in-memory path, so both give the same
numbers. Peak memory is a few batches, not the split.

Example:
    >>> import numpy as np, tempfile, torch
    >>> path = tempfile.mktemp(suffix=".npy"); np.save(path, np.full((5, 1, 2, 2), 255, np.uint8))
    >>> s = StreamedImages.from_npy(path, torch.arange(5), mean=(0.5,), std=(0.5,))
    >>> [tuple(b.shape) for b in s.batches(2)], float(s.take(torch.tensor([4])).load(1).max())
    ([(2, 1, 2, 2), (2, 1, 2, 2), (1, 1, 2, 2)], 1.0)
"""
from __future__ import annotations

import ctypes
import functools
import queue
import threading
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .datasets_cache import mark_used

# float32 bytes of the slice the forward tuner holds, which bounds the batch sizes it tries: on the cpu it is host
# memory (small: the batch is what bounds a streamed evaluation's memory), on an accelerator device memory
TUNE_BYTES = {"cpu": 32 * 2 ** 20}
TUNE_BYTES_DEVICE = 2 ** 30
PREFETCH = 2  # batches read ahead
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 4 * 2 ** 20


@dataclass(frozen=True)
class StreamedImages:
    """The rows `rows` of a uint8 (N, C, H, W) .npy file, as normalised float32 batches on `device`.

    labels: int64 (len(rows),), in row order. mean / std: per channel, applied after dividing by 255.
    """

    path: str
    offset: int  # where the rows start in the file
    row_shape: tuple[int, ...]  # (C, H, W)
    rows: np.ndarray = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = torch.device("cpu")
    memory_format: torch.memory_format = torch.contiguous_format

    @classmethod
    def from_npy(cls, path, labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> "StreamedImages":
        """Every row of the uint8 .npy file at `path` (its header read, its data not)."""
        array = np.load(path, mmap_mode="r")
        if array.dtype != np.uint8 or array.ndim != 4 or len(array) != len(labels):
            raise ValueError(f"{path}: need uint8 (N, C, H, W) with one label per row; got {array.dtype} "
                             f"{array.shape} and {len(labels)} labels")
        return cls(str(path), int(array.offset), tuple(array.shape[1:]), np.arange(len(array)), labels, tuple(mean),
                   tuple(std))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    @property
    def tune_samples(self) -> int:
        """How many samples the forward tuner reads (`load`): at most TUNE_BYTES of float32, at least one."""
        budget = TUNE_BYTES.get(self.device.type, TUNE_BYTES_DEVICE)
        return max(1, min(len(self), budget // (4 * int(np.prod(self.row_shape)))))

    def take(self, idx) -> "StreamedImages":
        """The samples `idx` (positions in this split), still streamed."""
        idx = torch.as_tensor(idx).long()
        return replace(self, rows=self.rows[idx.numpy()], labels=self.labels[idx])

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.contiguous_format
           ) -> "StreamedImages":
        """The same split delivered on `device` in `memory_format`."""
        return replace(self, device=torch.device(device), memory_format=memory_format)

    def read(self, start: int, stop: int, into: np.ndarray | None = None) -> np.ndarray:
        """uint8 (stop - start, C, H, W) of samples [start, stop), read with plain file reads (nothing mapped).

        into: a uint8 buffer of at least (stop - start) x C*H*W bytes to read into (reused across batches).
        """
        rows = self.rows[start:stop]
        row_bytes = int(np.prod(self.row_shape))
        out = np.empty((len(rows), row_bytes), dtype=np.uint8) if into is None else into[:len(rows)]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
        with open(self.path, "rb", buffering=0) as f:
            for run in np.split(np.arange(len(rows)), breaks):
                if len(run):
                    f.seek(self.offset + int(rows[run[0]]) * row_bytes)
                    f.readinto(memoryview(out[run[0]:run[-1] + 1]).cast("B"))
        return out.reshape(len(rows), *self.row_shape)

    def _normalised(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, device=self.device).view(shape)
        std = torch.tensor(self.std, device=self.device).view(shape)
        # one float32 tensor, already in the layout the model runs in: converted, then normalised in place
        out = torch.empty(x.shape, dtype=torch.float32, device=self.device, memory_format=self.memory_format)
        return out.copy_(x).div_(255.0).sub_(mean).div_(std)

    def load(self, n: int) -> torch.Tensor:
        """The first n samples as one normalised tensor on the device (for checks and tuning: keep n small)."""
        return self._normalised(self.read(0, n))

    def batches(self, batch_size: int):
        """Normalised float32 batches (B, C, H, W) on the device, in order; the next batch is read meanwhile.

        The reader thread fills a ring of PREFETCH + 2 uint8 buffers allocated once: a buffer is reused only
        after the batch it held was normalised (the queue holds PREFETCH), and memory stays flat however long
        the split (fresh buffers per batch let the allocator's heap grow with the number of batches).
        """
        mark_used(self.path)
        _fix_mmap_threshold()
        starts = range(0, len(self), batch_size)
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        ring = [np.empty((min(batch_size, len(self)), int(np.prod(self.row_shape))), dtype=np.uint8)
                for _ in range(PREFETCH + 2)]

        def reader() -> None:
            try:
                for i, start in enumerate(starts):
                    if stop.is_set():
                        return
                    ready.put(self.read(start, start + batch_size, into=ring[i % len(ring)]))
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
                ready.put(err)

        thread = threading.Thread(target=reader, name="stream-reader", daemon=True)
        thread.start()
        try:
            for _ in starts:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield self._normalised(item)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a reader waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.01)


@functools.cache
def _fix_mmap_threshold() -> None:
    """Have glibc serve every allocation of MMAP_THRESHOLD bytes or more with its own mapping, returned on free.

    A streamed pass allocates a float32 batch (tens of MB) per step; glibc's default raises its mmap threshold as
    such blocks are freed (up to 32 MiB), after which they come from the heap, which then grew by hundreds of MB
    to GBs over a long split (measured: 20,000 224-px images, 0.9 GB with the threshold fixed, 3.7-4.9 GB
    without). Fixing the threshold (what MALLOC_MMAP_THRESHOLD_ does) keeps memory flat; elsewhere (not glibc)
    nothing is done.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return


def channel_stats(split: StreamedImages, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of pixel / 255 over a streamed split, read in chunks of rows."""
    channels = split.row_shape[0]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(split), chunk):
        x = split.read(start, start + chunk).astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares - count * mean * mean) / max(count - 1, 1)
    return (tuple(round(float(m), 6) for m in mean),
            tuple(max(round(float(np.sqrt(max(v, 0.0))), 6), 1e-6) for v in var))
