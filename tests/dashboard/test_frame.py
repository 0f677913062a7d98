"""The frame: every page loads, the sidebar reads the URL, bad uploads show one error while the app lives on,
uploaded files leave no trace on disk, and a session's uploads are capped."""
import io
import os
import re

import pytest
import torch
from safetensors.torch import save as save_safetensors

from dashboard import frame, uploads
from tests.core.byo_model import tiny_mlp

PAGES = ("explore", "sweep", "layers", "runs", "learn")
BYO_FACTORY = "tests.core.byo_model:tiny_mlp"


def test_every_page_loads_without_exception(make_app, no_exception):
    at = make_app()
    no_exception(at)
    assert at.title[0].value == "Explore"  # the default page
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        no_exception(at)
        assert at.title, f"{page} drew no title"


def test_sidebar_reads_the_url_and_stores_a_plain_selection(make_app, no_exception):
    at = make_app(limit="200", device="cpu")
    no_exception(at)
    assert at.selectbox(key="model").value == "digits-cnn"
    assert at.selectbox(key="dataset").value == "digits"
    assert at.number_input(key="limit").value == 200
    stored = at.session_state["selection"]
    assert stored == {"model": "digits-cnn", "dataset": "digits", "device": "cpu", "limit": 200, "factory": None,
                      "weights_id": None, "num_classes": None, "transform": "auto", "task": None}
    assert any("Running on **cpu**" in c.value for c in at.sidebar.caption)
    (summary,) = [c.value for c in at.sidebar.caption if c.value.startswith("fp32 accuracy:")]
    # how many samples, from where (a package name, never a server path) and how long one pass took
    assert re.fullmatch(r"fp32 accuracy: \*\*\d+\.\d\d %\*\* on 200 test samples from scikit-learn "
                        r"load_digits · one evaluation pass \d+ ms \(measured\)", summary), summary


def test_unknown_url_values_fall_back_to_defaults(make_app, no_exception):
    at = make_app(model="no-such-model", dataset="nope")
    no_exception(at)
    assert at.selectbox(key="model").value == frame.DEFAULT_MODEL


def test_cuda_request_without_a_gpu_falls_back_to_cpu(make_app, no_exception):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    at = make_app(device="cuda")
    no_exception(at)
    assert any("not available" in w.value for w in at.sidebar.warning)
    assert at.session_state["selection"]["device"] == "cpu"


@pytest.fixture(autouse=True)
def _allow_test_factories(monkeypatch):
    """The operator setting that lets the dashboard load factories from our tests package."""
    monkeypatch.setenv("COMPRESSION_EXPLORER_ALLOWED_FACTORIES", "tests.core")


def _bring_your_own(at, filename: str, data: bytes):
    at.selectbox(key="model").set_value(frame.CUSTOM).run()
    at.text_input(key="factory").input(BYO_FACTORY).run()
    at.button(key="load_model").click().run()
    at.file_uploader(key="weights").set_value((filename, data, "application/octet-stream")).run()
    return at


def _state_dict_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return save_safetensors({k: v.contiguous() for k, v in tiny_mlp().state_dict().items()})


def test_bring_your_own_model_offers_only_compatible_datasets(make_app, no_exception, metric_value):
    at = _bring_your_own(make_app(), "tiny.safetensors", _state_dict_bytes())
    no_exception(at)
    assert not at.error
    assert at.selectbox(key="dataset").options == ["digits"]  # 64 inputs: only 8x8 digits fits
    selection = at.session_state["selection"]
    assert selection["model"] == BYO_FACTORY and selection["factory"] == BYO_FACTORY
    assert selection["weights_id"].endswith(".safetensors") and len(selection["weights_id"]) == 24 + 12
    assert metric_value(at, "Accuracy").endswith("%")


