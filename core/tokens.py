"""Exact token counts for GPT-4o with tiktoken's ``o200k_base``, loaded from package data.

The encoding ships inside Parley (``core/data/o200k_base.tiktoken``) and is checked against its
sha256, so nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import tiktoken

if TYPE_CHECKING:
    from core.ports import PromptMessage

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Per-message overhead of the chat format (role and separators), as OpenAI documents for the
# gpt-4o family; a reply is primed with 3 more tokens.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMER = 3
# An image at "auto" detail costs 85 tokens plus 170 per 512px tile after scaling to fit 2048px
# with the short side at most 768px: at most 8 tiles, 1,445 tokens. Parley budgets that bound.
TOKENS_PER_IMAGE = 1445


def _bundled_ranks() -> dict[bytes, int]:
    """The o200k_base ranks from the bundled file (verified by sha256)."""
    data = (resources.files("core") / "data" / "o200k_base.tiktoken").read_bytes()
    # Parsed here rather than by tiktoken's loader, which would copy the file into a cache
    # directory under /tmp on every new install path.
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError("the bundled o200k_base.tiktoken is corrupt (sha256 mismatch)")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


class _RanksOnDemand(Mapping[bytes, int]):
    """Stands in for the Python copy of the ranks an encoding keeps (tiktoken reads it only
    to pickle the encoding): read from the bundled file again if anything ever asks."""

    def __init__(self) -> None:
        self._ranks: dict[bytes, int] | None = None

    def _loaded(self) -> dict[bytes, int]:
        if self._ranks is None:
            self._ranks = _bundled_ranks()
        return self._ranks

    def __getitem__(self, token: bytes) -> int:
        return self._loaded()[token]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __reduce__(self) -> tuple[Callable[[], dict[bytes, int]], tuple[()]]:
        return _bundled_ranks, ()


def _release_freed_memory() -> None:
    """Hand the memory freed after building the encoding back to the system (glibc keeps it
    in its arenas otherwise); nothing to do with other C libraries."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """The o200k_base encoding, built from the bundled ranks.

    The ranks live on in tiktoken's Rust core; the Python dict of them (about 25 MB) is freed
    once the core is built. A tiktoken that keeps no such copy is left as it is."""
    ranks = _bundled_ranks()
    built = tiktoken.Encoding(
        name="o200k_base",
        pat_str=_O200K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    )
    if getattr(built, "_mergeable_ranks", None) is ranks:
        with contextlib.suppress(AttributeError, TypeError):
            built._mergeable_ranks = _RanksOnDemand()  # type: ignore[assignment]
    del ranks
    _release_freed_memory()
    return built


def count_text(text: str) -> int:
    """Number of o200k_base tokens in ``text`` (special-token strings count as plain text)."""
    return len(encoding().encode_ordinary(text))


def count_message(text: str, images: int = 0) -> int:
    """Tokens one chat message costs in a request: its text, its images and the format overhead."""
    return count_text(text) + TOKENS_PER_MESSAGE + images * TOKENS_PER_IMAGE


def count_prompt(messages: Iterable[PromptMessage]) -> int:
    """Input tokens of a request with these messages, as the API counts them (reply primer
    included)."""
    return TOKENS_REPLY_PRIMER + sum(count_message(m.text, len(m.images)) for m in messages)
