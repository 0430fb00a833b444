"""The composition root: reads settings once and wires storage, the model client and the core."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from adapters.model_http import model_http_client
from bots.logs import redact
from bots.shared import RedisSettings, open_shared
from core import budget
from core.attachments import AttachmentPolicy
from core.errors import ConfigError, SchemaOutOfDate
from core.llm import ChatModel, OpenAIChat
from core.ports import Store
from core.pricing import STANDIN_MODEL
from core.service import ConversationService
from core.settings import Settings, load
from core.store import schema
from core.store.sql import SqlStore, make_engine
from core.throttle import UserRate
from core.tokens import encoding

if TYPE_CHECKING:
    from adapters.standin.server import StandinServer
    from bots.metrics import Metrics

log = logging.getLogger("parley")

# Container objects allocated (net of those freed) before the cycle collector looks at the
# newest ones. Python's default, 700, is reached every few answers at 100 conversations at
# once, while their requests, rows and events are still alive: each collection then walks
# them, moves them to an older generation and collects that one too, about a quarter of a
# worker's CPU per answer (bench/core_overhead.py). At this threshold almost all of them are
# freed by reference counting before it is reached.
GC_YOUNG_THRESHOLD = 10_000


@dataclass
class Parley:
    """Everything an adapter needs from the core, built from the core's Settings.

    ``close()`` closes what ``build`` opened; a store or model passed to ``build`` stays the
    caller's to close.
    """

    settings: Settings
    store: Store
    llm: ChatModel
    service: ConversationService
    attachments: AttachmentPolicy
    offline_server: StandinServer | None = None
    opened: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)
    metrics: Metrics | None = None

    @property
    def offline(self) -> bool:
        return self.offline_server is not None

    async def close(self) -> None:
        await self.opened.aclose()


def attachment_policy(settings: Settings) -> AttachmentPolicy:
    """The file limits every adapter applies (PARLEY_MAX_IMAGE_BYTES, PARLEY_MAX_TEXT_FILE_BYTES)."""
    return AttachmentPolicy(settings.parley_max_image_bytes, settings.parley_max_text_file_bytes)


def database_error(url: str, exc: BaseException) -> ConfigError:
    """One line saying which database could not be opened and why (password hidden)."""
    try:
        where = make_url(url).render_as_string(hide_password=True)
    except ValueError:
        where = redact(url)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return ConfigError(f"cannot open the database at DATABASE_URL={where}: {reason}")


async def prepare_schema(store: SqlStore, settings: Settings, *, auto_upgrade: bool) -> None:
    """Refuse to run on an out-of-date schema; SQLite databases are upgraded automatically."""
    if await schema.is_up_to_date(store.engine):
        return
    if auto_upgrade and store.engine.dialect.name == "sqlite":
        log.info("upgrading the SQLite schema to %s", schema.head_revision())
        await schema.upgrade(store.engine)
        return
    raise SchemaOutOfDate(
        "The database schema is out of date. Run `parley db upgrade` (with the same DATABASE_URL)."
    )


async def open_store(settings: Settings, *, auto_upgrade: bool) -> SqlStore:
    """The SQL store at ``DATABASE_URL``, its schema checked (and upgraded where allowed)."""
    store = SqlStore(
        make_engine(settings.database_url, log_parameters=settings.parley_log_content),
        patience=settings.database_retry_seconds,
        lease_seconds=settings.database_lease_seconds,
    )
    try:
        await prepare_schema(store, settings, auto_upgrade=auto_upgrade)
    except (OSError, DBAPIError, TypeError) as exc:
        # TypeError: the driver refused an option given in the URL's query string
        await store.close()
        raise database_error(settings.database_url, exc) from None
    except BaseException:
        await store.close()
        raise
    return store


async def open_model(
    settings: Settings, opened: AsyncExitStack
) -> tuple[OpenAIChat, StandinServer | None]:
    """The OpenAI client; without a key or endpoint, pointed at a stand-in server started here."""
    offline_server = None
    base_url = settings.openai_base_url
    if settings.offline:
        from adapters.standin.server import StandinServer

        offline_server = StandinServer(record=False, model_name=STANDIN_MODEL)
        base_url = await offline_server.start()
        opened.push_async_callback(offline_server.stop)
    llm = OpenAIChat.from_settings(settings, base_url=base_url, http_client=model_http_client)
    opened.push_async_callback(llm.close)
    return llm, offline_server


async def build(
    settings: Settings,
    *,
    store: Store | None = None,
    llm: ChatModel | None = None,
    auto_upgrade: bool = True,
    redis: RedisSettings | None = None,
    metrics: Metrics | None = None,
) -> Parley:
    """Build Parley's core from ``settings``, or around the ``store`` and ``llm`` given.

    A given store or model is used as it is: no schema check, no stand-in server, not closed by
    ``Parley.close()``. Without a model and without a key, the offline stand-in is started.
    With ``REDIS_URL`` (``redis``, else read from the environment) the write budgets and the
    per-user message limit are shared with every worker through Redis. With ``metrics``,
    answers and the write budget are counted there.
    """
    collect_less_often()
    fewer_malloc_arenas()
    fixed_malloc_thresholds()
    opened = AsyncExitStack()
    offline_server = None
    try:
        rate = await open_shared(settings, redis or load(RedisSettings), opened)
        if store is None:
            store = await open_store(settings, auto_upgrade=auto_upgrade)
            opened.push_async_callback(store.close)
        if llm is None:
            llm, offline_server = await open_model(settings, opened)
        # The service counts tokens whatever the model: load the tokenizer now, off the event
        # loop, rather than on the first message.
        await asyncio.to_thread(encoding)
        service = new_service(store, llm, settings, rate, metrics, opened)
    except BaseException:
        await opened.aclose()
        raise
    return Parley(
        settings,
        store,
        llm,
        service,
        attachment_policy(settings),
        offline_server,
        opened,
        metrics,
    )


def collect_less_often() -> None:
    """Raise the cycle collector's threshold for the newest objects to ``GC_YOUNG_THRESHOLD``
    (never lower it); the older generations keep theirs."""
    young, *older = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


# glibc's malloc gives each thread that allocates an arena of its own (up to eight per core),
# and each keeps memory it freed: a worker's store, database and resolver threads held about
# 4.5 MB more RSS that way after 10,000 conversations (bench/core_overhead.py --known). The
# event loop holds the GIL for nearly every allocation, so two arenas lose nothing to locking.
MALLOC_ARENAS = 2
# glibc's malloc also raises its mmap threshold to the size of the largest block it has freed
# (and its trim threshold to twice that): once the tokenizer's build freed its table of ranks
# (about 10 MB), every block up to that size came from the heap, where what was freed next
# stayed as holes among what was kept, about 4 MB more RSS on PostgreSQL after 10,000
# conversations (bench/core_overhead.py --known). Fixed thresholds keep blocks of 1 MiB and
# more in mappings of their own, given back when freed, and up to 2 MiB free at the top of a
# heap before it is trimmed.
MALLOC_MMAP_THRESHOLD = 1 << 20
MALLOC_TRIM_THRESHOLD = 2 << 20
# mallopt's parameter numbers in glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``: True when the C library took the setting (elsewhere
    nothing changes)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(param, value))
    except (AttributeError, OSError, TypeError):
        return False


def fewer_malloc_arenas() -> bool:
    """At most ``MALLOC_ARENAS`` malloc arenas for the threads started from now on (glibc;
    elsewhere nothing changes): True when the C library took the setting."""
    return _mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def fixed_malloc_thresholds() -> bool:
    """glibc's mmap and trim thresholds fixed at ``MALLOC_MMAP_THRESHOLD`` and
    ``MALLOC_TRIM_THRESHOLD`` instead of following the largest block freed: True when the C
    library took both."""
    mmap = _mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    return _mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) and mmap


def new_service(
    store: Store,
    llm: ChatModel,
    settings: Settings,
    rate: UserRate | None,
    metrics: Metrics | None,
    opened: AsyncExitStack,
) -> ConversationService:
    """The conversation service; with ``metrics``, one whose answers are counted, and the
    deployment's write budget counted too (until ``opened`` closes)."""
    if metrics is None:
        return ConversationService(store, llm, settings, rate=rate)
    from bots.metrics import MeteredBudget, MeteredService

    previous = budget.use(MeteredBudget(budget.shared(), metrics))
    opened.callback(budget.use, previous)
    service = MeteredService(store, llm, settings, rate=rate)
    service.metrics = metrics
    return service
