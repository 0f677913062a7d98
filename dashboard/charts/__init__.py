"""Pure chart builders: pandas DataFrames in, Plotly figures out (no Streamlit, no engine calls)."""
