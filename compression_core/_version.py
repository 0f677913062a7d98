"""The engine's version: the one place it is written (pyproject.toml reads it, `--version` prints it, every record
carries it).
"""
__version__ = "0.3.0"
