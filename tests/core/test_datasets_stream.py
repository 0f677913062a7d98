"""Streamed image folders (#8.2): decoded once into .npy files, evaluated batch by batch with the in-memory numbers,
memory bounded by the batch; the decode cache's size cap."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compression_core import CompressionConfig, Experiment, QuantSpec
from compression_core import datasets as ds
from compression_core import datasets_images
from compression_core.datasets import load_dataset
from compression_core.datasets_cache import META, RowWriter, evict
from compression_core.datasets_images import read_image_folder
from compression_core.datasets_stream import StreamedImages
from compression_core.models import load_model

ROOT = Path(__file__).resolve().parents[2]


def _jpegs(root: Path, n: int, size=(64, 64), classes=2, corrupt=0, seed=0) -> None:
    """n random JPEGs of mixed sizes around `size` in `classes` class folders, plus `corrupt` broken files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = size[0] + int(rng.integers(0, 9)), size[1] + int(rng.integers(0, 9))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=85)
    for i in range(corrupt):
        (root / "c0" / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")


def _load(path, transform, streamed, monkeypatch):
    ds._load_cached.cache_clear()
    monkeypatch.setattr(ds, "IN_MEMORY_MAX_BYTES", 0 if streamed else 2 ** 40)
    try:
        return load_dataset(f"imagefolder:{path}", transform=transform)
    finally:
        ds._load_cached.cache_clear()


def test_streamed_split_gives_the_in_memory_numbers(tmp_path, monkeypatch):
    _jpegs(tmp_path / "imgs", 70, size=(40, 36), corrupt=2)
    held = _load(tmp_path / "imgs", "cifar", False, monkeypatch)
    streamed = _load(tmp_path / "imgs", "cifar", True, monkeypatch)
    x, y = held.split("test")
    s, sy = streamed.split("test")
    assert isinstance(s, StreamedImages) and isinstance(x, torch.Tensor)
    assert len(s) == 70 and torch.equal(sy, y) and streamed.info.n_skipped == held.info.n_skipped == 2
    assert torch.equal(torch.cat(list(s.batches(16))), x)  # bit for bit: the same float32 operations
    assert streamed.info.input_shape == held.info.input_shape == (3, 32, 32) and streamed.info.mean == held.info.mean
    loaded = load_model("tests.core.byo_model:tiny_mlp_rgb32", num_classes=2)
    config = CompressionConfig(quant=QuantSpec(bits=4))
    for limit in (None, 30):
        a = Experiment(loaded, held, device="cpu", limit=limit, batch_size=16)
        b = Experiment(loaded, streamed, device="cpu", limit=limit, batch_size=16)
        assert b.streamed and not a.streamed
        ra, rb = a.run(config), b.run(config)
        for field in ("correct", "agreement", "n_samples", "n_skipped", "size_bytes"):
            assert ra[field] == rb[field], field
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6)


def test_none_transform_streamed_uses_the_folders_own_statistics(tmp_path, monkeypatch):
    _jpegs(tmp_path / "imgs", 12, size=(8, 8))
    for f in (tmp_path / "imgs").rglob("*.jpg"):  # one size for `none`
        from PIL import Image
        with Image.open(f) as im:
            im.convert("RGB").resize((8, 8)).save(f)
    held = _load(tmp_path / "imgs", "none", False, monkeypatch)
    streamed = _load(tmp_path / "imgs", "none", True, monkeypatch)
    assert streamed.info.mean == pytest.approx(held.info.mean, abs=2e-6)
    assert streamed.info.std == pytest.approx(held.info.std, abs=2e-6)


def test_workers_decode_what_one_process_decodes_and_count_corrupt_files(tmp_path, monkeypatch):
    _jpegs(tmp_path / "imgs", 80, size=(30, 20), corrupt=3)
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "c1"))
    with_workers, _, skipped = read_image_folder(tmp_path / "imgs", "cifar")
    assert datasets_images.WORKERS >= 1 and 80 >= datasets_images.MIN_FILES_FOR_WORKERS
    monkeypatch.setattr(datasets_images, "MIN_FILES_FOR_WORKERS", 10 ** 9)
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "c2"))
    alone, _, skipped_alone = read_image_folder(tmp_path / "imgs", "cifar")
    assert skipped == skipped_alone == 3
    assert np.array_equal(with_workers["test"][0], alone["test"][0]) and len(alone["test"][0]) == 80
    assert np.array_equal(with_workers["test"][1], alone["test"][1])