def test_random_bytes_upload_shows_one_error_and_the_app_stays_usable(make_app, no_exception):
    at = _bring_your_own(make_app(), "garbage.pt", os.urandom(4096))
    no_exception(at)
    assert len(at.error) == 1
    assert "garbage.pt" in at.error[0].value and "corrupt" in at.error[0].value  # named as the user knows it
    assert "\n" not in at.error[0].value
    assert at.session_state["selection"] is None
    at.selectbox(key="model").set_value("digits-cnn").run()  # still usable: back to a built-in
    no_exception(at)
    assert not at.error and at.session_state["selection"]["model"] == "digits-cnn"


class _RunsCode:
    """Unpickling this calls os.makedirs(path): a stand-in for a pickle that runs code on load."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_malicious_pickle_is_refused_without_running_it(make_app, no_exception, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"fc.weight": _RunsCode(str(marker))}, buffer)
    at = _bring_your_own(make_app(), "evil.pt", buffer.getvalue())
    no_exception(at)
    assert len(at.error) == 1
    assert "evil.pt" in at.error[0].value and "could run code" in at.error[0].value
    assert not marker.exists()
    assert at.session_state["selection"] is None


@pytest.fixture
def loaded_files(monkeypatch, tmp_path):
    """Uploads go to a private folder; returns the list of (path, existed, size) load_model was given."""
    monkeypatch.setattr(uploads, "UPLOAD_DIR", tmp_path / "uploads")
    seen = []
    real = uploads.load_model

    def spy(spec, **kwargs):
        path = kwargs.get("weights")
        if path is not None:
            seen.append((path, os.path.isfile(path), os.path.getsize(path)))
        return real(spec, **kwargs)

    monkeypatch.setattr(uploads, "load_model", spy)
    return seen


def _files_under(folder) -> list:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_uploaded_weights_are_deleted_once_loaded(make_app, no_exception, metric_value, loaded_files, tmp_path):
    data = _state_dict_bytes(seed=11)  # bytes no other test uploads, so the model cache cannot answer
    at = _bring_your_own(make_app(), "mine.safetensors", data)
    no_exception(at)
    assert not at.error and metric_value(at, "Accuracy").endswith("%")
    ((path, existed, size),) = loaded_files  # loaded once, from a real file of the uploaded size
    assert existed and size == len(data)
    assert not os.path.exists(path) and _files_under(tmp_path / "uploads") == []
    at.number_input(key="limit").set_value(300).run()
    no_exception(at)
    assert len(loaded_files) == 1 and not at.error  # the cached model serves the rerun; no file reappears
    assert _files_under(tmp_path / "uploads") == []


def test_refused_pickle_is_deleted_at_once(make_app, no_exception, loaded_files, tmp_path):
    buffer = io.BytesIO()
    torch.save({"fc.weight": _RunsCode(str(tmp_path / "pwned"))}, buffer)
    at = _bring_your_own(make_app(), "evil2.pt", buffer.getvalue())
    no_exception(at)
    assert len(at.error) == 1 and "evil2.pt" in at.error[0].value and "could run code" in at.error[0].value
    assert loaded_files and all(existed for _, existed, _ in loaded_files)
    assert not any(os.path.exists(path) for path, _, _ in loaded_files)
    assert _files_under(tmp_path / "uploads") == [] and not (tmp_path / "pwned").exists()


def test_upload_quota_per_session_names_the_limit(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_UPLOADS_PER_SESSION", 2)
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES_PER_SESSION", 100)
    mine: dict = {}
    first = uploads.save_upload("a.pt", b"x" * 40, mine)
    assert uploads.save_upload("a.pt", b"x" * 40, mine) == first  # the same file again costs nothing
    with pytest.raises(uploads.ModelLoadError, match=r"c.pt \(0.0 MiB\) would take this session's uploads past"):
        uploads.save_upload("c.pt", b"y" * 61, mine)
    uploads.save_upload("b.pt", b"z" * 60, mine)
    with pytest.raises(uploads.ModelLoadError, match="has uploaded 2 weight files, the limit is 2"):
        uploads.save_upload("d.pt", b"w", mine)
    assert uploads.save_upload("d.pt", b"w", {}) != first  # another session has its own quota
    with pytest.raises(uploads.ModelLoadError, match="must end in .safetensors, .pt, .pth"):
        uploads.save_upload("notes.txt", b"w", {})
