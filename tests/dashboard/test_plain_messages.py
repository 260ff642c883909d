"""dashboard.ui.plain: a library message shown in st.error (which renders markdown) reads as written: every
character CommonMark (and Streamlit's $ for LaTeX, ~ for strike-through) reads as formatting is backslash-escaped,
which CommonMark renders as the character itself."""

import re

import pytest

from dashboard.ui import plain

FORMATTING = "\\`*_{}[]()#+-!|<>$~"
MESSAGES = [
    "checkpoints/x/meta.json: age_offset must be a finite number; age_scale must be a finite positive number",
    "C:\\Users\\me\\ck_1\\meta.json is corrupt (missing format, arch)",
    "*bold* _it_ `code` [link](http://x) <b>tag</b> $x^2$ ~~gone~~ # heading | a | b |",
]


def unescaped(text: str) -> str:
    """What CommonMark shows for backslash escapes of ASCII punctuation."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


@pytest.mark.parametrize("message", MESSAGES)
def test_every_formatting_character_is_escaped_and_reads_back_as_written(message):
    out = plain(message)
    assert unescaped(out) == message
    bare = re.sub(r"\\.", "", out)  # what is left once every escaped pair is taken out
    assert not set(bare) & set(FORMATTING), bare


def test_plain_text_is_left_alone():
    assert plain("no checkpoint at /tmp/ck: pass a folder") == "no checkpoint at /tmp/ck: pass a folder"
