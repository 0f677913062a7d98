"""Lessons: a gallery of short lessons for a class; each card says what to look at and opens Explore with its
settings through the URL (`dashboard.lessons.LESSONS`).

The numbers under each card are the shipped precomputed records (`dashboard/precomputed/`), served only when they
match this server's weights and engine (`services.precomputed`); the same records make Explore answer at once when
the lesson's link opens it.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import components, frame, lessons, services
from dashboard.components import eval_set_label

CARDS_PER_ROW = 2


def shipped_table(lesson: lessons.Lesson) -> pd.DataFrame | None:
    """The lesson's views with their shipped accuracy and size, or None when nothing shipped matches here."""
    rows = []
    for view in lesson.views:
        record = services.precomputed(lessons.PRECOMPUTED_SELECTION, view.config().to_json())
        if record is not None:
            rows.append({"Config": record["label"], "Accuracy (%)": 100 * record["accuracy"],
                         "Size (KiB)": record["size_bytes"] / 1024, "Bits / weight": record["bits_per_weight"]})
    return pd.DataFrame(rows) if rows else None


def card(lesson: lessons.Lesson) -> None:
    with st.container(border=True):
        st.subheader(lesson.title)
        st.markdown(lesson.look)
        st.page_link(lessons.PAGES[lesson.page], label=f"Open in {lesson.page.capitalize()}",
                     icon=":material/arrow_forward:", query_params=lesson.params)
        try:
            table = shipped_table(lesson)
        except services.USER_ERRORS as e:  # e.g. mnist not installed: the link still works, computed live
            components.show_error(e, "The precomputed results cannot be shown: ")
            return
        if table is not None:
            with st.expander("Precomputed results", icon=":material/bolt:"):
                st.dataframe(table, hide_index=True, key=f"lessons_{lesson.slug}_table",
                             column_config={c: st.column_config.NumberColumn(format="%.2f")
                                            for c in ("Accuracy (%)", "Size (KiB)", "Bits / weight")})


frame.hide_sidebar_settings()
st.title("Lessons")
selection = lessons.PRECOMPUTED_SELECTION
st.caption(f"Short lessons for a class. Each opens Explore with its settings on {selection.model} "
           f"({selection.dataset}, {eval_set_label(selection.limit)}, {selection.device}); their numbers are "
           "precomputed and shipped, so they show at once, and a link can be shared as it is.")
for start in range(0, len(lessons.LESSONS), CARDS_PER_ROW):
    for column, lesson in zip(st.columns(CARDS_PER_ROW), lessons.LESSONS[start:start + CARDS_PER_ROW]):
        with column:
            card(lesson)
