"""GFM autolinks in user text: Streamlit's markdown (remark-gfm) links ``https://…``, ``www.…`` and ``a@b.c`` found
in the text after backslash escapes are resolved, so ``pages._shared.plain`` must break them another way."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import REPO, screenshot, serve_app, wait_for_app
from tests.e2e.markdown_probe import PAYLOADS

_SHOWN = "[data-testid='stMarkdownContainer'], [data-testid='stCaptionContainer']"


def test_urls_and_addresses_in_user_text_are_not_links(tmp_path, page):
    with serve_app(tmp_path / "data", script="tests/e2e/markdown_probe.py", PYTHONPATH=str(REPO)) as url:
        page.goto(url)
        wait_for_app(page)
        shown = page.locator(".st-key-plain").locator(_SHOWN)
        expect(shown).to_have_count(2 * len(PAYLOADS))  # each payload by st.markdown and by st.caption
        expect(page.locator(".st-key-backslashes").locator(_SHOWN)).to_have_count(2 * len(PAYLOADS))
        screenshot(page, "markdown-autolinks")
        # the comparison: backslash escapes alone (plain before) leave every payload a link, in both
        assert page.locator(".st-key-backslashes a").count() == 2 * len(PAYLOADS)
        assert page.locator(".st-key-plain a").count() == 0
        texts = [t.replace("\u2060", "") for t in shown.all_inner_texts()]
        assert texts == [p for p in PAYLOADS for _ in (0, 1)]  # shown as typed (the word joiners are invisible)
