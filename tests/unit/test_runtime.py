"""The worker runtime, driven with small fake adapters and real signals to this process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from bots.runtime import run_adapters
from core.errors import ConfigError, ParleyError

GUARD = 10  # seconds; only so a broken runtime fails instead of hanging the suite


class FakeAdapter:
    """A PlatformAdapter whose start, stop and failure the test decides."""

    def __init__(
        self,
        name: str,
        *,
        start_error: Exception | None = None,
        stop_error: Exception | None = None,
        stop_waits_for: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.start_error = start_error
        self.stop_error = stop_error
        self.stop_waits_for = stop_waits_for
        self.started = False
        self.stopping = asyncio.Event()
        self.stopped = False
        self.watched = asyncio.Event()
        self.failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopping.set()
        if self.stop_waits_for is not None:
            await self.stop_waits_for.wait()
        if self.stop_error is not None:
            raise self.stop_error
        self.stopped = True

    async def wait_failed(self) -> BaseException:
        self.watched.set()
        return await self.failure


def never_exit(code: int):  # pragma: no cover - a failing test shows it was called
    raise AssertionError(f"exit_now({code}) was called")


async def running(*adapters: FakeAdapter) -> None:
    """Wait until the runtime watches every adapter (its signal handlers are in place)."""
    await asyncio.wait_for(asyncio.gather(*(a.watched.wait() for a in adapters)), GUARD)


def no_signal_handler_left() -> bool:
    loop = asyncio.get_running_loop()
    return not any(loop.remove_signal_handler(sig) for sig in (signal.SIGINT, signal.SIGTERM))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_every_adapter_and_exits_0(sig):
    adapters = [FakeAdapter("slack"), FakeAdapter("discord")]
    run = asyncio.create_task(run_adapters(adapters, exit_now=never_exit))
    await running(*adapters)
    assert all(a.started and not a.stopping.is_set() for a in adapters)
    os.kill(os.getpid(), sig)
    assert await asyncio.wait_for(run, GUARD) == 0
    assert all(a.stopped for a in adapters)
    assert no_signal_handler_left()


async def test_an_adapter_that_fails_for_good_stops_all_and_exits_1(caplog):
    slack, discord = FakeAdapter("slack"), FakeAdapter("discord")
    run = asyncio.create_task(run_adapters([slack, discord], exit_now=never_exit))
    await running(slack, discord)
    discord.failure.set_result(ConnectionResetError("gateway closed with 4004"))
    with caplog.at_level(logging.ERROR, logger="parley"):
        assert await asyncio.wait_for(run, GUARD) == 1
    assert slack.stopped and discord.stopped
    assert "discord stopped for good: gateway closed with 4004" in caplog.text
    assert "slack stopped" not in caplog.text
    assert no_signal_handler_left()


async def test_an_error_raised_while_waiting_for_a_failure_is_a_failure():
    slack = FakeAdapter("slack")
    run = asyncio.create_task(run_adapters([slack], exit_now=never_exit))
    await running(slack)
    slack.failure.set_exception(RuntimeError("watch broke"))
    assert await asyncio.wait_for(run, GUARD) == 1
    assert slack.stopped


async def test_adapters_stop_at_once_not_one_after_the_other():
    """Each stop waits until the other has begun: only stops run together can finish."""
    first_stopping, second_stopping = asyncio.Event(), asyncio.Event()
    first = FakeAdapter("slack", stop_waits_for=second_stopping)
    second = FakeAdapter("discord", stop_waits_for=first_stopping)
    first.stopping, second.stopping = first_stopping, second_stopping
    run = asyncio.create_task(run_adapters([first, second], exit_now=never_exit))
    await running(first, second)
    first.failure.set_result(OSError("gone"))
    assert await asyncio.wait_for(run, GUARD) == 1
    assert first.stopped and second.stopped


async def test_a_stop_that_fails_is_logged_and_the_others_still_stop(caplog):
    broken = FakeAdapter("slack", stop_error=RuntimeError("socket already closed"))
    fine = FakeAdapter("discord")
    run = asyncio.create_task(run_adapters([broken, fine], exit_now=never_exit))
    await running(broken, fine)
    with caplog.at_level(logging.ERROR, logger="parley"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, GUARD) == 0
    assert fine.stopped
    assert "stopping slack failed" in caplog.text


async def test_a_second_signal_exits_at_once_with_130():
    never = asyncio.Event()
    hanging = FakeAdapter("slack", stop_waits_for=never)
    exits: list[int] = []
    exited = asyncio.Event()

    def exit_now(code: int):  # os._exit would end the process here
        exits.append(code)
        exited.set()

    run = asyncio.create_task(run_adapters([hanging], exit_now=exit_now))
    await running(hanging)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(hanging.stopping.wait(), GUARD)
    assert exits == []
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(exited.wait(), GUARD)
    assert exits == [130]
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert no_signal_handler_left()


async def test_an_unexpected_start_error_names_the_adapter_and_everything_is_stopped():
    slack = FakeAdapter("slack")
    discord = FakeAdapter("discord", start_error=OSError("connection refused"))
    with pytest.raises(ParleyError) as info:
        await run_adapters([slack, discord], exit_now=never_exit)
    assert str(info.value) == "discord could not start: OSError: connection refused"
    assert slack.stopped and discord.stopped
    assert not slack.watched.is_set()


async def test_a_parley_error_at_start_goes_out_as_it_is():
    refused = ConfigError("DISCORD_TOKEN: Discord rejected the token")
    discord = FakeAdapter("discord", start_error=refused)
    with pytest.raises(ConfigError) as info:
        await run_adapters([discord], exit_now=never_exit)
    assert info.value is refused
    assert discord.stopped


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_parley_run_runs_on_the_event_loop_chosen(choice, module):
    from bots.cli import loop_runner

    assert loop_runner(choice)(_loop_module()) == module


def test_a_bad_event_loop_setting_is_refused_naming_it(monkeypatch):
    from core.settings import load_settings

    monkeypatch.setenv("PARLEY_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match="PARLEY_EVENT_LOOP"):
        load_settings()
