"""Files shared with a message: downloaded with the bot token and turned into core Attachments.

Images go to the model as image inputs, text files are inlined, anything else is passed on as
"other" (the core tells the user it was not read). The bot token is only ever sent to Slack's
own hosts (or to the configured API host, for proxies and tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from core.messages import Attachment

log = logging.getLogger("parley.slack")

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/javascript",
        "application/x-sh",
        "application/sql",
        "application/toml",
    }
)
# Slack's own ``filetype`` names for snippets and code files.
TEXT_FILETYPES = frozenset(
    "text markdown post csv tsv json yaml xml html css javascript typescript python ruby go "
    "rust java kotlin scala swift c cpp csharp objc php perl shell powershell sql diff "
    "dockerfile toml ini log r lua haskell clojure elixir erlang dart groovy matlab latex "
    "vb vbscript ocaml fsharp julia".split()
)
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True, slots=True)
class FetchedFiles:
    """What came of a message's files: attachments for the core and notes for the user."""

    attachments: tuple[Attachment, ...] = ()
    notes: tuple[str, ...] = ()


def _kind(file: Mapping[str, Any]) -> str:
    mime = str(file.get("mimetype") or "").lower()
    if mime in IMAGE_TYPES:
        return "image"
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES:
        return "text"
    if str(file.get("filetype") or "").lower() in TEXT_FILETYPES:
        return "text"
    return "other"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


class FileFetcher:
    """Downloads Slack files (``url_private``) with the bot token, within size limits."""

    def __init__(
        self,
        token: str,
        api_url: str,
        *,
        max_image_bytes: int,
        max_text_bytes: int,
    ) -> None:
        self._token = token
        self._api_host = (urlsplit(api_url).hostname or "").lower()
        self.max_image_bytes = max_image_bytes
        self.max_text_bytes = max_text_bytes
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
        """Download what the model can use from ``files``; explain what was left out."""
        attachments: list[Attachment] = []
        notes: list[str] = []
        for file in files:
            name = str(file.get("name") or file.get("title") or "file")
            mime = str(file.get("mimetype") or "application/octet-stream")
            kind = _kind(file)
            if kind == "other":
                attachments.append(Attachment(name, mime, b"", kind="other"))
                continue
            limit = self.max_image_bytes if kind == "image" else self.max_text_bytes
            size = int(file.get("size") or 0)
            if kind == "image" and size > limit:
                notes.append(
                    f"{name} was not read: it is {_megabytes(size)}, "
                    f"over the {_megabytes(limit)} limit for images."
                )
                continue
            url = file.get("url_private_download") or file.get("url_private")
            data = (
                await self._download(str(url), limit, expect_html=mime == "text/html")
                if url
                else None
            )
            if data is None:
                notes.append(f"{name} could not be downloaded from Slack, so I did not read it.")
                continue
            if kind == "image" and len(data) > limit:
                notes.append(
                    f"{name} was not read: it is over the {_megabytes(limit)} limit for images."
                )
                continue
            if kind == "text" and len(data) > limit:
                data = data[:limit].decode("utf-8", errors="ignore").encode("utf-8")
                notes.append(f"{name} is long: I read only its first {limit:,} bytes.")
            attachments.append(Attachment(name, mime, data, kind=kind))  # type: ignore[arg-type]
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
