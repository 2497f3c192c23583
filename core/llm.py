"""OpenAI-compatible clients built from the plan, settings and environment.

The teacher may be OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp). Where the
base URL comes from, first match wins: an explicit value (a CLI flag, the page), the plan's
``generation.endpoint``, the ``teacher_base_url`` setting, ``OPENAI_BASE_URL``, then OpenAI.
The key: an explicit value (the page passes Streamlit secrets), the ``teacher_api_key`` setting,
``OPENAI_API_KEY``. A key lives only in memory: ``Endpoint`` hides it from ``repr`` and
everything stored or shown uses ``Endpoint.display_url``, which holds no credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from core.errors import GenerationError
from core.secrets import scrub_secrets
from core.settings import settings

# The client library takes most of a second to import: only the functions that talk to a server
# import it, so a command that merely names an endpoint (train list, eval sets) never loads it.
if TYPE_CHECKING:
    import httpx2
    import openai

__all__ = [
    "OPENAI_BASE_URL",
    "Endpoint",
    "RequestAborted",
    "RequestGaveUp",
    "backoff_delay",
    "build_async_client",
    "chat_reply_problem",
    "describe_error",
    "redact_url",
    "request_with_retries",
    "require_key",
    "resolve_endpoint",
    "retry_after_s",
    "run_bounded",
    "server_message",
]

T = TypeVar("T")
W = TypeVar("W")
_MAX_BACKOFF_S = 30.0
_MAX_RETRY_AFTER_S = 120.0

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
        (settings.teacher_base_url, "setting FLYWHEEL_TEACHER_BASE_URL"),
        (os.environ.get("OPENAI_BASE_URL"), "OPENAI_BASE_URL"),
        (OPENAI_BASE_URL, "OpenAI default"),
    ]
    url, source = next((u.strip(), s) for u, s in candidates if u and u.strip())
    keys = [api_key, settings.teacher_api_key, os.environ.get("OPENAI_API_KEY")]
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
    import openai

    require_key(endpoint)
    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        timeout=timeout_s,
        max_retries=0,
        http_client=http_client,
    )


# -- requests with retries, shared by generation, eval runs and the judge -----------------------


class RequestGaveUp(Exception):
    """This one request cannot succeed (retries spent, or refused); record it and go on."""


class RequestAborted(Exception):
    """Every request would fail the same way (bad key, unknown model): stop the run."""


def retry_after_s(exc: openai.APIStatusError) -> float | None:
    """The server's Retry-After (or retry-after-ms) in seconds, when it sent one."""
    headers = exc.response.headers
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        with contextlib.suppress(ValueError):
            return float(raw_ms) / 1000
    raw = headers.get("retry-after")
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return float(raw)
    with contextlib.suppress(TypeError, ValueError):
        wait = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        return max(0.0, float(wait))
    return None


def backoff_delay(
    attempt: int, base_s: float, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential with jitter, and never
    less than the server's Retry-After."""
    exponential = min(_MAX_BACKOFF_S, base_s * float(2**attempt))
    delay = exponential * (0.5 + rng.random() / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
    return delay


def server_message(exc: Exception) -> str:
    """The text of a server's error, scrubbed of keys and tokens (a server may echo the
    request's Authorization header or key in its error body): safe to print, store or log."""
    return scrub_secrets(str(getattr(exc, "message", "") or exc))


def describe_error(exc: Exception) -> str:
    """A short name of a request failure for a stored reason (never the key)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    return type(exc).__name__


def chat_reply_problem(reply: object) -> str | None:
    """Why a 200 reply is not a usable chat completion (no choices, no message), or None."""
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "the reply is not a chat completion (no choices)"
    message = getattr(choices[0], "message", None)
    if message is None or not hasattr(message, "content"):
        return "the reply is not a chat completion (no message)"
    return None


class _UnusableReply(Exception):
    """A 200 whose body cannot be used: retried like a 5xx."""


def _unusable_body() -> tuple[type[Exception], ...]:
    """What a body cut off or not JSON surfaces as from the client."""
    import httpx2
    import openai

    return (
        json.JSONDecodeError,
        UnicodeDecodeError,
        openai.APIResponseValidationError,
        httpx2.DecodingError,
        httpx2.RemoteProtocolError,
    )


async def request_with_retries(
    send: Callable[[], Awaitable[T]],
    *,
    model: str,
    endpoint_display: str,
    max_retries: int,
    backoff_s: float,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    before_attempt: Callable[[], None] | None = None,
    retry_bad_request: Callable[[openai.BadRequestError], bool] | None = None,
    server_name: str = "teacher's server",
    reply_problem: Callable[[T], str | None] | None = chat_reply_problem,
) -> T:
    """Send one request, retrying 429, 5xx, timeouts, connection failures and unusable 200s
    (a body that is cut off, not JSON, or for which ``reply_problem`` names a problem) with
    backoff that honours Retry-After.

    ``before_attempt`` runs before every attempt (count calls, stop at a budget by raising).
    ``retry_bad_request`` may adapt the request after an HTTP 400 and ask for a new attempt.
    Raises RequestGaveUp for a failure of this request, RequestAborted for one every request
    would meet (a refused key, an unknown model).
    """
    import openai

    unusable_body = _unusable_body()
    attempt = 0
    while True:
        if before_attempt is not None:
            before_attempt()
        try:
            try:
                reply = await send()
            except unusable_body as exc:
                raise _UnusableReply(
                    f"the reply's body is not valid JSON ({type(exc).__name__})"
                ) from None
            problem = reply_problem(reply) if reply_problem is not None else None
            if problem is None:
                return reply
            raise _UnusableReply(problem)
        except _UnusableReply as exc:
            if attempt >= max_retries:
                raise RequestGaveUp(
                    f"{exc} on {attempt + 1} attempt(s); gave up after {max_retries} retries"
                ) from None
            await sleep(backoff_delay(attempt, backoff_s, None, rng))
            attempt += 1
        except openai.BadRequestError as exc:
            if retry_bad_request is not None and retry_bad_request(exc):
                continue
            raise RequestGaveUp(
                f"rejected by the server (HTTP 400): {server_message(exc)}"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise RequestAborted(
                f"The {server_name} refused the key (HTTP {exc.status_code}); check "
                "OPENAI_API_KEY or the dashboard's secrets."
            ) from None
        except openai.NotFoundError:
            raise RequestAborted(
                f"The server at {endpoint_display} does not serve model '{model}' (HTTP 404); "
                "check the model name and endpoint."
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as exc:
            retryable = not isinstance(exc, openai.APIStatusError) or (
                exc.status_code == 429 or exc.status_code >= 500
            )
            if not retryable:
                raise RequestGaveUp(f"{describe_error(exc)}: {server_message(exc)}") from None
            if attempt >= max_retries:
                raise RequestGaveUp(
                    f"{describe_error(exc)} on {attempt + 1} attempt(s); gave up after "
                    f"{max_retries} retries"
                ) from None
            wait = retry_after_s(exc) if isinstance(exc, openai.APIStatusError) else None
            await sleep(backoff_delay(attempt, backoff_s, wait, rng))
            attempt += 1


async def run_bounded(
    items: Sequence[W],
    handle: Callable[[W], Awaitable[None]],
    *,
    concurrency: int,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Handle ``items`` with at most ``concurrency`` in flight; stop taking new ones once
    ``stopped()`` is true. ``handle`` deals with its own errors."""
    queue: asyncio.Queue[W] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not stopped():
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await handle(item)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
