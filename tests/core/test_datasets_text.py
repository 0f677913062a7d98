"""Text datasets: lines and sliding-window streams with counts checked by hand, and every bad file refused."""
import pytest
import torch

pytest.importorskip("transformers", reason="text datasets are tokenized with transformers tokenizers: "
                                           "pip install 'compression-explorer[hf]'")

from compression_core.datasets import DatasetUnavailable, load_dataset  # noqa: E402
from compression_core.datasets_text import IGNORE, SENTENCES, load_text_dataset  # noqa: E402

from tests.core.hf_models import word_tokenizer  # noqa: E402

# the word tokenizer: [PAD] [UNK] [EOS] [CLS] [SEP] = 0..4, then w0..w39 = 5..44 (one token per word)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def _file(tmp_path, text, name="t.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_are_samples_padded_to_the_longest(tmp_path, tok):
    path = _file(tmp_path, "w0 w1 w2\n\n   \nw3\nw4 w5 w6 w7 w8\n")  # blank and whitespace-only lines are skipped
    data = load_text_dataset(path, tok, "lines")
    x, y = data.split("test")
    assert y is None and set(x) == {"input_ids", "attention_mask"}
    assert x["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [9, 10, 11, 12, 13]]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert x["input_ids"].dtype == x["attention_mask"].dtype == torch.int64
    info = data.info
    assert info.splits == {"test": 3} and info.num_classes == 0 and info.input_shape == (5,)
    assert info.name == f"text:{path.resolve()} [tokenizer {type(tok).__name__}, " \
                        "lines, max_length 128]"
    truncated = load_text_dataset(path, tok, "lines", max_length=2)
    assert truncated.split("test")[0]["input_ids"].tolist() == [[5, 6], [8, 0], [9, 10]]
    assert "3 lines, 2 truncated to 2 tokens" in truncated.info.source


def test_a_short_stream_by_hand(tmp_path, tok):
    # 5 tokens t0..t4, windows of 4 starting 2 apart: [t0 t1 t2 t3] scores t1..t3; [t2 t3 t4] scores t4 only
    data = load_text_dataset(_file(tmp_path, "w0 w1\nw2 w3 w4"), tok, "stream", max_length=4, stride=2)
    x, y = data.split("test")
    assert x["input_ids"].tolist() == [[5, 6, 7, 8], [7, 8, 9, 0]]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert y.tolist() == [[IGNORE, 6, 7, 8], [IGNORE, IGNORE, 9, IGNORE]]
    assert "stream, max_length 4, stride 2]" in data.info.name


@pytest.mark.parametrize("n, max_length, stride, windows", [
    (40, 8, 4, 9), (40, 8, 7, 6), (40, 8, 1, 33), (40, 64, 32, 1), (2, 8, 4, 1), (9, 8, 4, 2)])
def test_every_token_but_the_first_is_scored_exactly_once(tmp_path, tok, n, max_length, stride, windows):
    ids = list(range(5, 5 + n))  # distinct tokens: a token scored twice or never would show
    x, y = load_text_dataset(_file(tmp_path, " ".join(f"w{i}" for i in range(n))), tok, "stream",
                             max_length=max_length, stride=stride).split("test")
    assert len(y) == windows == -(-max(n - max_length, 0) // stride) + 1
    scored = y[:, 1:][y[:, 1:] != IGNORE]  # after the shift: logits[:, :-1] predict labels[:, 1:]
    assert len(scored) == n - 1 and sorted(scored.tolist()) == ids[1:]
    assert ((y != IGNORE) <= (x["attention_mask"] == 1)).all()  # never a label on padding
    labelled = y != IGNORE
    assert torch.equal(x["input_ids"][labelled], y[labelled])  # labels[:, t] is the token at t
    # window k starts at k * stride and holds up to max_length tokens; the rest of its row is padding
    assert x["attention_mask"].sum(dim=1).tolist() == [min(max_length, n - k * stride) for k in range(windows)]


def test_default_stride_is_half_the_window(tmp_path, tok):
    data = load_text_dataset(_file(tmp_path, " ".join(f"w{i}" for i in range(20))), tok, "stream", max_length=8)
    assert data.info.name.endswith("stream, max_length 8, stride 4]") and data.info.splits == {"test": 4}


@pytest.mark.parametrize("content, says", [
    (None, "does not exist or is not a file"),
    (b"", "is empty: it has no non-empty line"),
    (b"\n  \n\t\n", "is empty: it has no non-empty line"),
    (b"w1 w2\x00w3", r"is binary \(it holds NUL bytes\)"),
    (b"w1 \xff\xfe w2", r"is not UTF-8 \(byte 0xff at offset 3\)"),
    (b"w1", "the text has 1 token"),
])
def test_bad_files_are_one_line(tmp_path, tok, content, says):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    mode = "stream" if content == b"w1" else "lines"
    with pytest.raises(DatasetUnavailable, match=says) as err:
        load_text_dataset(path, tok, mode)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, says", [
    ({"mode": "words"}, "text mode must be one of lines, stream"),
    ({"mode": "lines", "max_length": 0}, r"max_length must be an integer in \[1, 65536\]"),
    ({"mode": "stream", "max_length": 1}, r"max_length must be an integer in \[2, 65536\]"),
    ({"mode": "stream", "max_length": 8, "stride": 8}, r"stride must be an integer in \[1, max_length - 1 = 7\]"),
    ({"mode": "stream", "stride": 0}, "stride must be"),
])
def test_bad_settings_are_one_line(tmp_path, tok, kwargs, says):
    with pytest.raises(DatasetUnavailable, match=says):
        load_text_dataset(_file(tmp_path, "w1 w2 w3"), tok, **kwargs)


def test_a_text_dataset_needs_a_tokenizer(tmp_path):
    path = _file(tmp_path, "w1 w2")
    says = r"a text dataset needs a model with a tokenizer \(hf:PATH_OR_ID with tokenizer files, or all-minilm-l6-v2\)"
    for name in (f"text:{path}", "sentences"):
        with pytest.raises(DatasetUnavailable, match=says):
            load_dataset(name)
    with pytest.raises(DatasetUnavailable, match=says + "; this model has none"):
        load_text_dataset(path, None, "lines")
    with pytest.raises(DatasetUnavailable, match="needs a file: use text:PATH"):
        load_dataset("text:", tokenizer=word_tokenizer())


def test_load_dataset_passes_text_settings(tmp_path, tok):
    path = _file(tmp_path, " ".join(f"w{i}" for i in range(10)))
    x, y = load_dataset(f"text:{path}", tokenizer=tok, text_mode="stream", max_length=6, stride=5).split("test")
    assert x["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [10, 11, 12, 13, 14, 0]]
    assert y.tolist() == [[IGNORE, 6, 7, 8, 9, 10], [IGNORE, 11, 12, 13, 14, IGNORE]]


def test_the_shipped_sentences(tok):
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)) == 2400 and all(line.strip() == line and line for line in lines)
    assert (SENTENCES.parent / "SOURCES.md").read_text().startswith("# Shipped text sets")
    data = load_dataset("sentences", tokenizer=tok)
    assert data.info.splits == {"test": 2400}
    assert data.info.name.startswith("sentences [tokenizer ") and data.info.name.endswith(", lines, max_length 128]")
