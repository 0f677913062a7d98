"""The frame around every page: the sidebar (model, dataset, device, live subset) and the shared selection.

The sidebar's widgets are bound to the URL (`bind="query-params"`), so `?model=digits-cnn&dataset=digits&limit=500`
reproduces a view and every change updates the address bar. Widget keys used here (and therefore URL parameter
names): `model`, `factory`, `num_classes`, `dataset`, `task`, `device`, `limit`; `weights` is the upload widget.
The Task picker offers only the tasks that apply to the chosen model and data (`services.task_choices`); a task in
the URL that does not apply is ignored and the model's default task is used.

A bring-your-own spec (`torchvision:NAME`, or `package.module:function` from a module prefix the operator allows in
`$COMPRESSION_EXPLORER_ALLOWED_FACTORIES`) is never loaded straight from the URL: it loads only after the user
presses **Load model** in this session, and any change to the spec or class count needs another press.

Pages read what the sidebar chose with `current_selection()` (or `require_selection()`), a
`dashboard.selection.Selection`; the choice is stored in `st.session_state["selection"]` as a plain dict, per
browser session. An error the user caused is shown with its Markdown escaped (`components.show_error`).
"""
from __future__ import annotations

import dataclasses

import streamlit as st
import torch

from compression_core.evaluate import DeviceUnavailable, select_device
from compression_core.models.loading import MAX_CLASSES
from dashboard import components, data_picker, services, uploads
from dashboard.charts.common import metric_axis
from dashboard.selection import DEFAULT_DATASET, DEFAULT_LIMIT, DEFAULT_MODEL, Selection

SELECTION_KEY = "selection"
LOADED_KEY = "loaded_model"  # {"spec", "num_classes"} the user confirmed with Load model in this session
UPLOAD_NAME_KEY = "upload_name"  # {weights content id: the file name the user uploaded}, to name it in messages
UPLOADS_KEY = "uploads"  # {weights content id: bytes} uploaded by this session, for its quota
CUSTOM = "custom"  # the model option "Bring your own"
DEVICES = ("auto", "cpu", "cuda")


def current_selection() -> Selection | None:
    """The selection the sidebar made in this run, or None when it is incomplete or failed to load."""
    data = st.session_state.get(SELECTION_KEY)
    return Selection(**data) if data else None


def require_selection() -> Selection:
    """`current_selection()`, or an explanation and `st.stop()` when there is none (pages call this first)."""
    selection = current_selection()
    if selection is None:
        st.info("Choose a model and a dataset in the sidebar to start. Bring your own model: pick **Bring your "
                "own…**, give its architecture and class count, upload its weights and press **Load model**.")
        st.stop()
    return selection


def model_label(name: str) -> str:
    """Model option label: the built-in name, or 'Bring your own…'."""
    return "Bring your own…" if name == CUSTOM else name


def _model_picker() -> tuple[str | None, str | None, str | None, int | None]:
    """(model, factory, weights_id, num_classes) from the model widgets; the last three None for built-ins.

    For bring-your-own, model and factory are the spec once Load model confirmed it, else None (nothing loads).
    """
    builtins = services.models()
    names = [m["name"] for m in builtins]
    describe = {m["name"]: m.get("description") or "" for m in builtins}
    default = names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0
    model = st.selectbox(
        "Model", names + [CUSTOM], index=default, key="model", bind="query-params",
        format_func=model_label,
        help="Built-in models ship trained checkpoints; bring your own architecture with a weights file.")
    if model != CUSTOM:
        if describe.get(model):
            st.caption(describe[model])
        return model, None, None, None
    return _bring_your_own()


