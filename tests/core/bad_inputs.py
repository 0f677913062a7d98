"""The CLI bad-input matrix: every case must exit 2 with one `error:` line, no traceback, the store untouched.

Shared by tests/core/test_bad_inputs.py and benchmarks/robustness.py. `make_files(folder)` writes the hostile
files the cases name ({store}, {loop}, {rgb32} ...); `BadInput.argv(files)` fills them in.
"""
from __future__ import annotations

import sqlite3
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ("--model", "digits-cnn", "--dataset", "digits", "--limit", "50")
BYO = ("--model", "tests.core.byo_model:tiny_mlp", "--dataset", "digits", "--limit", "50")
STORE_COMMANDS = ("evaluate", "sweep", "sensitivity", "export")
LONG = "a" * 5000


@dataclass(frozen=True)
class BadInput:
    """One bad command line. says: a fragment the error line must contain (lower case), or None.

    in_process False: the case would end the test process if the refusal regressed (os:abort), so it is run only
    in a subprocess.
    """

    id: str
    args: tuple[str, ...]
    says: str | None = None
    in_process: bool = True

    def argv(self, files: dict[str, str]) -> list[str]:
        argv = [a.format(**files) for a in self.args]
        if argv and argv[0] in STORE_COMMANDS and "--store" not in argv:
            argv += ["--store", files["store"]]
        return argv


def case(id_: str, *args: str, says: str | None = None, in_process: bool = True) -> BadInput:
    return BadInput(id_, args, says, in_process)


def _config_cases() -> list[BadInput]:
    flag_values = [
        ("bits", "0"), ("bits", "9"), ("bits", "abc"), ("bits", ""), ("bits", "4,abc"), ("bits", "-4"),
        ("bits", "4.5"), ("quantizer", "foo"), ("scheme", "diag"), ("granularity", "row"), ("range", "max"),
        ("act-bits", "1"), ("act-bits", "33"), ("sparsity", "1"), ("sparsity", "-0.1"), ("sparsity", "nan"),
        ("sparsity", "inf"), ("sparsity", "0.5x"), ("prune", "foo"), ("scope", "world"), ("index-bits", "0"),
        ("index-bits", "17"), ("finetune-steps", "-1"), ("finetune-steps", "1.5"), ("finetune-steps", "100001"),
        ("seed", "abc"), ("seed", "-1"), ("seed", "99999999999999999999999"),
    ]
    cases = [case(f"{flag}={value or 'empty'}", "evaluate", *DIGITS, f"--{flag}={value}", says=flag.split("-")[0])
             for flag, value in flag_values]
    cases += [case(f"percentile={v}", "evaluate", *DIGITS, "--bits", "4", "--range", "percentile",
                   f"--percentile={v}", says="percentile") for v in ("50", "101", "nan", "abc", "")]
    nm = [("4:2", "n:m"), ("2", "n:m"), ("a:b", "n:m"), ("0:4", "n:m"), ("2:128", "n:m"), ("2:4:8", "n:m")]
    cases += [case(f"nm={v}", "evaluate", *DIGITS, "--prune", "nm", f"--nm={v}", says=s) for v, s in nm]
    layers = [("conv1", "name:key=value"), (":bits=4", "name:key=value"), ("conv1:bits=abc", "1-8, 16 or 32"),
              ("conv1:bits=9", "bits"), ("conv1:color=red", "allowed: bits"), ("conv1:sparsity=2", "sparsity"),
              ("conv1:sparsity=abc", "[0, 1)"), ("conv1:nm=4:2", "n:m"), ("conv1:nm=x", "n:m"),
              ("conv1:quantizer=foo", "quantizer"), ("conv1:skip=maybe", "yes/no"), ("nosuch:bits=4", "conv1, conv2"),
              ("conv1:scope=world", "scope")]
    cases += [case(f"layer={v}", "evaluate", *DIGITS, f"--layer={v}", says=s) for v, s in layers]
    cases += [
        case("layer-twice", "evaluate", *DIGITS, "--layer", "conv1:bits=4", "--layer", "conv1:bits=8",
             says="more than once"),
        case("nm-with-sparsity", "evaluate", *DIGITS, "--prune", "nm", "--sparsity", "0.5", says="no effect"),
        case("nm-with-zero-sparsity", "sweep", *DIGITS, "--prune", "nm", "--sparsity", "0", says="sets its own"),
        case("percentile-without-range", "evaluate", *DIGITS, "--bits", "4", "--percentile", "99",
             says="only applies to --range percentile"),
        case("nm-without-prune-nm", "evaluate", *DIGITS, "--nm", "1:4", says="only applies to --prune nm"),
        case("evaluate-lists", "evaluate", *DIGITS, "--bits", "4,8", says="use sweep"),
        case("export-lists", "export", *DIGITS, "--bits", "4,8", "--out", "{tmp}/m.cex", says="use sweep"),
    ]
    return cases


