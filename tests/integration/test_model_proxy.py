"""Parley's model client (the openai client on ``adapters.model_http``, as ``parley run`` builds
it) sends through the proxy the environment names, with the proxy's credentials, and not
when ``NO_PROXY`` names the server; and what the proxy sees of a request: the key and the
client's own headers, not the platform it runs on."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from adapters.model_http import model_http_client
from adapters.standin import StandinServer
from core.llm import ChatRequest, Completion, OpenAIChat
from core.ports import PromptMessage
from core.settings import Settings
from tests.fakes.http_proxy import ForwardProxy

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
API_KEY = "sk-parley-proxy-test"


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ForwardProxy]:
    """The proxy, with no other proxy setting left in the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with ForwardProxy() as forward:
        yield forward


async def answer(server: StandinServer) -> Completion:
    """One answer from the model client ``parley run`` builds, on ``server``."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr(API_KEY),
        openai_base_url=server.base_url,
        openai_max_retries=0,
    )
    chat = OpenAIChat.from_settings(settings, http_client=model_http_client)
    request = ChatRequest("gpt-4o", [PromptMessage("user", "hello")], 0.7, 64)
    try:
        items = [item async for item in chat.stream(request)]
        items += [item async for item in chat.stream(request)]  # the proxy kept for the server
    finally:
        await chat.close()
    done = items[-1]
    assert isinstance(done, Completion) and done.text
    return done


async def test_requests_go_through_the_proxy_in_the_environment(
    standin: StandinServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await answer(standin)
    chat_url = f"{standin.base_url}/chat/completions"
    assert proxy.urls.count(chat_url) == 2
    assert len(standin.requests) == 2
    assert proxy.authorizations == [None] * len(proxy.urls)


async def test_credentials_in_the_proxy_url_authenticate_to_the_proxy(
    standin: StandinServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://parley:pr%40xy@"))
    await answer(standin)
    expected = "Basic " + base64.b64encode(b"parley:pr@xy").decode()
    assert proxy.urls.count(f"{standin.base_url}/chat/completions") == 2
    assert proxy.authorizations == [expected] * len(proxy.urls)


async def test_no_proxy_sends_straight_to_the_server(
    standin: StandinServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    await answer(standin)
    assert proxy.urls == []
    assert len(standin.requests) == 2


async def test_a_request_carries_the_key_and_the_clients_headers_not_its_platform(
    standin: StandinServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await answer(standin)
    chat_url = f"{standin.base_url}/chat/completions"
    sent = [h for url, h in zip(proxy.urls, proxy.headers, strict=True) if url == chat_url]
    assert len(sent) == 2
    per_request = {"x-stainless-retry-count", "x-stainless-read-timeout"}
    for headers in sent:
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert headers["content-type"] == "application/json"
        assert headers["accept"] == "application/json"
        assert headers["user-agent"].startswith("AsyncOpenAI/Python")
        assert headers["x-stainless-retry-count"] == "0"
        assert "accept-encoding" in headers
        platform = [n for n in headers if n.startswith("x-stainless-") and n not in per_request]
        assert platform == []
