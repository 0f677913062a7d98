"""Shared components: `plain` shows user text literally in Markdown-rendering elements (st.error, st.caption);
the metric tiles show every metric of a record, unknown as "—"."""
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.components import plain, task_columns


@pytest.mark.parametrize("text, shown", [
    ("[x](http://evil.example)", r"\[x\]\(http\://evil.example\)"),  # a link
    ("![a](http://evil.example/p.png)", r"\!\[a\]\(http\://evil.example/p.png\)"),  # an image
    ("<img src=x onerror=alert(1)>", r"\<img src=x onerror=alert\(1\)\>"),  # HTML
    ("see https://evil.example now", r"see https\://evil.example now"),  # a GFM autolink
    ("www.evil.example", r"www\.evil.example"),
    ("mail me@evil.example", r"mail me\@evil.example"),
    ("*bold* _em_ ~~gone~~ `code` $x^2$", r"\*bold\* \_em\_ \~\~gone\~\~ \`code\` \$x^2\$"),
    (":red[alert] a|b", r":red\[alert\] a\|b"),  # Streamlit's colour directive, a table cell
    ("# big", r"\# big"), ("- item", r"\- item"), ("12. item", r"12\. item"), ("+ x", r"\+ x"),
    ("byo_marker:build", "byo_marker:build"),  # intraword underscores and plain colons stay as typed
    ("C:\\models", "C:\\\\models"),
    ("two\nlines\r\nhere", "two lines here"),  # one line: no list or heading can start after a line break
])
def test_plain_escapes_markdown(text, shown):
    assert plain(text) == shown


@given(st.text())
def test_plain_loses_nothing_and_uses_only_valid_escapes(text):
    shown = plain(text)
    assert "\n" not in shown and "\r" not in shown
    # CommonMark drops a backslash only before ASCII punctuation: every backslash we add must be one of those
    assert all(m.group(1) in string.punctuation for m in re.finditer(r"\\(.)", shown, flags=re.S))
    assert re.sub(r"\\(.)", r"\1", shown, flags=re.S) == " ".join(text.splitlines())


def test_task_columns_follow_the_tasks_and_leave_out_empty_ones():
    classify = {"task": "classify", "accuracy": 0.9, "accuracy_drop_pts": 1.0, "cosine": None}
    embedding = {"task": "fidelity", "cosine": 0.99, "rel_l2": 0.1, "recall_at_10": 0.8, "agreement": None,
                 "kl": None}
    lm = {"task": "lm", "perplexity": 31.0}
    assert task_columns([classify]) == ["accuracy", "accuracy_drop_pts"]
    assert task_columns([embedding]) == ["cosine", "rel_l2", "recall_at_10"]  # no logits: no agreement, no KL
    assert task_columns([lm, classify]) == ["perplexity", "accuracy", "accuracy_drop_pts"]


def _tiles_app(record: dict) -> None:
    from dashboard.components import metric_tiles

    metric_tiles(record)


def test_a_record_stored_before_sparse_bitops_shows_a_dash_not_zero():
    from streamlit.testing.v1 import AppTest

    old = {"task": "classify", "accuracy": 0.9, "accuracy_drop_pts": 1.5, "accuracy_ci_low": 0.85,
           "accuracy_ci_high": 0.93, "n_samples": 300, "size_bytes": 4096, "dense_bytes": 32768,
           "compression_ratio": 8.0, "bits_per_weight": 4.0, "realized_sparsity": 0.5, "agreement": 0.95,
           "top5": None, "macs": 2_000_000, "sparse_macs": 1_000_000, "bitops": 64_000_000,
           "latency_ms_per_batch": 12.5, "eval_seconds": 0.75}  # no sparse_bitops: stored before it existed
    at = AppTest.from_function(_tiles_app, args=(old,), default_timeout=30).run()
    assert not at.exception
    tiles = {m.label: (m.value, m.delta) for m in at.metric}
    assert tiles["Accuracy"] == ("90.00 %", "-1.50 pts vs fp32")
    assert tiles["BitOps / sample"] == ("64.0 M", "sparse —")
    assert tiles["MACs / sample"] == ("2.00 M", "sparse 1.00 M")
    assert tiles["Top-5 accuracy"][0] == "—" and tiles["Latency (ms / batch)"] == ("12.50", "eval 0.75 s")
    assert [m.label for m in at.metric][:5] == ["Accuracy", "Size", "Compression", "Bits per weight", "Sparsity"]
def test_histogram_view_hides_only_the_pruned_weights():
    import torch

    from compression_core.compress import compress_weight
    from compression_core.config import PruneSpec, QuantSpec
    from dashboard import layer_services

    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    layer = compress_weight(w, QuantSpec(bits=2, granularity="tensor"), PruneSpec(sparsity=0.3))
    pruned = layer.n - layer.nnz
    rounded = int((layer.weight == 0).sum()) - pruned
    assert pruned == round(0.3 * w.numel()) and rounded > 100  # 2 bits: many kept weights round to 0
    hist, grid = layer_services.histogram_view(w, layer, bins=40, hide_zeros=True)
    assert grid["hidden_zeros_after"] == pruned
    assert int(hist["after"].sum()) == w.numel() - pruned  # the rounded zeros stay in the histogram


def test_size_text_fits_a_tile():
    from dashboard.components import size_text

    assert [size_text(n) for n in (5_000, 217_586, 1_738_000, 44_000_000)] == [
        "4.88 KiB", "212 KiB", "1.66 MiB", "41.96 MiB"]