def _input_cases() -> list[BadInput]:
    return [
        case("no-arguments"), case("unknown-command", "frobnicate", says="invalid choice"),
        case("no-model", "evaluate", "--dataset", "digits", says="--model"),
        case("unknown-flag", "evaluate", *DIGITS, "--colour", "red", says="--colour"),
        case("limit-0", "evaluate", *DIGITS, "--limit", "0", says="--limit"),
        case("limit-negative", "evaluate", *DIGITS, "--limit", "-5", says="--limit"),
        case("limit-text", "evaluate", *DIGITS, "--limit", "ten", says="--limit"),
        case("split-val", "evaluate", *DIGITS, "--split", "val", says="split"),
        case("split-empty", "evaluate", *DIGITS, "--split", "", says="split"),
        case("device-tpu", "evaluate", *DIGITS, "--device", "tpu", says="auto, cpu"),
        case("device-index", "evaluate", *DIGITS, "--device", "cuda:99", says="auto, cpu"),
        case("num-classes-0", "evaluate", *DIGITS, "--num-classes", "0", says="--num-classes"),
        case("num-classes-text", "evaluate", *DIGITS, "--num-classes", "ten", says="--num-classes"),
        case("num-classes-vs-checkpoint", "evaluate", *DIGITS, "--num-classes", "5", says="10 classes"),
        case("model-unknown", "evaluate", "--model", "no-such-model", says="lenet5"),
        case("model-empty", "evaluate", "--model", "", "--dataset", "digits", says="model"),
        case("model-colon", "evaluate", "--model", ":", "--dataset", "digits", says="package.module:function"),
        case("model-newline", "evaluate", "--model", "digits\ncnn", "--dataset", "digits", says="digits\\ncnn"),
        case("torchvision-unknown", "evaluate", "--model", "torchvision:nosuch", "--dataset", "digits",
             "--weights", "{good}", says="nosuch"),
        case("torchvision-no-weights", "evaluate", "--model", "torchvision:resnet18", "--dataset", "digits",
             says="weights"),
        case("factory-missing-attr", "evaluate", "--model", "tests.core.byo_model:nosuch", "--dataset", "digits",
             says="nosuch"),
        case("factory-missing-module", "evaluate", "--model", "no_such_pkg_xyz:f", "--dataset", "digits",
             says="no_such_pkg_xyz"),
        case("factory-not-module", "evaluate", "--model", "tests.core.bad_models:not_a_module", "--dataset",
             "digits", says="nn.module"),
        case("factory-raises", "evaluate", "--model", "tests.core.bad_models:raises", "--dataset", "digits",
             says="broken"),
        case("factory-needs-argument", "evaluate", "--model", "tests.core.bad_models:needs_an_argument",
             "--dataset", "digits", says="failed"),
        case("model-identity", "evaluate", "--model", "torch.nn:Identity", "--dataset", "digits",
             says="no linear/conv layer"),
        case("model-flatten", "evaluate", "--model", "torch.nn:Flatten", "--dataset", "digits",
             says="no linear/conv layer"),
        case("forward-shape", "evaluate", "--model", "tests.core.bad_models:wants_784_features", "--dataset",
             "digits", says="784 input features"),
        case("forward-channels", "evaluate", "--model", "tests.core.bad_models:wants_3_channels", "--dataset",
             "digits", says="3 input channels"),
        case("forward-raises", "evaluate", "--model", "tests.core.bad_models:forward_raises", "--dataset",
             "digits", says="forward crashed"),
        case("output-tuple", "evaluate", "--model", "tests.core.bad_models:tuple_output", "--dataset", "digits",
             says="tuple"),
        case("output-one", "evaluate", "--model", "tests.core.bad_models:one_output", "--dataset", "digits",
             says="outputs 1 classes"),
        case("output-scalar", "evaluate", "--model", "tests.core.bad_models:scalar_output", "--dataset", "digits",
             says="shape ()"),
        case("weights-5-classes", "evaluate", *BYO, "--weights", "{five}", "--num-classes", "5",
             says="5 classes"),
        case("weights-missing", "evaluate", *BYO, "--weights", "{tmp}/nope.pt", says="nope.pt"),
        case("weights-corrupt", "evaluate", *BYO, "--weights", "{corrupt}", says="corrupt"),
        case("weights-nan", "evaluate", *BYO, "--weights", "{nan}", says="nan"),
        case("weights-suffix", "evaluate", *BYO, "--weights", "{txt}", says=".safetensors"),
        case("weights-folder", "evaluate", *BYO, "--weights", "{tmp}", says="weights"),
        case("weights-wrong-keys", "evaluate", *BYO, "--weights", "{lenet5w}", says="missing keys"),
        case("weights-pickle", "evaluate", *BYO, "--weights", "{pickle}", says="could run code"),
        case("weights-long-path", "evaluate", *BYO, "--weights", f"{{tmp}}/{LONG}.pt", says="too long"),
        case("weights-nul", "evaluate", *BYO, "--weights", "{tmp}/a\0b.pt", says="a\\x00b.pt"),
        case("dataset-unknown", "evaluate", "--model", "digits-cnn", "--dataset", "cifar99", says="unknown dataset"),
        case("dataset-empty", "evaluate", "--model", "digits-cnn", "--dataset", "", says="dataset"),
        case("dataset-idx-no-path", "evaluate", "--model", "digits-cnn", "--dataset", "idx:", says="idx:path"),
        case("dataset-idx-missing", "evaluate", *BYO[:2], "--dataset", "idx:{tmp}/nope", says="does not exist"),
        case("dataset-idx-empty", "evaluate", *BYO[:2], "--dataset", "idx:{empty}", says="t10k-images"),
        case("dataset-idx-truncated", "evaluate", *BYO[:2], "--dataset", "idx:{idx_truncated}", says="truncated"),
        case("dataset-idx-is-file", "evaluate", *BYO[:2], "--dataset", "idx:{txt}", says="idx:path"),
        case("dataset-long-path", "evaluate", *BYO[:2], "--dataset", f"idx:{{tmp}}/{LONG}", says="dataset"),
        case("imagefolder-missing", "evaluate", *BYO[:2], "--dataset", "imagefolder:{tmp}/nope",
             says="does not exist"),
        case("imagefolder-symlink-loop", "evaluate", *BYO[:2], "--dataset", "imagefolder:{loop}", says="loop"),
        case("imagefolder-no-images", "evaluate", *BYO[:2], "--dataset", "imagefolder:{empty}",
             says="no readable images"),
        case("imagefolder-only-corrupt", "evaluate", *BYO[:2], "--dataset", "imagefolder:{broken_image}",
             says="1 could not be decoded"),
        case("imagefolder-mixed-sizes-none", "evaluate", *BYO[:2], "--dataset", "imagefolder:{mixed}",
             "--transform", "none", says="one size"),
        case("imagefolder-unknown-transform", "evaluate", *BYO[:2], "--dataset", "imagefolder:{mixed}",
             "--transform", "bogus", says="unknown transform 'bogus'; use one of auto, imagenet"),
        case("torchvision-unknown-class", "evaluate", *BYO[:2], "--dataset", "torchvision:ImageNet:{tmp}",
             says="'imagenet' is not supported; use one of mnist"),
        case("torchvision-missing-root", "evaluate", *BYO[:2], "--dataset", "torchvision:CIFAR10:{tmp}/nope",
             says="pass --allow-download"),
        case("torchvision-no-root", "evaluate", *BYO[:2], "--dataset", "torchvision:CIFAR10", says="class:root"),
        case("imagefolder-3-classes", "evaluate", *BYO[:2], "--dataset", "imagefolder:{grey3}",
             "--transform", "none", says="3 classes"),
        case("imagefolder-rgb-into-lenet5", "evaluate", "--model", "lenet5", "--weights", "{lenet5w}",
             "--dataset", "imagefolder:{rgb32}", "--transform", "none", says="1 input channels"),
        case("torchvision-published-offline", "evaluate", "--model", "torchvision:resnet18", "--weights", "DEFAULT",
             "--dataset", "digits", says="add --allow-download"),
        case("store-folder", "evaluate", *DIGITS, "--store", "{tmp}", says="is a folder"),
        case("store-not-sqlite", "evaluate", *DIGITS, "--store", "{not_sqlite}", says="cannot be opened"),
        case("store-long-path", "evaluate", *DIGITS, "--store", f"{{tmp}}/{LONG}.sqlite", says="too long"),
        case("store-under-a-file", "evaluate", *DIGITS, "--store", "{txt}/runs.sqlite", says="cannot be opened"),
        case("store-empty", "evaluate", *DIGITS, "--store", "", says="is a folder"),
        case("sweep-store-not-sqlite", "sweep", *DIGITS, "--bits", "4,8", "--store", "{not_sqlite}",
             says="cannot be opened"),
        case("export-out-empty", "export", *DIGITS, "--out", "", says="--out is empty"),
        case("export-out-folder", "export", *DIGITS, "--out", "{tmp}", says="is a folder"),
        case("export-out-no-parent", "export", *DIGITS, "--out", "{tmp}/nope/m.cex", says="does not exist"),
        case("export-out-long", "export", *DIGITS, "--out", f"{{tmp}}/{LONG}/m.cex", says="--out"),
        case("sensitivity-bad-layer", "sensitivity", *DIGITS, "--bits", "2", "--layer", "nosuch:bits=4",
             says="nosuch"),
        case("train-epochs-0", "train", "--model", "digits-cnn", "--epochs", "0", "--out", "{tmp}/c.safetensors",
             says="--epochs"),
        case("train-epochs-negative", "train", "--model", "digits-cnn", "--epochs", "-1", "--out",
             "{tmp}/c.safetensors", says="--epochs"),
        case("train-out-pt", "train", "--model", "digits-cnn", "--out", "{tmp}/c.pt", says=".safetensors"),
        case("train-out-empty", "train", "--model", "digits-cnn", "--out", "", says="--out"),
        case("train-not-builtin", "train", "--model", "torchvision:resnet18", "--out", "{tmp}/c.safetensors",
             says="built-in"),
        case("train-unknown-dataset", "train", "--model", "digits-cnn", "--dataset", "cifar99", "--out",
             "{tmp}/c.safetensors", says="unknown dataset"),
        case("models-extra", "models", "--bogus", says="--bogus"),
        case("datasets-extra", "datasets", "extra", says="extra"),
        # model specs name code: refused (or their failures caught) before anything runs
        case("model-relative", "evaluate", "--model", ".rel:x", "--dataset", "digits"),
        case("model-syntax-error", "evaluate", "--model", "cli_bad_syntax:f", "--dataset", "digits"),
        case("model-raises-on-import", "evaluate", "--model", "cli_raises_on_import:f", "--dataset", "digits"),
        case("model-builtins-exit", "evaluate", "--model", "builtins:exit", "--dataset", "digits"),
        case("model-os-abort", "evaluate", "--model", "os:abort", "--dataset", "digits",
             in_process=False),
    ]