def _bring_your_own() -> tuple[str | None, str | None, str | None, int | None]:
    """The bring-your-own widgets; the spec counts only once Load model confirmed it (with its class count)."""
    allowed = uploads.allowed_factories()
    spec = st.text_input("Architecture (torchvision:NAME, hf:PATH or package.module:function)", key="factory",
                         bind="query-params", placeholder="torchvision:resnet18",
                         help="A torchvision architecture by name; a Hugging Face model folder on the server "
                              "(hf:PATH, weights and tokenizer inside it, under the folders the operator shares); "
                              "or (where the operator allows it) an importable function or nn.Module class that "
                              "builds the untrained model.").strip()
    num_classes = st.number_input("Classes", min_value=1, max_value=MAX_CLASSES, value=None, step=1,
                                  key="num_classes", bind="query-params", placeholder="the model's default",
                                  help="Output classes of the model's head; torchvision heads default to 1000.")
    upload = st.file_uploader("Weights (.safetensors, .pt, .pth)", type=["safetensors", "pt", "pth"], key="weights",
                              help="A state dict; .pt/.pth files are read with weights_only=True, so pickles "
                                   "that would run code are refused.")
    if allowed:
        st.caption(f"Factories are allowed from: {', '.join(allowed)}.")
    else:
        st.caption("Factories (package.module:function) are off on this server; an operator enables them with "
                   f"`{uploads.ALLOWED_FACTORIES_ENV}=mypkg.models` (see README).")
    request = {"spec": spec, "num_classes": None if num_classes is None else int(num_classes)}
    if st.button("Load model", key="load_model", type="primary", disabled=not spec):
        st.session_state[LOADED_KEY] = request
    weights_id = None
    if upload is not None:
        session_uploads = st.session_state.setdefault(UPLOADS_KEY, {})
        weights_id = uploads.save_upload(upload.name, upload.getvalue(), session_uploads)
        st.session_state[UPLOAD_NAME_KEY] = {weights_id: upload.name}
    if spec and st.session_state.get(LOADED_KEY) == request:
        return spec, spec, weights_id, request["num_classes"]
    st.caption("Press **Load model** to load this architecture." if spec else
               "Enter the architecture, e.g. torchvision:resnet18, then press **Load model**.")
    return None, None, weights_id, request["num_classes"]


def _dataset_picker(choices: list[dict] | None) -> str | None:
    """The dataset selectbox over `choices` (None: the model is not ready yet, nothing to explain)."""
    usable = [c["name"] for c in choices or [] if c["available"]]
    if not usable:  # a keyed widget would keep its empty value once options appear, so no key here
        st.selectbox("Dataset", [], disabled=True, placeholder="—")
        dataset = None
    else:
        default = usable.index(DEFAULT_DATASET) if DEFAULT_DATASET in usable else 0
        dataset = st.selectbox("Dataset", usable, index=default, key="dataset", bind="query-params",
                               help="Only datasets this model can run on are listed.")
    for c in choices or []:
        if not c["available"]:
            st.caption(f"{c['name']}: unavailable — {c['reason']}")
    if choices == []:
        st.caption("No dataset for this model: it has no shipped checkpoint yet (train one with "
                   "`python -m compression_core train`), or it accepts none of the installed datasets.")
    return dataset


def _device_picker() -> str:
    choice = st.segmented_control("Device", DEVICES, default="auto", required=True, key="device",
                                  bind="query-params") or "auto"
    try:
        device = select_device(choice).type
    except DeviceUnavailable:
        st.warning(f"{choice} is not available on this machine; using cpu.")
        device = "cpu"
    cuda = "yes" if torch.cuda.is_available() else "no"
    st.caption(f"Running on **{device}** · CUDA GPU available: {cuda}")
    return device


def _task_picker(selection: Selection) -> Selection:
    """The Task selectbox over the tasks that apply to the selection; the selection with the chosen task (None
    when it is the model's default, so a view without a task in its URL is the same view)."""
    choices, default = services.task_choices(selection)
    # options are the task names themselves, so the URL reads ?task=fidelity
    task = st.selectbox("Task", choices, index=choices.index(default), key="task", bind="query-params",
                        help="What quality means. classify: accuracy on the labels (a classifier on labelled data); "
                             "fidelity: the outputs against the fp32 model's (cosine, relative L2, agreement, KL, "
                             "recall@10); lm: next-token perplexity (causal language models). Only the tasks that "
                             "apply to this model and data are offered.")
    return dataclasses.replace(selection, task=None if task == default else task)


