"""Scrubbing secrets out of text that came from somewhere we do not control.

A server's error body may echo what it was sent: the ``Authorization`` header, the key in a
query string, a proxy's view of the request. Every such text passes through ``scrub_secrets``
before Flywheel prints, stores or logs it. Two layers: the key values this process is
configured with (every ``FLYWHEEL_*_KEY`` setting, ``OPENAI_API_KEY``, ``TOGETHER_API_KEY`` and
any other ``*_API_KEY`` in the environment) are removed wherever they appear, and shapes that
look like credentials (bearer tokens, ``sk-…`` keys, Together keys, ``Authorization`` headers,
``api_key=``/``token=`` parameters, high-entropy ``key=`` values, passwords in URLs) are
removed even when nobody configured them here.

A URL written into a plan (an endpoint) must hold no credentials either: ``url_credentials``
says what a URL carries (a user and password, a ``key=``/``api_key=``/``token=`` parameter) and
``strip_url_credentials`` removes exactly that, leaving the rest of the URL as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = [
    "REDACTED",
    "configured_secret_values",
    "remove_key_values",
    "scrub_secrets",
    "strip_url_credentials",
    "strip_urls_credentials",
    "url_credentials",
    "urls_in",
]

REDACTED = "[redacted]"

# Values shorter than this are not replaced literally: "abc" would shred ordinary words.
_MIN_LITERAL_LENGTH = 6

# Environment variables whose values are keys whatever their name ends with.
_KEY_ENV_VARS = ("OPENAI_API_KEY", "TOGETHER_API_KEY")

# A credential value: everything up to whitespace, a quote or a separator of the text around it.
# A value already replaced by a literal pass is taken whole, so that "Authorization: Bearer
# [redacted]" becomes "Authorization: [redacted]" and not "Authorization: [redacted]]".
_VALUE = r"(?:" + re.escape(REDACTED) + r"|[^\s\"'&,;<>)\]}]+)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # An Authorization (or Proxy-Authorization) header in any rendering: "Authorization: Bearer x",
    # '"authorization": "Basic x"', "authorization=x".
    (
        re.compile(
            r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
            r"(?:(?:bearer|basic|token|digest)\s+)?" + _VALUE
        ),
        r"\1" + REDACTED,
    ),
    # A bearer or basic token anywhere else.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    # OpenAI keys (sk-…, sk-proj-…), Anthropic-style and similar prefixed keys.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    # Together AI keys: tgp_v1_… and the older 64-hex-character form.
    (re.compile(r"\btgp_v\d+_[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"\b[0-9a-fA-F]{64}\b"), REDACTED),
    # Named credential parameters and headers, in a query string, a header or JSON:
    # api_key=…, x-api-key: …, "access_token": "…", password=…
    (
        re.compile(
            r"(?i)(\b(?:x-)?(?:api[_-]?key|access[_-]?token|refresh[_-]?token|auth[_-]?token|"
            r"token|secret|client[_-]?secret|password|passwd)[\"']?\s*[:=]\s*[\"']?)" + _VALUE
        ),
        r"\1" + REDACTED,
    ),
    # A bare key=… only when its value looks like a key (long, letters and digits), so that
    # "missing key: 'topic'" stays readable.
    (
        re.compile(
            r"(?i)(\bkey[\"']?\s*[:=]\s*[\"']?)"
            r"(?=[A-Za-z0-9_\-./+=]*\d)(?=[A-Za-z0-9_\-./+=]*[A-Za-z])[A-Za-z0-9_\-./+=]{16,}"
        ),
        r"\1" + REDACTED,
    ),
    # user:password@ in a URL.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@\"']+@"), r"\1" + REDACTED + "@"),
)


def configured_secret_values() -> list[str]:
    """The key values this process holds: every ``*_key`` setting and the providers' key
    variables (read now, so a key set after start-up is covered too)."""
    from core.settings import SETTINGS

    names = {s.env_var for s in SETTINGS.values() if s.name.endswith("_key")}
    names.update(_KEY_ENV_VARS)
    names.update(n for n in os.environ if n.endswith("_API_KEY"))
    values = (os.environ.get(name, "").strip() for name in sorted(names))
    return [v for v in values if len(v) >= _MIN_LITERAL_LENGTH]


def remove_key_values(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with the configured key values and ``extra`` values (and their URL-encoded
    forms) replaced by ``[redacted]``, and nothing else changed: for a model's own output,
    which may legitimately hold credential-shaped code but never this process's keys."""
    if not text:
        return text
    literals = {v.strip() for v in [*configured_secret_values(), *extra] if v}
    literals = {v for v in literals if len(v) >= _MIN_LITERAL_LENGTH}
    variants = set(literals) | {quote(v, safe="") for v in literals}
    # Longest first, so that a key containing another configured value goes whole.
    for value in sorted(variants, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def scrub_secrets(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with configured key values, ``extra`` values and credential-shaped strings
    replaced by ``[redacted]``: safe to print, store or log."""
    if not text:
        return text
    text = remove_key_values(text, extra)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# -- credentials in URLs -----------------------------------------------------------------------

# A URL inside any text: a scheme, "://", then up to whitespace, a quote or an angle bracket.
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s\"'<>]+")

# Query parameters that carry a credential: key, api_key, api-key, apikey, access_token, token,
# secret, client_secret, password, sig (a signed URL's signature) and their kin.
_CREDENTIAL_PARAM = re.compile(
    r"(?i)^(?:x[_-])?(?:[a-z]+[_-])?(?:key|apikey|token|secret|passw(?:or)?d|pwd|auth|"
    r"authorization|credentials?|sig|signature)$"
)


def urls_in(text: str) -> list[str]:
    """The URLs written in ``text`` (a field that is one URL gives that URL)."""
    return _URL.findall(text or "")


def url_credentials(url: str) -> list[str]:
    """What credentials ``url`` carries, in words ("a user name and password", "the query
    parameter 'api_key'"); empty when it carries none."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append("a user name and password" if ":" in userinfo else "a user name")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _CREDENTIAL_PARAM.match(name.strip()):
            found.append(f"the query parameter '{name}'")
    if parts.fragment and any(
        _CREDENTIAL_PARAM.match(name.strip())
        for name, _ in parse_qsl(parts.fragment, keep_blank_values=True)
    ):
        found.append("a credential in its fragment")
    return found


def strip_url_credentials(url: str) -> str:
    """``url`` without user info and without credential query parameters (or fragment); the
    scheme, host, port, path and other parameters stay as written."""
    if not url_credentials(url):
        return url
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode(
        [
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if not _CREDENTIAL_PARAM.match(name.strip())
        ]
    )
    fragment = parts.fragment
    if any(
        _CREDENTIAL_PARAM.match(name.strip())
        for name, _ in parse_qsl(fragment, keep_blank_values=True)
    ):
        fragment = ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def strip_urls_credentials(text: str) -> str:
    """``text`` with every URL in it stripped of its credentials (``strip_url_credentials``)."""
    if not text or "://" not in text:
        return text
    return _URL.sub(lambda m: strip_url_credentials(m.group(0)), text)