CASES: list[BadInput] = _config_cases() + _input_cases()


# ---- the files the cases name ------------------------------------------------------------------------------

def _images(root: Path, classes: int, size: int, mode: str = "L", per_class: int = 2) -> Path:
    """train/ and test/ with `classes` folders of `per_class` random size x size images each."""
    from tests.core.test_datasets import _write_images

    for split in ("train", "test"):
        _write_images(root / split, {str(c): per_class for c in range(classes)}, mode, size=(size, size))
    return root


def make_files(folder: Path) -> dict[str, str]:
    """Write every file the cases name under `folder`; returns the {name} -> value map for `BadInput.argv`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.core.byo_model import tiny_mlp
    from tests.core.test_models import _RunsCode

    from compression_core.models import ARCHITECTURES

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty").mkdir(exist_ok=True)
    files = {"tmp": str(folder), "store": str(folder / "runs.sqlite"), "empty": str(folder / "empty")}
    save_file(tiny_mlp(num_classes=5).state_dict(), str(folder / "five.safetensors"))
    save_file(ARCHITECTURES["lenet5"].build(10).state_dict(), str(folder / "lenet5.safetensors"))
    good = tiny_mlp(num_classes=10).state_dict()
    save_file(good, str(folder / "good.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) for k, v in good.items()}, str(folder / "nan.safetensors"))
    torch.save({"0.weight": torch.zeros(2), "payload": _RunsCode(folder / "pwned")}, folder / "evil.pt")
    (folder / "corrupt.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (folder / "weights.txt").write_text("not weights")
    (folder / "not_sqlite.sqlite").write_text("this is not a database\n" * 20)
    idx = folder / "idx_truncated"
    idx.mkdir(exist_ok=True)
    for prefix in ("train", "t10k"):
        (idx / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 3) + b"\0")
        (idx / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"\0\0")
    loop = folder / "loop"
    for a, b in (("a", "b"), ("b", "a")):
        if not (loop / a).is_symlink():
            loop.mkdir(exist_ok=True)
            (loop / a).symlink_to(loop / b)
    mixed = _images(folder / "mixed", 2, 8)
    _images(folder / "big", 1, 9)
    (folder / "big" / "test" / "0" / "0.png").replace(mixed / "test" / "0" / "big.png")  # one 9x9 among 8x8
    broken = folder / "broken_image"
    (broken / "0").mkdir(parents=True, exist_ok=True)
    (broken / "0" / "zz.png").write_bytes(b"\x89PNG not really")
    (folder / "cli_bad_syntax.py").write_text("def f(:\n")
    (folder / "cli_raises_on_import.py").write_text("raise RuntimeError('boom on import')\n")
    files.update(five=str(folder / "five.safetensors"), lenet5w=str(folder / "lenet5.safetensors"),
                 good=str(folder / "good.safetensors"), nan=str(folder / "nan.safetensors"),
                 pickle=str(folder / "evil.pt"), corrupt=str(folder / "corrupt.pt"), txt=str(folder / "weights.txt"),
                 not_sqlite=str(folder / "not_sqlite.sqlite"), idx_truncated=str(idx), loop=str(loop / "a"),
                 mixed=str(mixed), broken_image=str(broken), grey3=str(_images(folder / "grey3", 3, 8)),
                 rgb32=str(_images(folder / "rgb32", 10, 32, "RGB", per_class=1)))
    return files


def store_state(path: str) -> tuple:
    """What must not change: a store's rows (all tables, in order), or a non-store file's bytes (None: no file).

    Rows rather than bytes: SQLite may move committed pages from the WAL into the main file at any moment.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return (None,)
    except OSError:  # a name too long to be a file
        return (None,)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return tuple(tuple(conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall())
                         for table in ("records", "runs", "run_members"))
    except sqlite3.DatabaseError:
        return (path.read_bytes(),)