def baseline_line(base: dict, source: str) -> str:
    """The sidebar's fp32 summary: the task's headline metric on N samples from `source`, and one pass's time.

    Args:
        base: the fp32 record of the selection (`services.baseline`).
        source: where the data comes from, already shown-literally (`components.plain`).
    """
    when = "measured when the shipped results were made" if base.get("precomputed") else "measured"
    timing = f"from {source} · one evaluation pass {1000 * base['eval_seconds']:,.0f} ms ({when})"
    if base["task"] == "classify":
        return f"fp32 accuracy: **{100 * base['accuracy']:.2f} %** on {base['n_samples']:,} test samples {timing}"
    axis = metric_axis(base["metric"])
    if base["task"] == "fidelity":  # the fp32 model against itself scores 1 by construction: not a result
        return f"fidelity ({axis.name}): reference = the fp32 model itself, on {base['n_samples']:,} samples {timing}"
    tokens = f" ({base['n_tokens']:,} tokens)" if base.get("n_tokens") is not None else ""
    return f"fp32 {axis.name}: **{axis.show(base['metric_value'])}** on {base['n_samples']:,} samples{tokens} {timing}"


def _user_words(message: str) -> str:
    """An engine message with the upload's content id replaced by the name the user uploaded."""
    for weights_id, name in st.session_state.get(UPLOAD_NAME_KEY, {}).items():
        message = message.replace(weights_id, name)
    return message


def hide_sidebar_settings() -> None:
    """Hide the sidebar's settings on a page that does not use them (Learn, Lessons), keeping the page links.

    The widgets are still drawn (hidden), so the model and data chosen stay chosen when the user goes back.
    """
    st.html("<style>[data-testid='stSidebarUserContent'] {display: none;}</style>")


def render_sidebar() -> Selection | None:
    """Draw the sidebar, store the resulting selection in session state and return it.

    Errors a user can cause (a bad upload, a factory that does not import, a dataset that is not installed)
    show one `st.error` line in the main area; the selection is then None and the pages explain what to do.
    """
    selection, problem, choices = None, None, None
    with st.sidebar:
        try:
            model, factory, weights_id, num_classes = _model_picker()
            if model and (factory is None or weights_id is not None or factory.startswith("hf:")):
                choices = services.compatible_datasets(model, factory, weights_id, num_classes)
            elif factory is not None:
                services.check_model(factory)  # a refused spec says so at once, before any upload
                st.caption("Upload the weights file to load the model.")
        except services.USER_ERRORS as e:
            problem = _user_words(services.error_line(e))
        dataset = _dataset_picker(choices)
        task_slot = st.container()  # the Task picker, drawn here once the model and data are known
        transform = "auto"
        try:
            on_server, transform = data_picker.server_data()
        except services.USER_ERRORS as e:
            on_server, problem = None, problem or services.error_line(e)
        if on_server and model:
            dataset, choices = on_server, choices or [{"name": on_server, "available": True, "reason": ""}]
        device = _device_picker()
        limit = st.number_input("Live subset (test samples)", min_value=100, max_value=10_000, value=DEFAULT_LIMIT,
                                step=100, key="limit", bind="query-params",
                                help="Explore evaluates this many test samples (class-stratified where the data "
                                     "has labels, else the first ones; for lm, token windows); the same number "
                                     "always gives the same samples.")
        if choices and dataset:
            try:
                selection = Selection(model=model, dataset=dataset, device=device, limit=int(limit),
                                      factory=factory, weights_id=weights_id, num_classes=num_classes,
                                      transform=transform if on_server else "auto")
                with task_slot:
                    selection = _task_picker(selection)
                base = services.baseline(selection)
                st.caption(baseline_line(base, components.plain(services.data_source(selection))))
            except services.USER_ERRORS as e:
                selection, problem = None, _user_words(services.error_line(e))
    if problem:
        components.show_error(problem)
    st.session_state[SELECTION_KEY] = dataclasses.asdict(selection) if selection else None
    return selection
