"""Bring-your-own in the dashboard: a spec from the URL never loads without Load model, factories come only from
operator-allowed modules, standard-library callables never run, and every failure is one st.error line."""
import builtins
import os
import tempfile
import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from dashboard import frame
from dashboard.uploads import ALLOWED_FACTORIES_ENV
from tests.core.byo_model import tiny_mlp

BYO = frame.model_label(frame.CUSTOM)  # the model URL parameter holds the option's label: ?model=Bring+your+own…
MARKER_MODULE = """
    from pathlib import Path
    from torch import nn

    Path(__file__).with_name("imported.marker").touch()  # shows whether the module was imported at all

    def build(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def other(num_classes=10):
        return build(num_classes)

    def leaves(num_classes=10):
        raise SystemExit("bye")
"""


@pytest.fixture
def tripwires(monkeypatch, tmp_path):
    """Record any call of the callables a hostile URL names; the temp dir is an empty folder we can watch."""
    calls = []
    for module, name in ((os, "abort"), (os, "fork"), (tempfile, "mkdtemp"), (builtins, "exit")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield calls
    assert [p for p in temp.iterdir() if p.name.startswith("tmp")] == []


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `byo_marker` in tmp_path that leaves `imported.marker` next to itself when imported."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "byo_marker.py").write_text(textwrap.dedent(MARKER_MODULE))
    monkeypatch.delitem(__import__("sys").modules, "byo_marker", raising=False)
    return tmp_path / "imported.marker"


def _weights(state: dict | None = None) -> tuple:
    if state is None:
        torch.manual_seed(0)
        state = tiny_mlp().state_dict()
    data = save_safetensors({k: v.contiguous() for k, v in state.items()})
    return ("w.safetensors", data, "application/octet-stream")


def _one_error(at) -> str:
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert "\n" not in message and "Traceback" not in message
    return message


def _load(at, weights=None):
    at.button(key="load_model").click().run()
    at.file_uploader(key="weights").set_value(weights or _weights()).run()
    return at


@pytest.mark.parametrize("spec", ["os:abort", "tempfile:mkdtemp", "builtins:exit", "os:fork", "this:x"])
def test_url_factory_is_not_loaded_and_stdlib_never_runs_even_after_load(make_app, tripwires, capsys, spec):
    at = make_app(model=BYO, factory=spec)
    assert not at.exception and not at.error
    assert at.text_input(key="factory").value == spec
    assert any("Press **Load model**" in c.value for c in at.sidebar.caption)
    assert any(ALLOWED_FACTORIES_ENV in c.value for c in at.sidebar.caption)  # how an operator enables factories
    at.file_uploader(key="weights").set_value(_weights()).run()
    assert not at.error and at.session_state["selection"] is None  # an upload alone loads nothing
    at.button(key="load_model").click().run()
    assert "standard library" in _one_error(at)
    assert tripwires == [] and "Zen of Python" not in capsys.readouterr().out
    assert at.session_state["selection"] is None


@pytest.mark.parametrize("spec", ["os:abort", "tempfile:mkdtemp", ".rel:x"])
def test_a_refused_spec_says_so_when_load_is_pressed_even_before_an_upload(make_app, tripwires, spec):
    at = make_app(model=BYO, factory=spec)
    at.button(key="load_model").click().run()
    assert ("standard library" if spec[0] != "." else "package.module:function") in _one_error(at)
    assert not any("Upload the weights" in c.value for c in at.sidebar.caption)
    assert tripwires == [] and at.session_state["selection"] is None


def test_allowed_factory_from_the_url_loads_only_after_load_is_pressed(make_app, user_module, monkeypatch):
    monkeypatch.setenv(ALLOWED_FACTORIES_ENV, "byo_marker")
    at = make_app(model=BYO, factory="byo_marker:build")
    at.file_uploader(key="weights").set_value(_weights()).run()
    assert not user_module.exists() and at.session_state["selection"] is None
    at.button(key="load_model").click().run()
    assert not at.exception and not at.error
    assert user_module.exists() and at.session_state["selection"]["factory"] == "byo_marker:build"
    assert at.selectbox(key="dataset").options == ["digits"]
    at.text_input(key="factory").input("byo_marker:other").run()  # a new spec needs a new press
    assert at.session_state["selection"] is None
    assert any("Press **Load model**" in c.value for c in at.sidebar.caption)
    at.button(key="load_model").click().run()
    assert at.session_state["selection"]["factory"] == "byo_marker:other"


def test_factories_are_off_by_default(make_app, user_module, monkeypatch):
    monkeypatch.delenv(ALLOWED_FACTORIES_ENV, raising=False)
    at = _load(make_app(model=BYO, factory="byo_marker:build"))
    assert "not from an allowed module; allowed module prefixes: none" in _one_error(at)
    assert not user_module.exists()


@pytest.mark.parametrize("allowed, spec, says", [
    ("tests", "byo_marker:build", "allowed module prefixes: tests"),
    ("byo_marker", "byo_marker:leaves", "failed: SystemExit: bye"),
    ("byo_marker", "byo_marker:missing", "has no factory 'missing'"),
    ("byo", "byo_marker:build", "allowed module prefixes: byo"),  # prefixes match whole components
    ("my pkg", "byo_marker:build", f"{ALLOWED_FACTORIES_ENV} holds 'my pkg'"),
    ("", ".rel:x", "must look like package.module:function"),
    ("", "torchvision:nonet", "torchvision model 'nonet' cannot be built"),
])
def test_refusals_are_one_error_line_and_the_app_lives_on(make_app, user_module, monkeypatch, allowed, spec, says):
    monkeypatch.setenv(ALLOWED_FACTORIES_ENV, allowed)
    at = make_app(model=BYO, factory=spec)
    if "my pkg" in allowed:
        assert says in _one_error(at)
        return
    _load(at)
    assert says in _one_error(at)
    at.selectbox(key="model").set_value("digits-cnn").run()
    assert not at.exception and not at.error and at.session_state["selection"]["model"] == "digits-cnn"


def test_user_module_with_a_syntax_error(make_app, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "byo_broken.py").write_text("def build(:\n")
    monkeypatch.setenv(ALLOWED_FACTORIES_ENV, "byo_broken")
    at = _load(make_app(model=BYO, factory="byo_broken:build"))
    assert "cannot import 'byo_broken'" in _one_error(at) and "SyntaxError" in at.error[0].value


def test_torchvision_architecture_with_a_class_count(make_app, monkeypatch):
    monkeypatch.delenv(ALLOWED_FACTORIES_ENV, raising=False)
    torch.manual_seed(0)
    weights = _weights(torchvision.models.squeezenet1_1(num_classes=10).state_dict())
    at = _load(make_app(model=BYO, factory="torchvision:squeezenet1_1"), weights)
    assert "mis-shaped keys" in _one_error(at)  # torchvision's default head has 1000 classes
    at.number_input(key="num_classes").set_value(10).run()
    assert at.session_state["selection"] is None  # a new class count needs a new press
    at.button(key="load_model").click().run()
    assert not at.exception and not at.error  # loaded; no installed dataset is RGB, so none is offered
    assert any("No dataset for this model" in c.value for c in at.sidebar.caption)


HOSTILE_MARKDOWN = "[x](http://evil.example)"


@pytest.mark.parametrize("spec, file_name", [
    (HOSTILE_MARKDOWN, "w.safetensors"),  # the spec from the URL, echoed in the error
    ("torchvision:squeezenet1_1", f"{HOSTILE_MARKDOWN}.pt"),  # the uploaded file's name, echoed in the error
])
def test_user_text_in_an_error_is_shown_literally_not_as_markdown(make_app, monkeypatch, spec, file_name):
    monkeypatch.delenv(ALLOWED_FACTORIES_ENV, raising=False)
    at = _load(make_app(model=BYO, factory=spec), (file_name, b"not a state dict", "application/octet-stream"))
    message = _one_error(at)
    assert r"\[x\]\(http\://evil.example\)" in message  # brackets, parentheses and the URL's seam escaped
    assert HOSTILE_MARKDOWN not in message and "](" not in message.replace(r"\]\(", "")
