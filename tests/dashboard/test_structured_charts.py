"""Structured pruning in the per-layer view: channels kept vs original, smaller shapes in the table."""
from dashboard.charts import layers as layer_charts

LAYERS = [
    {"name": "conv1", "shape": [10, 1, 5, 5], "dense_shape": [20, 1, 5, 5], "n": 500, "nnz": 250, "sparsity": 0.5,
     "bits": 32, "quantizer": "none", "index_format": "dense", "size_bits": 8000},
    {"name": "fc2", "shape": [10, 250], "dense_shape": [10, 500], "n": 5000, "nnz": 2500, "sparsity": 0.5,
     "bits": 32, "quantizer": "none", "index_format": "dense", "size_bits": 80000},
]


def test_channels_frame_and_figure():
    frame = layer_charts.channels_frame(LAYERS)
    assert frame.to_dict("records") == [{"Layer": "conv1", "Original": 20, "Kept": 10},
                                        {"Layer": "fc2", "Original": 10, "Kept": 10}]
    fig = layer_charts.channels_kept_figure(frame)
    assert [list(t.y) for t in fig.data] == [[20, 10], [10, 10]] and [t.name for t in fig.data] == ["original", "kept"]
    assert list(fig.data[1].customdata) == [50.0, 100.0]


def test_nothing_removed_gives_no_chart_and_plain_shapes():
    plain = [{**l, "dense_shape": l["shape"]} for l in LAYERS]
    assert layer_charts.channels_frame(plain).empty
    assert layer_charts.layer_table(plain)["Shape"].tolist() == ["10 × 1 × 5 × 5", "10 × 250"]
    assert layer_charts.layer_table(LAYERS)["Shape"].tolist() == ["10 × 1 × 5 × 5 (was 20 × 1 × 5 × 5)",
                                                                  "10 × 250 (was 10 × 500)"]
