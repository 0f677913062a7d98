"""The forward tuner never changes what a model computes and never fails (#8): layouts are checked, not assumed."""
import pytest
import torch

from compression_core import CompressionConfig, Experiment, QuantSpec, load_dataset, load_model
from compression_core.evaluate import predict, same_function, tune_forward
from tests.core import layout_models

X = torch.randn(1024, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


def test_view_after_convolutions_fails_in_channels_last_so_the_tuner_keeps_the_plain_layout():
    model = _model(layout_models.ViewFlattenCNN)
    with pytest.raises(RuntimeError, match="view size is not compatible"):  # what crashed evaluate before
        predict(model.to(memory_format=torch.channels_last), X[:8].contiguous(memory_format=torch.channels_last), 8)
    fmt, batch = tune_forward(model.to(memory_format=torch.contiguous_format), X)
    assert fmt == torch.contiguous_format and batch in (256, 512, 1024)


def test_a_layout_that_silently_changes_the_logits_is_dropped():
    model = _model(layout_models.MemoryOrderCNN)
    plain = predict(model, X[:256], 256)
    cl = predict(model.to(memory_format=torch.channels_last), X[:256].contiguous(memory_format=torch.channels_last),
                 256)
    assert not same_function(cl, plain)  # channels_last runs, but computes something else
    model = model.to(memory_format=torch.contiguous_format)
    assert tune_forward(model, X)[0] == torch.contiguous_format


def test_transpose_then_view_runs_in_either_layout_with_the_same_logits():
    model = _model(layout_models.TransposeViewCNN)
    fmt, batch = tune_forward(model, X)
    tuned = predict(model.to(memory_format=fmt), X.contiguous(memory_format=fmt), batch)
    assert same_function(tuned, predict(model.to(memory_format=torch.contiguous_format), X, 512))


def test_out_of_memory_drops_the_batch_sizes_that_do_not_fit():
    model = _model(layout_models.OutOfMemoryAbove)
    assert tune_forward(model, X)[1] == 256  # 512 and 1024 ran out of memory
    layout_models.OutOfMemoryAbove.limit = 100
    try:
        assert tune_forward(model, X) == (torch.contiguous_format, 64)  # even 256 failed: halved until it fit
    finally:
        layout_models.OutOfMemoryAbove.limit = 300


def test_experiment_on_a_view_flatten_model_evaluates_what_the_plain_forward_computes():
    loaded = load_model("tests.core.layout_models:ViewFlattenCNN")
    exp = Experiment(loaded, load_dataset("mnist"), limit=500, device="cpu")
    assert exp.memory_format == torch.contiguous_format
    record = exp.run(CompressionConfig(quant=QuantSpec(bits=8)))
    plain_pred = predict(loaded.model, exp.x.contiguous(), 500).argmax(1)
    assert record["n_samples"] == 500
    assert exp.baseline["correct"] == int((plain_pred == exp.y).sum())
