"""Compression Explorer's Streamlit dashboard: a thin UI over `compression_core` (run `dashboard/app.py`)."""
