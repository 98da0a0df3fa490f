"""A Streamlit script for test_markdown_autolinks.py: user text with URLs and e-mail addresses rendered by
st.markdown and st.caption, escaped by ``pages._shared.plain`` (key ``plain``) and, for comparison, by
backslash escapes alone (key ``backslashes``: what ``plain`` did before it broke GFM's autolinks)."""

from __future__ import annotations

import re

import streamlit as st

from pages._shared import plain

__all__ = ["PAYLOADS"]

PAYLOADS = ("https://evil.example/login", "see http://evil.example.", "www.evil.example", "WWW.evil.example/x",
            "mail a@b.example now", "mailto:boss@evil.example")


def _backslashes(text: str) -> str:
    return re.sub(r"[\\`*_{}\[\]()<>#+\-.!|~:$=&\"']", lambda m: "\\" + m.group(0), " ".join(text.split()))


for key, escape in (("plain", plain), ("backslashes", _backslashes)):
    with st.container(key=key):
        for payload in PAYLOADS:
            st.markdown(escape(payload))
            st.caption(escape(payload))
