"""The engine's version: one place, read by pyproject.toml, the CLI's --version and every record."""
__version__ = "0.2.0"
