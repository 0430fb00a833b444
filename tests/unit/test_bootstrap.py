"""The composition root: fakes go in as they are, and close() closes only what build opened."""

from __future__ import annotations

import ctypes
import gc
import platform
import socket

import pytest

from bots.bootstrap import (
    GC_YOUNG_THRESHOLD,
    MALLOC_MMAP_THRESHOLD,
    build,
    fewer_malloc_arenas,
    fixed_malloc_thresholds,
)
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from core.store import schema
from core.store.sql import SqlStore, make_engine
from tests.fakes.memory import MemoryStore, ScriptedModel


class ClosingStore(MemoryStore):
    """A MemoryStore that remembers being closed."""

    closed = False

    async def close(self) -> None:
        self.closed = True


class ClosingSqlStore(SqlStore):
    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


def offline_settings(tmp_path) -> Settings:
    """No key and no endpoint: on its own, build would start the stand-in server."""
    return Settings(
        _env_file=None,
        openai_api_key=None,
        openai_base_url=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/parley.db",
    )


async def test_a_given_store_and_model_are_used_as_they_are(tmp_path):
    store, model = ClosingStore(), ScriptedModel(reply=lambda request: "from the fake")
    parley = await build(offline_settings(tmp_path), store=store, llm=model)
    try:
        assert parley.store is store and parley.llm is model and parley.service.llm is model
        assert not parley.offline, "no stand-in server when a model is given"
        inbound = Inbound(ConversationKey("test", "c", "t"), Author("u"), "hello")
        events = [e async for e in parley.service.answer(inbound)]
        assert [e.text for e in events if isinstance(e, FinalText)] == ["from the fake"]
        assert len(model.requests) == 1 and len(store.messages) == 2
    finally:
        await parley.close()
    assert not store.closed, "what the caller passed in is the caller's to close"


async def test_a_given_store_gets_no_schema_check_and_stays_open(tmp_path):
    store = ClosingSqlStore(make_engine(f"sqlite+aiosqlite:///{tmp_path}/empty.db"))
    try:
        parley = await build(
            offline_settings(tmp_path), store=store, llm=ScriptedModel(), auto_upgrade=False
        )
        assert parley.store is store and not parley.offline
        await parley.close()
        assert not store.closed
        assert not await schema.is_up_to_date(store.engine), "build left the schema alone"
    finally:
        await store.close()


async def test_close_stops_the_stand_in_and_the_store_build_opened(tmp_path):
    parley = await build(offline_settings(tmp_path))
    assert parley.offline and parley.offline_server is not None
    port = parley.offline_server.port
    assert await schema.is_up_to_date(parley.store.engine)  # type: ignore[attr-defined]
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    await parley.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_build_collects_cycles_less_often_and_never_more_often(tmp_path):
    before = gc.get_threshold()
    store, model = ClosingStore(), ScriptedModel(reply=lambda request: "from the fake")
    try:
        gc.set_threshold(700, *before[1:])
        parley = await build(offline_settings(tmp_path), store=store, llm=model)
        await parley.close()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        gc.set_threshold(GC_YOUNG_THRESHOLD * 2, *before[1:])
        parley = await build(offline_settings(tmp_path), store=store, llm=model)
        await parley.close()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD * 2
    finally:
        gc.set_threshold(*before)


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the arena limit is glibc's malloc setting"
)
def test_glibc_takes_the_malloc_arena_limit():
    assert fewer_malloc_arenas()


def _mapped_on_its_own(block: int) -> bool:
    """Whether malloc gave ``block`` a mapping of its own: the IS_MMAPPED bit of its chunk's
    size word, just before it (one block's own fact, whatever other threads allocate)."""
    return bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2)


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's malloc settings"
)
def test_a_large_block_freed_does_not_raise_the_mmap_threshold():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    assert fixed_malloc_thresholds()
    # glibc on its own would serve the next block from the heap after freeing a larger one
    large = libc.malloc(8 * MALLOC_MMAP_THRESHOLD)
    libc.free(large)
    block = libc.malloc(2 * MALLOC_MMAP_THRESHOLD)
    try:
        assert _mapped_on_its_own(block)
    finally:
        libc.free(block)
