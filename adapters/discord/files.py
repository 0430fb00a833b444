"""Download the files of a Discord message; ``core.attachments`` decides what is read.

Discord states each file's size and type up front, so a file the model cannot use (or an image
over the limit) is never downloaded; a text file is read up to the limit, with a note.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import aiohttp
import discord

from adapters.discord.translate import file_offer
from core.attachments import AttachmentPolicy, FilePlan
from core.messages import Attachment

log = logging.getLogger("parley.discord")

DOWNLOAD_SECONDS = 30.0


async def read_attachments(
    attachments: Iterable[discord.Attachment], policy: AttachmentPolicy
) -> tuple[tuple[Attachment, ...], tuple[str, ...]]:
    """The files for the core, and notes for the person about files that were not read."""
    files: list[Attachment] = []
    notes: list[str] = []
    for item in attachments:
        offer = file_offer(item)
        plan = policy.plan(offer)
        data = await _download(item, plan) if plan.download else None
        file, note = policy.accept(offer, plan, data, platform="Discord")
        if file is not None:
            files.append(file)
        if note is not None:
            notes.append(note)
    return tuple(files), tuple(notes)


async def _download(item: discord.Attachment, plan: FilePlan) -> bytes | None:
    """The file's bytes, at most one more than the plan allows (so an overrun shows): a file
    Discord says is larger is streamed and only its beginning is read."""
    wanted = plan.max_bytes + 1
    try:
        if item.size < wanted:
            data = await item.read()
        else:
            data = await _beginning(item.url, wanted)
    except (discord.HTTPException, discord.ClientException, aiohttp.ClientError, OSError) as exc:
        log.warning("could not download attachment %s: %s", item.id, type(exc).__name__)
        return None
    return data[:wanted]


async def _beginning(url: str, size: int) -> bytes:
    """The first ``size`` bytes at ``url`` (fewer if the file is shorter)."""
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_SECONDS)
    headers = {"Range": f"bytes=0-{size - 1}"}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        response.raise_for_status()
        data = bytearray()
        while len(data) < size:
            chunk = await response.content.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)
