"""hf:PATH_OR_ID models on transformers' own classes (GPT-2, BERT), saved with save_pretrained as users do."""
import json
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="hf: models need transformers: pip install 'compression-explorer[hf]'")

from compression_core import compress, export, load_exported  # noqa: E402
from compression_core.compressed import compressible_layers  # noqa: E402
from compression_core.config import CompressionConfig, QuantSpec  # noqa: E402
from compression_core.export import ExportError  # noqa: E402
from compression_core.models import (HFModel, ModelLoadError, build_architecture, check_model_name,  # noqa: E402
                                     hf_builder, load_model, state_fingerprint)

from tests.core.hf_models import save_bert, save_gpt2, vocab_size  # noqa: E402

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])  # two samples, the second padded
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
GPT2_LINEARS = [f"hf.transformer.h.{i}.{m}" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + ["hf.lm_head"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    return folder, save_gpt2(folder)


def test_gpt2_is_a_causal_lm_whose_conv1d_layers_became_equal_linears(gpt2):
    folder, reference = gpt2
    loaded = load_model(f"hf:{folder}")
    assert loaded.kind == "causal-lm" and isinstance(loaded.model, HFModel) and not loaded.model.training
    assert loaded.source == {"kind": "hf", "path": str(folder.resolve()), "model_kind": "causal-lm"}
    assert loaded.tokenizer("w1 w2 cat")["input_ids"] == [6, 7, 46]  # [PAD] [UNK] [EOS] [CLS] [SEP], w0..w39, the, cat
    # GPT-2's attention / MLP are transformers Conv1D (weight (in, out)); ours are nn.Linear (weight (out, in))
    assert [name for name, _ in compressible_layers(loaded.model)] == GPT2_LINEARS
    c_attn = loaded.model.hf.transformer.h[0].attn.c_attn
    assert type(c_attn) is torch.nn.Linear and c_attn.weight.shape == (192, 64)
    assert torch.equal(c_attn.weight, reference.transformer.h[0].attn.c_attn.weight.t())
    with torch.inference_mode():
        logits = loaded.model(input_ids=IDS, attention_mask=MASK)
        expected = reference(input_ids=IDS, attention_mask=MASK).logits
    assert logits.shape == (2, 6, vocab_size())
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0)
    assert loaded.fingerprint == state_fingerprint(loaded.model.state_dict())
    assert load_model(f"hf:{folder}").fingerprint == loaded.fingerprint


def test_rebuilt_architecture_has_the_same_layers_and_export_round_trips(gpt2, tmp_path):
    folder, _ = gpt2
    loaded = load_model(f"hf:{folder}")
    rebuilt = build_architecture(loaded.source)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in loaded.model.state_dict().items()}
    cm = compress(loaded.model, CompressionConfig(quant=QuantSpec(bits=4)))
    path = tmp_path / "gpt2.cexp"
    export(cm, path, loaded.source)
    with pytest.raises(ExportError, match=r"never reads a folder a file names: pass build=models.hf_builder"):
        load_exported(path)
    model, header = load_exported(path, build=hf_builder(folder))
    assert header["source"]["kind"] == "hf"
    with torch.inference_mode():
        assert torch.equal(model(input_ids=IDS, attention_mask=MASK), cm.model(input_ids=IDS, attention_mask=MASK))


def test_bert_classifier_and_encoder_kinds(tmp_path):
    classifier = save_bert(tmp_path / "cls", classes=3)
    encoder = save_bert(tmp_path / "enc")
    loaded = load_model(f"hf:{tmp_path / 'cls'}")
    with torch.inference_mode():
        logits = loaded.model(input_ids=IDS, attention_mask=MASK)
        assert loaded.kind == "classifier" and logits.shape == (2, 3)
        assert torch.allclose(logits, classifier(input_ids=IDS, attention_mask=MASK).logits, atol=1e-5, rtol=0)
        embedded = load_model(f"hf:{tmp_path / 'enc'}")
        vectors = embedded.model(input_ids=IDS, attention_mask=MASK)
        hidden = encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert embedded.kind == "embedding" and vectors.shape == (2, 32)
    # mean over the 3 real tokens of sample 2 only (padding excluded), then unit length
    mean = hidden[1, :3].mean(dim=0)
    assert torch.allclose(vectors[1], mean / mean.norm(), atol=1e-5, rtol=0)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-6)
    assert "hf.encoder.layer.0.attention.self.query" in dict(compressible_layers(embedded.model))


def test_folder_refusals_are_one_line(tmp_path, gpt2):
    folder, _ = gpt2
    cases = []
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folder / "config.json").read_text())
    cases.append((no_weights, "has no weights: no model.safetensors; save the model with save_pretrained"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    cases.append((pickled, r"no model.safetensors \(pytorch_model.bin pickles are refused\)"))
    not_hf = tmp_path / "photos"
    not_hf.mkdir()
    (not_hf / "cat.jpg").write_bytes(b"\xff\xd8")
    cases.append((not_hf, "is not a Hugging Face model folder: no config.json"))
    bad_config = tmp_path / "badconfig"
    bad_config.mkdir()
    (bad_config / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    (bad_config / "model.safetensors").write_bytes(b"")
    cases.append((bad_config, "config.json cannot be used .*only model types built into transformers"))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((folder / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    cases.append((truncated, "transformers cannot load it as a causal-lm model"))
    cases.append((folder / "config.json", "is a file; pass the folder"))
    for path, says in cases:
        with pytest.raises(ModelLoadError, match=says) as err:
            load_model(f"hf:{path}")
        assert "\n" not in str(err.value)


def test_hub_ids_need_allow_download_and_specs_parse_without_loading(monkeypatch):
    with pytest.raises(ModelLoadError, match="^hf:openai-community/gpt2 is not a local folder; pass a folder or "
                                             "--allow-download$"):
        load_model("hf:openai-community/gpt2")
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub id"):
        load_model("hf:../no such/../thing?")
    with pytest.raises(ModelLoadError, match="cannot be used as a folder"):
        load_model("hf:" + "x" * 5000)  # longer than any file name may be
    with pytest.raises(ModelLoadError, match="hf: needs a folder or a hub id"):
        check_model_name("hf:")
    monkeypatch.setitem(sys.modules, "transformers", None)  # parsing a name imports nothing
    assert check_model_name("hf:org/name") == {"kind": "hf", "path": "org/name", "model_kind": None}


def test_weights_and_classes_are_refused_and_missing_transformers_says_how_to_install(gpt2, monkeypatch):
    folder, _ = gpt2
    with pytest.raises(ModelLoadError, match="reads its weights and classes from its own folder"):
        load_model(f"hf:{folder}", num_classes=3)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"^hf: models need the transformers package: "
                                             r"pip install 'compression-explorer\[hf\]'$"):
        load_model(f"hf:{folder}")


def test_nan_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_gpt2(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = next(k for k in state if k.endswith("mlp.c_fc.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="NaN/Inf values .*c_fc"):
        load_model(f"hf:{tmp_path}")
