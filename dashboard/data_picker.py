"""The sidebar's "Data on this server" box: an image folder, IDX files, a torchvision dataset root or a text file
the operator shares, used for evaluation once the user presses **Use this data** in the session.

Paths pass `server_paths.check_server_path` (inside `$COMPRESSION_EXPLORER_DATA_ROOTS`, nothing else) before the
engine reads anything; like a bring-your-own model, a path from the URL is not read until the button is pressed.
"""
from __future__ import annotations

import streamlit as st

from compression_core.datasets_images import TRANSFORM_CHOICES
from dashboard import server_paths

CONFIRMED_KEY = "server_data"  # {"spec", "transform"} confirmed with Use this data in this session
PLACEHOLDER = "imagefolder:/data/imagenet/val"


def server_data() -> tuple[str | None, str]:
    """(canonical dataset spec or None, transform preset) from the box; None until confirmed, or when empty.

    Raises:
        server_paths.PathRefused: the confirmed path is outside the shared folders (one line; the caller shows it).
    """
    roots = server_paths.data_roots()
    with st.expander("Data on this server", expanded=bool(st.session_state.get("data_path"))):
        spec = st.text_input(
            "Dataset path", key="data_path", bind="query-params", placeholder=PLACEHOLDER,
            help="imagefolder:PATH (class folders, or train/ and val/ or test/ of them), idx:PATH (MNIST-style "
                 "files), torchvision:CLASS:ROOT or text:PATH (UTF-8 text, for language and embedding models).").strip()
        transform = st.selectbox(
            "Transform", TRANSFORM_CHOICES, key="transform", bind="query-params",
            help="How images are resized, cropped and normalised; auto = what the model was trained with.")
        if roots:
            st.caption(f"Shared folders: {', '.join(f'`{r}`' for r in roots)}.")
        else:
            st.caption("This server shares no data folders; an operator enables them with "
                       f"`{server_paths.DATA_ROOTS_ENV}=/path/to/data` (see README).")
        request = {"spec": spec, "transform": transform}
        if st.button("Use this data", key="use_data", disabled=not spec):
            st.session_state[CONFIRMED_KEY] = request
        if not spec:
            return None, transform
        if st.session_state.get(CONFIRMED_KEY) != request:
            st.caption("Press **Use this data** to evaluate on it.")
            return None, transform
    return server_paths.check_server_path(spec, roots), transform
