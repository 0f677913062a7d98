"""CLI flags of the block formats: --group-size, --scale-dtype, --no-double-quant and the new quantizers."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compression_core.cli_flags import UserError, add_config_flags, configs_from_args
from compression_core.config import QuantSpec

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return configs_from_args(p.parse_args(list(argv)))


def test_sweep_crosses_formats_and_group_sizes():
    configs = parse("--quantizer", "uniform,nf4,mxfp4", "--bits", "4", "--granularity", "group",
                    "--group-size", "32,128", "--scale-dtype", "fp32,e8m0")
    specs = {(c.quant.quantizer, c.quant.group_size, c.quant.scale_dtype) for c in configs}
    assert specs == {("uniform", 32, "fp32"), ("uniform", 128, "fp32"), ("uniform", 32, "e8m0"),
                     ("uniform", 128, "e8m0"), ("nf4", 32, "fp32"), ("nf4", 128, "fp32"), ("mxfp4", 32, "fp32")}
    assert len(configs) == 7  # MX ignores both settings: its blocks are 32 with E8M0 scales


def test_natural_settings_and_no_double_quant():
    (nf4,) = parse("--quantizer", "nf4", "--no-double-quant")
    assert (nf4.quant.bits, nf4.quant.granularity, nf4.quant.group_size, nf4.quant.double_quant) == (4, "group", 64,
                                                                                                     False)
    (fp8,) = parse("--quantizer", "fp8_e4m3")
    assert fp8.quant == QuantSpec(bits=8, quantizer="fp8_e4m3", granularity="channel")
    assert fp8.label == "fp8_e4m3 channel" and nf4.label == "nf4 g64 no-dq"
    (layer,) = parse("--bits", "4", "--layer", "fc:group_size=32,granularity=group,scale_dtype=fp16")
    assert layer.for_layer("fc")[0].group_size == 32 and layer.for_layer("fc")[0].scale_dtype == "fp16"


def test_format_fields_keep_old_config_hashes():
    plain = parse("--bits", "4")[0]
    assert "group_size" not in plain.to_json() and "scale_dtype" not in plain.to_json()
    assert plain.config_hash == parse("--bits", "4", "--scale-dtype", "fp32")[0].config_hash


@pytest.mark.parametrize("argv, says", [
    (["--quantizer", "mxfp4", "--granularity", "tensor"], "--granularity tensor does not apply to --quantizer mxfp4; "
                                                          "it supports group (32-element blocks)"),
    (["--quantizer", "nf4", "--granularity", "channel"], "does not apply to --quantizer nf4; it supports group"),
    (["--bits", "4", "--granularity", "group", "--group-size", "0"], "--group-size must be positive integers"),
    (["--bits", "4", "--granularity", "group", "--group-size", "-32"], "--group-size must be positive integers"),
    (["--bits", "4", "--group-size", "64"], "--group-size only applies to --granularity group"),
    (["--quantizer", "mxfp8", "--group-size", "64"], "MX formats always use 32-element blocks"),
    (["--quantizer", "kmeans", "--bits", "4", "--scale-dtype", "e8m0"], "--scale-dtype only applies to"),
    (["--bits", "4", "--no-double-quant"], "--no-double-quant only applies to --quantizer nf4"),
])
def test_bad_format_flags_are_one_line(argv, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse(*argv)


@pytest.mark.parametrize("argv, says", [
    (["--group-size", "abc", "--bits", "4", "--granularity", "group"], "--group-size must be a comma list of integers"),
    (["--quantizer", "mxfp4", "--granularity", "channel"], "it supports group (32-element blocks)"),
    (["--scale-dtype", "fp8", "--bits", "4"], "--scale-dtype must be from fp32, fp16, e8m0"),
])
def test_cli_exits_2_with_one_line(argv, says, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "compression_core", "evaluate", "--model", "digits-cnn", *argv,
                        "--store", str(tmp_path / "s.sqlite")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in lines[0]
