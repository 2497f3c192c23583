"""Secrets never survive into text Flywheel prints, stores or logs, nor into a stored plan URL."""

from __future__ import annotations

import pytest

from core.secrets import (
    REDACTED,
    remove_key_values,
    scrub_secrets,
    strip_url_credentials,
    strip_urls_credentials,
    url_credentials,
)

KEY = "sk-proj-echoed0123456789abcdef"


@pytest.fixture(autouse=True)
def _configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.mark.parametrize(
    ("echoed", "expected"),
    [
        (f"Authorization: Bearer {KEY}", f"Authorization: {REDACTED}"),
        (f'{{"authorization": "Bearer {KEY}"}}', f'{{"authorization": "{REDACTED}"}}'),
        (f"proxy-authorization=Basic {KEY}; next", f"proxy-authorization={REDACTED}; next"),
        (f"you sent api_key={KEY}&model=m", f"you sent api_key={REDACTED}&model=m"),
        (f"bad key {KEY}.", f"bad key {REDACTED}."),
    ],
)
def test_an_echoed_configured_key_comes_out_clean(echoed: str, expected: str) -> None:
    """The key is replaced first, and the header and parameter patterns then take the marker
    whole instead of eating half of it (no "[redacted]]")."""
    assert scrub_secrets(echoed) == expected


def test_unconfigured_credentials_are_scrubbed_by_shape() -> None:
    text = "Authorization: Bearer abcdefghijklmnop0123 from https://u:pw12345@host/v1?token=t0k"
    scrubbed = scrub_secrets(text)
    assert "abcdefghijklmnop0123" not in scrubbed and "pw12345" not in scrubbed
    assert "t0k" not in scrubbed and "]]" not in scrubbed


def test_model_output_loses_only_the_configured_key() -> None:
    code = 'client = OpenAI(api_key="sk-example-not-a-real-key")'
    assert remove_key_values(code) == code
    assert remove_key_values(f"the key is {KEY}") == f"the key is {REDACTED}"


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://u:p4ss@host:8443/v1", "https://host:8443/v1"),
        (
            "https://host/v1?api-version=2024-06-01&key=AIza0123",
            "https://host/v1?api-version=2024-06-01",
        ),
        ("https://host/v1?api_key=abc&x-api-key=def", "https://host/v1"),
        ("https://host/v1?access_token=abc#frag", "https://host/v1#frag"),
        ("https://host/v1?sig=abc&monkey=1", "https://host/v1?monkey=1"),
    ],
)
def test_credentials_are_stripped_from_a_url_and_the_rest_kept(url: str, clean: str) -> None:
    assert url_credentials(url)
    assert strip_url_credentials(url) == clean
    assert not url_credentials(clean)


def test_urls_inside_text_are_stripped_and_plain_urls_left_alone() -> None:
    assert strip_url_credentials("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    text = "staging at https://u:p@stage.example/v1, prod at https://prod.example/v1."
    assert strip_urls_credentials(text) == (
        "staging at https://stage.example/v1, prod at https://prod.example/v1."
    )
