"""Where the teacher's base URL and key come from, and that the key stays out of sight."""

from __future__ import annotations

import pytest

from core.charts import grid_heatmap_figure
from core.errors import GenerationError
from core.llm import OPENAI_BASE_URL, build_async_client, redact_url, resolve_endpoint


def test_base_url_and_key_follow_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env:8000/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_endpoint().base_url == "http://env:8000/v1"
    assert resolve_endpoint("http://plan/v1").base_url == "http://plan/v1"
    assert resolve_endpoint("http://plan/v1", base_url="http://given/v1").source == "given"
    monkeypatch.setenv("FLYWHEEL_TEACHER_BASE_URL", "http://setting/v1")
    assert resolve_endpoint().base_url == "http://setting/v1"
    assert resolve_endpoint().api_key == "sk-env"
    assert resolve_endpoint(api_key="sk-secrets").api_key == "sk-secrets"
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("FLYWHEEL_TEACHER_BASE_URL")
    assert resolve_endpoint().base_url == OPENAI_BASE_URL


def test_openai_without_a_key_is_refused_local_servers_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(GenerationError, match="OPENAI_API_KEY"):
        build_async_client(resolve_endpoint(), timeout_s=1)
    local = resolve_endpoint(base_url="http://127.0.0.1:11434/v1")
    assert not local.has_key
    assert build_async_client(local, timeout_s=1) is not None


def test_keys_and_credentials_never_show() -> None:
    endpoint = resolve_endpoint(base_url="https://u:p@host:8443/v1/?token=x", api_key="sk-hide")
    assert "sk-hide" not in repr(endpoint)
    assert endpoint.display_url == "https://host:8443/v1"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_heatmap_shows_each_cell_against_its_target() -> None:
    axes = [("topic", ["a", "b"]), ("level", ["x", "y"]), ("style", ["s", "t", "u"])]
    fig = grid_heatmap_figure(axes, {("a", "x", "s"): 10, ("b", "y", "u"): 4}, 10)
    trace = fig.data[0]
    assert list(trace.x) == ["s", "t", "u"]
    assert list(trace.y) == ["a · x", "a · y", "b · x", "b · y"]
    assert trace.z[0][0] == 1.0 and trace.z[3][2] == pytest.approx(0.4)
    assert trace.text[3][2] == "4/10" and trace.text[1][1] == "0/10"


def test_a_server_that_echoes_the_key_never_gets_it_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error text that reaches eval outputs, generation failures and the console is
    scrubbed of the configured key and of anything shaped like a credential."""
    import asyncio
    import random

    import httpx2

    from core.llm import RequestGaveUp, request_with_retries

    key = "sk-echoed-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def echo(request: httpx2.Request) -> httpx2.Response:
        auth = request.headers.get("authorization", "")
        body = {"error": {"message": f"bad request; you sent Authorization: {auth} key={key}"}}
        return httpx2.Response(400, json=body)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(echo))
    client = build_async_client(
        resolve_endpoint(base_url="http://127.0.0.1:9/v1"), timeout_s=5, http_client=http
    )

    async def send() -> object:
        return await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )

    with pytest.raises(RequestGaveUp) as caught:
        asyncio.run(
            request_with_retries(
                send,
                model="m",
                endpoint_display="http://127.0.0.1:9/v1",
                max_retries=0,
                backoff_s=0,
                rng=random.Random(0),
            )
        )
    assert "HTTP 400" in str(caught.value) and "[redacted]" in str(caught.value)
    assert key not in str(caught.value) and "echoed" not in str(caught.value)
