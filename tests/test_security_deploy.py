"""Safe to deploy (issue 26, items 4-7), on SQLite and PostgreSQL: which host names a loopback-only server answers
to, sign-in throttling that holds under parallel attempts and cannot be used to lock someone else out, the
password rule against common passwords, single sign-on mapped by issuer and subject only, and no usage statistics.
The browser side of item 4 is tests/e2e/test_host_names.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cadx.workflows.accounts import host_refusal

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- item 4: DNS rebinding ---
@pytest.mark.parametrize("host, served", [
    ("localhost:8501", True), ("LOCALHOST.:8501", True), ("127.0.0.1:8501", True), ("127.0.0.1", True),
    ("[::1]:8501", True), ("127.1.2.3:80", True), ("evil.example:8501", False), ("evil.example", False),
    ("localhost.evil.example:8501", False), ("127.0.0.1.nip.io:8501", False), ("", False), (None, False),
    ("[::ffff:203.0.113.5]:8501", False), ("cadx.lab.example:443", True),
])
def test_a_loopback_server_answers_only_to_loopback_and_configured_host_names(host, served, monkeypatch):
    monkeypatch.setenv("CADX_ALLOWED_HOSTS", " Cadx.Lab.Example , other.example")
    why = host_refusal(host, server_address="127.0.0.1")
    assert (why is None) is served
    if not served:
        assert "DNS rebinding" in why and "CADX_ALLOWED_HOSTS=" in why


def test_a_server_reachable_from_the_network_answers_to_any_host_name(monkeypatch):
    monkeypatch.delenv("CADX_ALLOWED_HOSTS", raising=False)
    for address in ("0.0.0.0", None, "192.168.1.20"):  # accounts or the first-run setup guard these
        assert host_refusal("cadx.example.org", server_address=address) is None
    assert host_refusal("cadx.example.org", server_address="localhost") is not None


# ----------------------------------------------------------------------------- item 7: usage statistics ---
def test_plain_streamlit_run_sends_no_usage_statistics():
    """`streamlit run serve.py` typed by hand reads .streamlit/config.toml of the working directory."""
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
