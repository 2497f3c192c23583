"""OpenAI-compatible clients built from the plan, settings and environment.

The teacher may be OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp). Where the
base URL comes from, first match wins: an explicit value (a CLI flag, the page), the plan's
``generation.endpoint``, the ``teacher_base_url`` setting, ``OPENAI_BASE_URL``, then OpenAI.
The key: an explicit value (the page passes Streamlit secrets), the ``teacher_api_key`` setting,
``OPENAI_API_KEY``. A key lives only in memory: ``Endpoint`` hides it from ``repr`` and
everything stored or shown uses ``Endpoint.display_url``, which holds no credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai

from core.errors import GenerationError
from core.settings import get_setting

__all__ = [
    "OPENAI_BASE_URL",
    "Endpoint",
    "build_async_client",
    "redact_url",
    "require_key",
    "resolve_endpoint",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
_PLACEHOLDER_KEY = "not-needed"


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to store, log and show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Endpoint:
    """Where the teacher is served and the key to reach it (never stored, never shown)."""

    base_url: str
    api_key: str = field(repr=False)
    source: str = "default"

    @property
    def display_url(self) -> str:
        """The base URL without credentials, as recorded in provenance."""
        return redact_url(self.base_url)

    @property
    def is_openai(self) -> bool:
        """Whether this is OpenAI's own API (which needs a real key)."""
        return urlsplit(self.base_url).hostname == "api.openai.com"

    @property
    def has_key(self) -> bool:
        """Whether a key is configured (local servers may run without one)."""
        return self.api_key != _PLACEHOLDER_KEY


def resolve_endpoint(
    plan_endpoint: str = "", *, base_url: str | None = None, api_key: str | None = None
) -> Endpoint:
    """The teacher's endpoint from explicit values, the plan, settings and the environment."""
    candidates = [
        (base_url, "given"),
        (plan_endpoint, "plan"),
        (str(get_setting("teacher_base_url")), "setting FLYWHEEL_TEACHER_BASE_URL"),
        (os.environ.get("OPENAI_BASE_URL"), "OPENAI_BASE_URL"),
        (OPENAI_BASE_URL, "OpenAI default"),
    ]
    url, source = next((u.strip(), s) for u, s in candidates if u and u.strip())
    keys = [api_key, str(get_setting("teacher_api_key")), os.environ.get("OPENAI_API_KEY")]
    key = next((k.strip() for k in keys if k and k.strip()), _PLACEHOLDER_KEY)
    return Endpoint(url, key, source)


def require_key(endpoint: Endpoint) -> None:
    """Raise GenerationError when OpenAI's API is targeted without a key."""
    if endpoint.is_openai and not endpoint.has_key:
        raise GenerationError(
            "No API key for OpenAI: set OPENAI_API_KEY (or FLYWHEEL_TEACHER_API_KEY), or add "
            'openai_api_key = "sk-…" to .streamlit/secrets.toml for the dashboard. To use a '
            "local server instead, set OPENAI_BASE_URL or the plan's generation endpoint."
        )


def build_async_client(
    endpoint: Endpoint, *, timeout_s: float, http_client: httpx2.AsyncClient | None = None
) -> openai.AsyncOpenAI:
    """An async client for ``endpoint``; retries are Flywheel's own, so the client makes none."""
    require_key(endpoint)
    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        timeout=timeout_s,
        max_retries=0,
        http_client=http_client,
    )
