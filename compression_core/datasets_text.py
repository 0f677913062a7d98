"""Text datasets: a UTF-8 file tokenized with a model's own tokenizer into token tensors.

Two modes. `lines`: one sample per non-empty line (truncated to `max_length` tokens, padded on the right to the
longest), no labels — for `--task fidelity`. `stream`: the whole file as one token stream cut into sliding windows
of `max_length` tokens whose starts are `stride` apart, with token labels for `--task lm` in the Hugging Face
convention (labels[:, t] is the token at t, -100 where not scored; the loss compares logits[:, :-1] with
labels[:, 1:]). Each window scores only the tokens no earlier window scored, so across windows every token but the
first is scored exactly once: with n tokens, n - 1 labels are not -100 once the first position of each window is
dropped by the shift. The earlier tokens of a window are its context.

The split is `test`; `x` is {"input_ids": (N, L) int64, "attention_mask": (N, L) int64}, `y` is None (lines) or
(N, L) int64 (stream). The project ships one text set, `sentences` (`SENTENCES`, see `texts/SOURCES.md`).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from .datasets import Dataset, DatasetInfo
from .datasets_files import DatasetUnavailable
from .errors import shown

MODES = ("lines", "stream")
MAX_BYTES = 256 * 1024 * 1024  # a text file is read whole: beyond this it is not an evaluation set
MAX_LENGTH = 65_536  # tokens per sample
IGNORE = -100  # label of a position that is not scored
# pip installs packages as plain files: the shipped text set is a real file, read by path
SENTENCES = Path(os.fspath(resources.files("compression_core") / "texts" / "sentences.txt"))
TEXT_BUILTINS = {"sentences": SENTENCES}
NEEDS_TOKENIZER = ("a text dataset needs a model with a tokenizer (hf:PATH_OR_ID with tokenizer files, or "
                   "all-minilm-l6-v2)")


def load_text_dataset(path: str | os.PathLike, tokenizer, mode: str, max_length: int = 128,
                      stride: int | None = None) -> Dataset:
    """Tokenize a UTF-8 text file into a one-split (`test`) dataset of token tensors.

    Args:
        path: the text file (UTF-8; `SENTENCES` is the shipped one).
        tokenizer: the model's transformers tokenizer (`LoadedModel.tokenizer`).
        mode: "lines" (one sample per non-empty line, y None) or "stream" (sliding windows, token labels).
        max_length: tokens per sample (lines longer are truncated) or per window.
        stride: stream only: tokens between window starts, in [1, max_length - 1] so that every window after the
            first has context; None = max_length // 2 (as in the transformers perplexity guide).

    Returns:
        A Dataset whose info has num_classes 0 (unlabelled), input_shape (L,), splits {"test": N} and a name
        `text:/abs/path [tokenizer NAME, MODE, max_length L(, stride S)]` (`sentences [...]` for the shipped set).

    Raises:
        DatasetUnavailable: one line — no tokenizer, a bad mode / max_length / stride, a missing or unreadable file,
            an empty file, a binary (NUL bytes) or non-UTF-8 file, a stream of fewer than 2 tokens.
    """
    if tokenizer is None:
        raise DatasetUnavailable(f"{NEEDS_TOKENIZER}; this model has none")
    if mode not in MODES:
        raise DatasetUnavailable(f"text mode must be one of {', '.join(MODES)}; got {shown(mode)}")
    low = 2 if mode == "stream" else 1
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not low <= max_length <= MAX_LENGTH:
        raise DatasetUnavailable(f"max_length must be an integer in [{low}, {MAX_LENGTH}]; got {shown(max_length)}")
    if mode == "stream":
        stride = max_length // 2 if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length - 1:
            raise DatasetUnavailable(f"stride must be an integer in [1, max_length - 1 = {max_length - 1}] so that "
                                     f"each window has context; got {shown(stride)}")
    path = Path(path).expanduser().resolve()
    text = read_text(path)
    if mode == "lines":
        x, y, note = _lines(text, tokenizer, max_length)
    else:
        x, y, note = _stream(text, tokenizer, max_length, stride)
    tok = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    shown_path = next((n for n, p in TEXT_BUILTINS.items() if p.resolve() == path), f"text:{path}")
    extra = f", stride {stride}" if mode == "stream" else ""
    info = DatasetInfo(name=f"{shown_path} [tokenizer {tok}, {mode}, max_length {max_length}{extra}]",
                       num_classes=0, input_shape=(x["input_ids"].shape[1],), mean=(), std=(),
                       source=f"{path} ({note})", splits={"test": len(x["input_ids"])}, class_names=())
    return Dataset(info=info, tensors={"test": (x, y)})


def read_text(path: Path) -> str:
    """A file's text, refused in one line when it is missing, too big, binary, not UTF-8 or blank."""
    try:
        if not path.is_file():
            raise DatasetUnavailable(f"text file {shown(str(path))} does not exist or is not a file")
        if path.stat().st_size > MAX_BYTES:
            raise DatasetUnavailable(f"text file {shown(str(path))} is larger than {MAX_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as err:
        raise DatasetUnavailable(f"text file {shown(str(path))} cannot be read ({err.strerror or err})") from None
    if b"\x00" in data:
        raise DatasetUnavailable(f"text file {shown(str(path))} is binary (it holds NUL bytes); give UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetUnavailable(f"text file {shown(str(path))} is not UTF-8 (byte 0x{data[err.start]:02x} at "
                                 f"offset {err.start}); give UTF-8 text") from None
    if not text.strip():
        raise DatasetUnavailable(f"text file {shown(str(path))} is empty: it has no non-empty line")
    return text


def _pad_id(tokenizer) -> int:
    """The id padded positions hold (their attention mask is 0): the pad token, else end-of-text, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded {"input_ids", "attention_mask"} (N, longest) int64 from token id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _lines(text: str, tokenizer, max_length: int) -> tuple[dict[str, torch.Tensor], None, str]:
    lines = [line for line in text.splitlines() if line.strip()]
    full = tokenizer(lines, add_special_tokens=True, verbose=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    rows = tokenizer(lines, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    return _padded(rows, _pad_id(tokenizer)), None, f"{len(lines)} lines, {truncated} truncated to {max_length} tokens"


def _stream(text: str, tokenizer, max_length: int, stride: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, str]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids)
    if n < 2:
        raise DatasetUnavailable(f"the text has {n} token(s); a language-model stream needs at least 2")
    rows, labels, scored_to = [], [], 1  # stream position 0 has no context: never scored
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[begin:end]
        # positions before scored_to are context (scored by an earlier window, or the stream's first token)
        labels.append([IGNORE if begin + i < scored_to else t for i, t in enumerate(window)])
        rows.append(window)
        scored_to = end
        if end == n:
            break
    x = _padded(rows, _pad_id(tokenizer))
    y = torch.full_like(x["input_ids"], IGNORE)
    for i, row in enumerate(labels):
        y[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    return x, y, f"{n} tokens in {len(rows)} windows of {max_length}, stride {stride}"


def text_source(name: str) -> Path:
    """The file a text dataset name points at: `text:PATH`, or a shipped name (`sentences`).

    Raises:
        DatasetUnavailable: `text:` without a path.
    """
    if name in TEXT_BUILTINS:
        return TEXT_BUILTINS[name]
    path = name.partition(":")[2]
    if not path.strip():
        raise DatasetUnavailable(f"dataset {shown(name)} needs a file: use text:PATH (UTF-8 text)")
    return Path(path)