def test_row_writer_fixes_the_header_when_rows_were_skipped(tmp_path):
    for announced in (5, 10 ** 60):  # the same header length, and a longer one (the file is rewritten)
        w = RowWriter(tmp_path / f"x{len(str(announced))}.npy", (1, 2, 2), announced)
        for i in range(3):
            w.write(np.full((1, 2, 2), i, np.uint8))
        w.close()
        back = np.load(tmp_path / f"x{len(str(announced))}.npy")
        assert back.shape == (3, 1, 2, 2) and back[:, 0, 0, 0].tolist() == [0, 1, 2]


def _fake_entry(cache: Path, name: str, n_bytes: int, used: float) -> None:
    (cache / name).mkdir(parents=True)
    (cache / name / "x_test.npy").write_bytes(b"\0" * n_bytes)
    (cache / name / META).write_text("{}")
    os.utime(cache / name / META, (used, used))


def test_evict_removes_the_oldest_used_entries_down_to_the_cap(tmp_path):
    now = time.time()
    for name, used in (("old", now - 300), ("mid", now - 200), ("new", now - 100)):
        _fake_entry(tmp_path, name, 1000, used)
    (tmp_path / "half.tmp").mkdir()  # another process building an entry: never touched
    meta = 2  # bytes of each "{}" meta file
    assert evict(tmp_path, 3 * (1000 + meta)) == []
    assert evict(tmp_path, 2 * (1000 + meta) + 10, keep="old") == ["mid"]
    assert evict(tmp_path, 0, keep="new") == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.tmp", "new"]


def test_decode_cache_respects_its_size_cap_and_a_read_marks_an_entry_used(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "cache"))
    for name in ("a", "b", "c"):
        _jpegs(tmp_path / name, 6, size=(10, 10), seed=ord(name))
    read_image_folder(tmp_path / "a", "cifar")
    time.sleep(0.02)
    read_image_folder(tmp_path / "b", "cifar")
    time.sleep(0.02)
    read_image_folder(tmp_path / "a", "cifar")  # a read: `a` is now the most recently used
    entry_bytes = sum(f.stat().st_size for f in next((tmp_path / "cache").iterdir()).iterdir())
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED_MAX_GB", str(2.5 * entry_bytes / 1e9))
    time.sleep(0.02)
    read_image_folder(tmp_path / "c", "cifar")  # three entries over a cap of two and a half: `b` goes
    opened = []
    from PIL import Image
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    read_image_folder(tmp_path / "a", "cifar")
    read_image_folder(tmp_path / "c", "cifar")
    assert opened == []  # both still cached
    read_image_folder(tmp_path / "b", "cifar")
    assert len(opened) == 6  # b was evicted: decoded again


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, torch
    from compression_core import CompressionConfig, Experiment, QuantSpec, load_dataset, load_model
    loaded = load_model("tests.core.byo_model:strided_cnn_rgb", num_classes=2)
    x = torch.zeros(1, 3, 224, 224); loaded.model(x)  # allocator and kernels warm before the baseline
    data = load_dataset(sys.argv[1], transform="imagenet")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    exp = Experiment(loaded, data, device="cpu")
    record = exp.run(CompressionConfig(quant=QuantSpec(bits=8)))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": after - before, "n": record["n_samples"], "streamed": exp.streamed,
                      "batch": exp.batch_size}))
""")


@pytest.mark.slow
def test_evaluating_a_folder_keeps_memory_bounded_by_the_batch(tmp_path):
    _jpegs(tmp_path / "imgs", 1200, size=(64, 64))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMPRESSION_EXPLORER_DECODED": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, f"imagefolder:{tmp_path / 'imgs'}"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    split_float32 = 1200 * 3 * 224 * 224 * 4  # 722 MB: what holding the split as one tensor would take
    assert out["streamed"] and out["n"] == 1200
    assert out["growth"] < 0.35 * split_float32, out  # measured ~0.2: a few batches of 55 images and the tuning
