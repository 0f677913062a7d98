"""Packaging: the public API at the package top, the README's library example, and a wheel that installs into a
fresh venv and runs from another directory with the checkpoints it ships."""
from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import compression_core
from compression_core import _version
from tests.app_process import running_app

ROOT = Path(__file__).resolve().parents[1]
API = ["compress", "evaluate", "Experiment", "sweep", "expand_grid", "export", "load_exported", "size_report",
       "load_model", "load_dataset", "Store", "CompressionConfig", "QuantSpec", "PruneSpec", "LayerOverride",
       "pareto_front", "layer_sensitivity", "__version__"]


def requirement_pins() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# ---- fast: the API, the README example, the settings ---------------------------------------------------------

def test_public_api_is_functions_not_submodules():
    # compress / evaluate / export / sweep are also submodule names: importing those submodules must not replace
    # the functions at the package top
    import compression_core.compress
    import compression_core.evaluate  # noqa: F401

    assert set(API) <= set(compression_core.__all__) <= set(dir(compression_core))
    for name in ["compress", "evaluate", "sweep", "expand_grid", "export", "load_exported", "size_report",
                 "load_model", "load_dataset", "pareto_front", "layer_sensitivity"]:
        value = getattr(compression_core, name)
        assert callable(value) and value.__module__.startswith("compression_core."), name
        assert value.__doc__, name
    assert compression_core.__version__ == _version.__version__ == "0.3.0"
    assert "Experiment" in compression_core.__doc__ and ">>>" in compression_core.__doc__


