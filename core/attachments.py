"""Which files the model can read, and what the person is told about the others.

Adapters only download: they describe each file as a ``FileOffer``, ask ``AttachmentPolicy``
for a ``FilePlan`` (what kind it is, how many bytes to fetch, or the note to show instead), then
hand what they downloaded to ``AttachmentPolicy.accept``. So Slack, Discord and the terminal
agree on the types, the limits and the sentences.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from core import sentences
from core.messages import Attachment

Kind = Literal["image", "text", "other"]

# What GPT-4o accepts as image input.
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
# Platform file type names for snippets and code (Slack's ``filetype``).
TEXT_FILETYPES = frozenset(
    "text markdown post csv tsv json yaml xml html css javascript typescript python ruby go "
    "rust java kotlin scala swift c cpp csharp objc php perl shell powershell sql diff "
    "dockerfile toml ini log r lua haskell clojure elixir erlang dart groovy matlab latex "
    "vb vbscript ocaml fsharp julia".split()
)
TEXT_SUFFIXES = frozenset(
    ".txt .md .rst .py .js .ts .tsx .jsx .json .yaml .yml .toml .ini .cfg .conf .csv .tsv .log "
    ".sql .sh .go .rs .java .kt .c .h .cpp .hpp .cs .rb .php .html .css .xml .swift .diff "
    ".patch .example".split()
)


@dataclass(frozen=True, slots=True)
class FileOffer:
    """A file as the platform describes it, before anything is downloaded.

    ``size`` is the size the platform states (None when unknown); ``platform_type`` is the
    platform's own name for the file's type, when it has one (Slack's ``filetype``).
    """

    name: str
    mime_type: str = ""
    size: int | None = None
    platform_type: str = ""

    @property
    def mime(self) -> str:
        """The MIME type without parameters, guessed from the name when the platform gave none."""
        mime = self.mime_type or mimetypes.guess_type(self.name)[0] or ""
        return mime.split(";")[0].strip().lower() or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class FilePlan:
    """What to do with one file: download at most ``max_bytes`` + 1 bytes, or skip it.

    ``download`` is False for files the model cannot read (``kind`` "other") and for files
    refused up front; ``note`` then says why, when the person should be told.
    """

    kind: Kind
    max_bytes: int
    download: bool
    note: str | None = None


def kind_of(offer: FileOffer) -> Kind:
    """Image (sent to the model as an image), text (inlined into the prompt) or other."""
    mime = offer.mime
    if mime in IMAGE_TYPES:
        return "image"
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES:
        return "text"
    if offer.platform_type.lower() in TEXT_FILETYPES:
        return "text"
    if PurePosixPath(offer.name.lower()).suffix in TEXT_SUFFIXES:
        return "text"
    return "other"


@dataclass(frozen=True, slots=True)
class AttachmentPolicy:
    """Size limits for the files a message may carry (``PARLEY_MAX_IMAGE_BYTES``,
    ``PARLEY_MAX_TEXT_FILE_BYTES``)."""

    max_image_bytes: int
    max_text_bytes: int

    def plan(self, offer: FileOffer) -> FilePlan:
        """Whether to download ``offer``, and how much of it."""
        kind = kind_of(offer)
        if kind == "other":
            return FilePlan(kind, 0, download=False)
        if kind == "image":
            limit = self.max_image_bytes
            if offer.size is not None and offer.size > limit:
                note = sentences.file_too_large(offer.name, limit, offer.size)
                return FilePlan(kind, limit, download=False, note=note)
            return FilePlan(kind, limit, download=True)
        # A long text file is still useful: its beginning is read.
        return FilePlan(kind, self.max_text_bytes, download=True)

    def accept(
        self, offer: FileOffer, plan: FilePlan, data: bytes | None, *, platform: str
    ) -> tuple[Attachment | None, str | None]:
        """The attachment for the core (or None), and a note for the person (or None).

        ``data`` is what the adapter downloaded (None when the download failed).
        """
        if plan.kind == "other":
            return Attachment(offer.name, offer.mime, b"", kind="other"), None
        if not plan.download:
            return None, plan.note
        if data is None:
            return None, sentences.file_not_downloaded(offer.name, platform)
        if len(data) > plan.max_bytes:
            if plan.kind == "image":
                return None, sentences.file_too_large(offer.name, plan.max_bytes)
            data = data[: plan.max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
            note = sentences.file_truncated(offer.name, plan.max_bytes)
            return Attachment(offer.name, offer.mime, data, kind="text"), note
        return Attachment(offer.name, offer.mime, data, kind=plan.kind), None


__all__ = ["AttachmentPolicy", "FileOffer", "FilePlan", "Kind", "kind_of"]
