"""Config validation, canonical forms and JSON round trips."""
import pytest

from compression_core.config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec


@pytest.mark.parametrize("bad, field", [
    (lambda: QuantSpec(bits=0), "bits"),
    (lambda: QuantSpec(bits=9), "bits"),
    (lambda: QuantSpec(bits=4, scheme="weird"), "scheme"),
    (lambda: QuantSpec(bits=1, scheme="sym"), "bits=1"),
    (lambda: QuantSpec(bits=4, range="percentile", percentile=20), "percentile"),
    (lambda: PruneSpec(sparsity=1.0), "sparsity"),
    (lambda: PruneSpec(sparsity=-0.1), "sparsity"),
    (lambda: PruneSpec(sparsity=float("nan")), "sparsity"),
    (lambda: PruneSpec(method="nm", n=4, m=4), "N:M"),
    (lambda: CompressionConfig(act_bits=1), "act_bits"),
    (lambda: CompressionConfig(index_bits=0), "index_bits"),
    (lambda: CompressionConfig(overrides=(LayerOverride("a"), LayerOverride("a"))), "overridden once"),
])
def test_bad_values_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        bad()


def test_meaningless_fields_collapse_to_one_hash():
    fp32 = CompressionConfig()
    assert CompressionConfig(quant=QuantSpec(bits=32, quantizer="kmeans", scheme="asym")).config_hash == fp32.config_hash
    assert CompressionConfig(prune=PruneSpec(sparsity=0, method="random", scope="global")).config_hash == fp32.config_hash
    assert QuantSpec(quantizer="fp16").bits == 16
    assert PruneSpec(method="nm", sparsity=0.7).target_sparsity == 0.5
    assert QuantSpec(bits=4, range="minmax", percentile=99.0) == QuantSpec(bits=4)
    assert PruneSpec(0.5, method="structured", scope="global").scope == "layer"
    assert CompressionConfig(quant=QuantSpec(bits=4)).config_hash != CompressionConfig(quant=QuantSpec(bits=5)).config_hash


def test_json_round_trip_and_override_order():
    a = LayerOverride("fc1", quant=QuantSpec(bits=8))
    b = LayerOverride("conv1", prune=PruneSpec(sparsity=0.2), skip=False)
    c1 = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym"), prune=PruneSpec(0.5), overrides=(a, b))
    c2 = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym"), prune=PruneSpec(0.5), overrides=(b, a))
    assert c1 == c2 and c1.config_hash == c2.config_hash
    assert CompressionConfig.from_json(c1.to_json()) == c1
    assert c1.for_layer("fc1")[0].bits == 8 and c1.for_layer("fc1")[1].sparsity == 0.5
    assert c1.for_layer("other") == (c1.quant, c1.prune, False)


def test_unknown_field_in_json_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown or missing field"):
        CompressionConfig.from_dict({"quant": {"bitz": 4}})


def test_labels_name_the_clip_percentile():
    label = lambda p: CompressionConfig(quant=QuantSpec(bits=3, granularity="tensor", range="percentile",  # noqa: E731
                                                        percentile=p)).label
    assert label(99.9) == "int3 tensor sym p99.9"
    assert label(99.0) == "int3 tensor sym p99" and label(99.0) != label(99.5)
    assert CompressionConfig(quant=QuantSpec(bits=3, range="mse")).label == "int3 channel sym mse"
