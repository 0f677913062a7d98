"""Scale: a sweep over an image folder of JPEGs against the forward floor and a do-it-yourself loop; peak memory.

Parts (JSON on stdout; progress on stderr):
  a  torchvision resnet18 (random init, 10 classes) on a generated ImageFolder of --n-images-a JPEGs of mixed
     sizes (default 1,000), --transform imagenet, 6 configs (int8 / int4 / int2 x 0 / 50 % magnitude):
     per-config cost once the decode cache is warm (compress + evaluate, wall time) / the forward floor (the
     compressed model's forward on already-decoded tensors, same batch and layout)   — target <= 1.15
     (also eval_over_floor: the evaluation alone, i.e. what streaming the data costs);
     the do-it-yourself loop (torchvision ImageFolder + DataLoader(num_workers=2) + prune / fake-quant per config)
     / ours                                                                          — target >= 1.5.
  b  peak RSS of a process evaluating --n-images generated 224-px images (default 20,000) with resnet18 (one
     int8 config, the decode included; --rss-model small: a one-conv net, the data path's own memory)
                                                                                   — target <= 2.5 GB.
  fastpath  why small folders stay in memory: per-config evaluation of lenet5 on --n-images-fast 28-px PNGs
     held as tensors vs streamed from the decoded file.

Usage: .venv/bin/python benchmarks/scale.py [--parts a,b,fastpath] [--n-images-a 1000] [--n-images 20000]
       [--device auto] [--workdir DIR]   (a quick run: --n-images-a 200 --n-images 2000)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sweep_speed's do-it-yourself compression
from sweep_speed import diy_compress, sync, time_forwards  # noqa: E402

from compression_core import datasets as ds  # noqa: E402
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec  # noqa: E402
from compression_core.datasets import load_dataset  # noqa: E402
from compression_core.experiment import Experiment  # noqa: E402
from compression_core.models import load_model  # noqa: E402

CONFIGS = [CompressionConfig(quant=QuantSpec(bits=b), prune=PruneSpec(sparsity=s)) for b in (8, 4, 2) for s in (0, .5)]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_jpegs(root: Path, n: int, classes: int = 10, sizes=((180, 240), (400, 300), (256, 256), (500, 375)),
                seed: int = 0) -> None:
    """n JPEGs in `classes` class folders, of mixed sizes: smooth random images (small files, realistic decode)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)]
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        small.resize((w, h), Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)


def part_a(work: Path, n: int, device: str) -> dict:
    import torchvision
    from torchvision import transforms

    folder = work / f"a{n}"
    if not folder.exists():
        write_jpegs(folder, n)
    t0 = time.perf_counter()
    data = load_dataset(f"imagefolder:{folder}", transform="imagenet")
    decode_s = time.perf_counter() - t0
    loaded = _resnet18()
    exp = Experiment(loaded, data, device=device)
    exp.baseline  # the fp32 reference, kernels warm
    per_config, records = [], []
    for config in CONFIGS:
        sync(exp.device)
        t0 = time.perf_counter()
        records.append(exp.run(config))
        sync(exp.device)
        per_config.append(time.perf_counter() - t0)
    log(f"a: ours {sum(per_config):.1f}s for {len(CONFIGS)} configs")
    x = exp.x.load(len(exp.x)) if exp.streamed else exp.x  # the decoded split as one tensor: the floor's input
    compressed = [exp.compress(c).model for c in CONFIGS]
    floor_s = time_forwards(compressed, x, exp.batch_size, exp.device)
    del x, compressed
    log(f"a: floor {floor_s:.1f}s")
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(folder), tf), batch_size=64,
                                         num_workers=2, pin_memory=exp.device.type == "cuda")
    pristine = loaded.model.to(exp.device)
    sync(exp.device)
    t0 = time.perf_counter()
    for config in CONFIGS:
        m = diy_compress(pristine, config.quant.bits, config.prune.sparsity)
        with torch.no_grad():
            for xb, _ in loader:
                m(xb.to(exp.device))
    sync(exp.device)
    diy_s = time.perf_counter() - t0
    log(f"a: do-it-yourself {diy_s:.1f}s")
    ours, evals = sum(per_config), sum(r["eval_seconds"] for r in records)
    return {"n_images": n, "device": str(exp.device), "threads": torch.get_num_threads(), "streamed": exp.streamed,
            "batch_size": exp.batch_size, "memory_format": str(exp.memory_format), "configs": len(CONFIGS),
            "cold_decode_seconds": round(decode_s, 2), "ours_seconds": round(ours, 2),
            "ours_per_config_seconds": [round(s, 2) for s in per_config], "floor_seconds": round(floor_s, 2),
            "ours_eval_seconds": round(evals, 2), "ours_compress_seconds": round(
                sum(r["compress_seconds"] for r in records), 2),
            "diy_seconds": round(diy_s, 2), "cost_over_floor": round(ours / floor_s, 3),
            "eval_over_floor": round(evals / floor_s, 3),
            "diy_over_ours": round(diy_s / ours, 3)}


