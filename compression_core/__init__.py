"""Compression Explorer's engine: quantize and prune PyTorch models out-of-place and measure them honestly.

No Streamlit here; the dashboard and the CLI (`python -m compression_core`) both sit on top of this package.
"""
from .config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec

__all__ = ["CompressionConfig", "ConfigError", "LayerOverride", "PruneSpec", "QuantSpec"]
