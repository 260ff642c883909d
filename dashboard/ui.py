"""What every page shares: the error boundary app.py draws each page in. The rest lives by concern:
dashboard.state (the sidebar's picker and what a session chose), dashboard.caches (the cached loaders)
and dashboard.faceview (the per-face result view)."""

import logging
import re

import streamlit as st

log = logging.getLogger("agegender.dashboard")


def run_page(page) -> None:
    """The error boundary: an unexpected error in a page is logged with its traceback on the
    server and shown as one short line; the other pages keep working."""
    try:
        page.run()
    except Exception as e:  # noqa: BLE001 - that is the point of a boundary
        log.exception("page %r failed", getattr(page, "title", page))
        st.error(f"This page failed: {type(e).__name__}: {str(e)[:200]}. The details are in the server log; "
                 "the other pages still work.")


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-!|<>$~])")


def plain(text: str) -> str:
    """``text`` with every character markdown would read as formatting escaped, for st.error and its kin, which
    render markdown: a checkpoint's field names (age_offset ... age_scale) and paths are shown as written, not
    half in italics."""
    return _MARKDOWN.sub(r"\\\1", str(text))