def _resnet18():
    from compression_core.models.loading import LoadedModel, build_architecture
    from compression_core.models.weights import state_fingerprint

    source = {"kind": "torchvision", "name": "resnet18", "num_classes": 10}
    model = build_architecture(source)  # random init (seeded): timing only
    return LoadedModel(model=model, name="torchvision:resnet18", dataset=None,
                       fingerprint=state_fingerprint(model.state_dict()), source=source)


RSS_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from scale import _resnet18
from compression_core import CompressionConfig, Experiment, QuantSpec, load_dataset, load_model
t0 = time.perf_counter()
data = load_dataset(sys.argv[1], transform="imagenet")
model = _resnet18() if sys.argv[4] == "resnet18" else load_model("tests.core.byo_model:strided_cnn_rgb")
exp = Experiment(model, data, device=sys.argv[2])
record = exp.run(CompressionConfig(quant=QuantSpec(bits=8)))
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "n_samples": record["n_samples"], "streamed": exp.streamed, "batch_size": exp.batch_size,
                  "seconds": round(time.perf_counter() - t0, 1)}))
"""


def part_b(work: Path, n: int, device: str, model: str) -> dict:
    folder = work / f"b{n}"
    if not folder.exists():
        write_jpegs(folder, n, sizes=((224, 224),))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", RSS_CHILD, f"imagefolder:{folder}", device,
                          str(Path(__file__).resolve().parent), model], env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    out = json.loads(run.stdout)
    out["peak_rss_gb"] = round(out["peak_rss_bytes"] / 1e9, 3)
    out["model"] = model
    out["float32_split_gb"] = round(n * 3 * 224 * 224 * 4 / 1e9, 2)
    return out


def part_fastpath(work: Path, n: int) -> dict:
    from PIL import Image

    folder = work / f"fast{n}"
    if not folder.exists():
        x, y = load_dataset("mnist").split("test")
        pixels = (x[:n, 0] * 0.3081 + 0.1307).mul(255).round().to(torch.uint8).numpy()
        for i, (image, label) in enumerate(zip(pixels, y[:n].tolist())):
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "L").save(folder / str(label) / f"{i:05d}.png")
    seconds = {}
    for mode, limit in (("in_memory", 2 ** 40), ("streamed", 0)):
        ds._load_cached.cache_clear()
        ds.IN_MEMORY_MAX_BYTES = limit
        exp = Experiment(load_model("lenet5"), load_dataset(f"imagefolder:{folder}", transform="gray28"),
                         device="cpu")
        exp.baseline
        seconds[mode] = min(exp.run(CONFIGS[2])["eval_seconds"] for _ in range(3))
    return {"n_images": n, "eval_seconds_in_memory": round(seconds["in_memory"], 4),
            "eval_seconds_streamed": round(seconds["streamed"], 4),
            "streamed_over_in_memory": round(seconds["streamed"] / seconds["in_memory"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,fastpath")
    ap.add_argument("--n-images-a", type=int, default=1000)
    ap.add_argument("--n-images", type=int, default=20000)
    ap.add_argument("--n-images-fast", type=int, default=10000)
    ap.add_argument("--rss-model", choices=("resnet18", "small"), default="resnet18",
                    help="part b's model: resnet18, or a one-conv net (tests.core.byo_model:strided_cnn_rgb) that "
                         "shows the data path's own memory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default=None, help="where generated folders are kept (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("COMPRESSION_EXPLORER_DECODED", str(work / "decoded"))
    parts = args.parts.split(",")
    out = {"torch": torch.__version__, "cpus": os.cpu_count()}
    if "a" in parts:
        out["a"] = part_a(work, args.n_images_a, args.device)
    if "b" in parts:
        out["b"] = part_b(work, args.n_images, args.device, args.rss_model)
    if "fastpath" in parts:
        out["fastpath"] = part_fastpath(work, args.n_images_fast)
    out["parent_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
