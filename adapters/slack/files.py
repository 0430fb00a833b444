"""Files shared with a message: downloaded with the bot token, within the core's limits.

Which files the model can read, how much of them, and what the person is told about the rest
is ``core.attachments``' decision; this module only describes Slack's files as ``FileOffer``s
and downloads them. The bot token is only ever sent to Slack's own hosts (or to the configured
API host, for proxies and tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from core.attachments import AttachmentPolicy, FileOffer
from core.messages import Attachment

log = logging.getLogger("parley.slack")

PLATFORM_NAME = "Slack"
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True, slots=True)
class FetchedFiles:
    """What came of a message's files: attachments for the core and notes for the user."""

    attachments: tuple[Attachment, ...] = ()
    notes: tuple[str, ...] = ()


def offer(file: Mapping[str, Any]) -> FileOffer:
    """A Slack file object as the core's ``FileOffer`` (Slack's ``filetype`` as its type)."""
    size = file.get("size")
    return FileOffer(
        name=str(file.get("name") or file.get("title") or "file"),
        mime_type=str(file.get("mimetype") or ""),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        platform_type=str(file.get("filetype") or ""),
    )


class FileFetcher:
    """Downloads Slack files (``url_private``) with the bot token, within size limits."""

    def __init__(self, token: str, api_url: str, policy: AttachmentPolicy) -> None:
        self._token = token
        self._api_host = (urlsplit(api_url).hostname or "").lower()
        self.policy = policy
        self.session: aiohttp.ClientSession | None = None

    def trusted(self, url: str) -> bool:
        """Whether ``url`` belongs to Slack (or the configured API host), so the token may go."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("https", "http") or not host:
            return False
        if host == self._api_host:
            return True
        if parts.scheme != "https":
            return False
        # files.slack.com for slack.com/api, files.slack-gov.com for GovSlack, and so on.
        domains = {"slack.com", self._api_host}
        return any(host == d or host.endswith("." + d) for d in domains if "." in d)

    async def fetch(self, files: Iterable[Mapping[str, Any]]) -> FetchedFiles:
        """Download what the model can use from ``files``; the core says what was left out."""
        attachments: list[Attachment] = []
        notes: list[str] = []
        for file in files:
            described = offer(file)
            plan = self.policy.plan(described)
            data = None
            url = file.get("url_private_download") or file.get("url_private")
            if plan.download and url:
                html = described.mime == "text/html"
                data = await self._download(str(url), plan.max_bytes, expect_html=html)
            attachment, note = self.policy.accept(described, plan, data, platform=PLATFORM_NAME)
            if attachment is not None:
                attachments.append(attachment)
            if note is not None:
                notes.append(note)
        return FetchedFiles(tuple(attachments), tuple(notes))

    async def _download(self, url: str, limit: int, *, expect_html: bool) -> bytes | None:
        """At most ``limit + 1`` bytes of ``url``, or None when it cannot be fetched."""
        if not self.trusted(url):
            log.warning("not downloading a file from an untrusted host")
            return None
        headers = {"Authorization": f"Bearer {self._token}"}
        session = self.session
        owned = session is None or session.closed
        if owned:
            session = aiohttp.ClientSession()
        assert session is not None
        try:
            async with session.get(
                url, headers=headers, timeout=DOWNLOAD_TIMEOUT, max_redirects=3
            ) as response:
                if response.status != 200:
                    log.warning("file download answered HTTP %s", response.status)
                    return None
                if response.content_type == "text/html" and not expect_html:
                    # Slack answers a login page when the token may not read files.
                    log.warning("file download returned a web page (is files:read granted?)")
                    return None
                data = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        break
                return bytes(data[: limit + 1])
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("file download failed: %s", type(exc).__name__)
            return None
        finally:
            if owned:
                await session.close()