def test_readme_library_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_EXPLORER_STORE", str(tmp_path / "runs.sqlite"))
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```pycon\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "README has one `pycon` example (Use it as a library)"
    test = doctest.DocTestParser().get_doctest(blocks[0], {}, "README", "README.md", 0)
    assert len(test.examples) >= 5
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert (tmp_path / "runs.sqlite").is_file()  # Store() is the default store, here a private one


def test_streamlit_settings_have_one_source():
    # a checkout's `streamlit run` reads .streamlit/config.toml, the installed launcher the packaged copy
    assert (ROOT / ".streamlit" / "config.toml").read_bytes() == (ROOT / "dashboard" / "streamlit.toml").read_bytes()


def test_launcher_command_binds_loopback_and_forwards_arguments():
    from dashboard.launch import command, settings

    cmd = command(["--server.address", "0.0.0.0", "--", "x"])
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and Path(cmd[4]) == ROOT / "dashboard" / "server.py"
    flags = dict(zip(cmd[5:-4:2], cmd[6:-4:2]))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--runner.enforceSerializableSessionState"] == "true" and flags["--server.maxUploadSize"] == "200"
    assert len(flags) == len(settings())
    assert cmd[-4:] == ["--server.address", "0.0.0.0", "--", "x"]  # the caller's flags come last and win


def test_streamlit_runs_the_launcher_target_as_an_asgi_app():
    # `streamlit run` serves an `st.App` only when it finds one by reading the file; otherwise it would run
    # server.py as a page script, an empty app
    from streamlit.web.server.app_discovery import discover_asgi_app

    from dashboard.launch import command

    found = discover_asgi_app(Path(command([])[4]))
    assert found.is_asgi_app and found.app_name == "app"


def test_version_flag():
    r = subprocess.run([sys.executable, "-m", "compression_core", "--version"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == f"compression-explorer {_version.__version__}"


# ---- slow: build the wheel, install it into a throwaway venv, run it elsewhere --------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build from a copy of what the wheel is made of, so the checkout gets no build/ or *.egg-info."""
    src = tmp_path_factory.mktemp("src")
    for name in ["pyproject.toml", "requirements.txt", "README.md", "LICENSE"]:
        shutil.copy2(ROOT / name, src / name)
    for package in ["compression_core", "dashboard"]:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = out.glob("compression_explorer-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; torch & co. come from this interpreter's site-packages via a
    .pth file (appended after the venv's own site-packages, so the wheel's modules win over any checkout)."""
    prefix = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, timeout=300)
    python = prefix / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "host_packages.pth").write_text("".join(f"{p}\n" for p in sorted(host)))
    # --ignore-installed: an editable install of this project in the host environment is not ours to replace
    r = subprocess.run([str(prefix / "bin" / "pip"), "install", "--no-deps", "--no-index", "--ignore-installed",
                        "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return prefix


def _run(venv: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COMPRESSION_EXPLORER_STORE"] = str(cwd / "store.sqlite")
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    manifest = json.loads((ROOT / "compression_core" / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    assert set(manifest) == {p.name for p in (ROOT / "compression_core" / "checkpoints").glob("*.safetensors")}
    shipped = {f"compression_core/checkpoints/{f}" for f in [*manifest, "manifest.json"]}
    assert shipped <= names
    assert {"dashboard/app.py", "dashboard/launch.py", "dashboard/server.py", "dashboard/icon.png",
            "dashboard/streamlit.toml", "dashboard/views/explore.py",
            "compression_core/__main__.py", "compression_core/models/loading.py",
            "compression_core/texts/sentences.txt", "compression_core/texts/SOURCES.md", "dashboard/views/lessons.py",
            "dashboard/precomputed/lenet5-mnist-1000-classify-cpu.json"} <= names
    assert not any(n.startswith(("tests/", "assets/", "benchmarks/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata and "Requires-Python: >=3.11" in metadata
    assert f"Version: {_version.__version__}" in metadata
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    assert requires == requirement_pins()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"onnx", "torchao", "pruning", "hf", "ray", "test", "all"} == set(extras)
    assert "compression-explorer = compression_core.cli:main" in entry_points
    assert "compression-explorer-app = dashboard.launch:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_from_another_directory(venv, tmp_path):
    r = _run(venv, tmp_path, "python", "-c", "import compression_core, dashboard, compression_core.models as m; "
             "print(compression_core.__file__); print(dashboard.__file__); print(m.CHECKPOINT_DIR)")
    assert r.returncode == 0, r.stderr
    core, dash, checkpoints = map(Path, r.stdout.split())
    for path in (core, dash, checkpoints):
        assert path.is_relative_to(venv) and not path.is_relative_to(ROOT)
    assert checkpoints == core.parent / "checkpoints"

    r = _run(venv, tmp_path, "compression-explorer", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"compression-explorer {_version.__version__}"

    r = _run(venv, tmp_path, "compression-explorer", "models", "--json")
    assert r.returncode == 0, r.stderr
    models = {m["name"]: m for m in json.loads(r.stdout)}
    assert set(models) == {"lenet300", "lenet5", "digits-cnn", "mnist1d-mlp", "mnist1d-cnn", "resnet20", "mobilenet-s",
                           "vit-tiny", "all-minilm-l6-v2"}  # the pretrained one is listed, installed or not
    assert models["all-minilm-l6-v2"]["kind"] == "embedding" and models["lenet5"]["kind"] == "classifier"
    assert models["lenet5"]["datasets"] == ["mnist", "fashion-mnist"]
    assert models["digits-cnn"]["accuracy"]["digits"] > 0.97  # read from the installed manifest

    r = _run(venv, tmp_path, "compression-explorer", "evaluate", "--model", "digits-cnn", "--dataset", "digits",
             "--limit", "100", "--device", "cpu", "--bits", "8", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["n_samples"] == 100 and record["accuracy"] >= 0.95

    r = _run(venv, tmp_path, "compression-explorer", "evaluate", "--model", "nope", "--json")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model 'nope'") and len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_installed_app_renders_its_pages(venv, tmp_path):
    # the views ship as package data beside the installed app.py, which imports the installed packages
    script = ("import dashboard, pathlib; from streamlit.testing.v1 import AppTest\n"
              "at = AppTest.from_file(str(pathlib.Path(dashboard.__file__).parent / 'app.py'), default_timeout=120)\n"
              "at.query_params = {'model': 'digits-cnn', 'dataset': 'digits'}\n"
              "at.run()\n"
              "at.switch_page('views/layers.py').run()\n"
              "print(len(at.exception), at.title[0].value if at.title else None)\n")
    r = _run(venv, tmp_path, "python", "-c", script)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["0", "Layers"], r.stdout  # no exception, the Layers page rendered


@pytest.mark.slow
def test_installed_app_starts_on_loopback(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = tmp_path / "app.log"
    with running_app([str(venv / "bin" / "compression-explorer-app")], cwd=tmp_path, env=env, log=log,
                     timeout_s=120) as (url, proc):
        assert f"URL: {url}" in log.read_text()  # served on 127.0.0.1 (running_app's url), and says so
        # the launcher became the server (exec), so terminating it leaves no orphaned Streamlit behind
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline.exists():
            assert b"streamlit" in cmdline.read_bytes().split(b"\0")
