"""Parley's log output: one format, and no secret ever written, whoever logs it.

Every line (tracebacks included) is passed through ``Redactor``: the credentials inside any URL
(``https://user:password@host``), Discord interaction tokens and the value of every secret
setting are masked before the line is written, so a library that logs a request URL or an exception cannot leak them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote

from pydantic import SecretStr
from pydantic_settings import BaseSettings

MASK = "***"
# shorter values would mask ordinary words; real tokens and passwords are longer
MIN_SECRET_LENGTH = 6
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@]+@")
_URL_PASSWORD = re.compile(r"://[^\s/@:]*:(?P<password>[^\s/@]+)@")
# Discord interaction tokens (credentials of one interaction, not settings): in webhook and
# interaction callback URLs, and as the "token" of an event discord.py logs at DEBUG.
_DISCORD_TOKEN_PATH = re.compile(r"(?P<path>/(?:webhooks|interactions)/\d+/)[^\s/?'\"]+")
_TOKEN_FIELD = re.compile(r"""(?P<key>['"]token['"]\s*:\s*['"])[^'"]+""")


def secrets_of(sections: Iterable[BaseSettings]) -> set[str]:
    """The secret values of settings sections: every ``SecretStr`` and the password of every
    URL setting, secret or not (as written and percent-decoded)."""
    found: set[str] = set()
    for section in sections:
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
                found.add(value)
            if isinstance(value, str):  # a URL's password, e.g. REDIS_URL, also on its own
                for match in _URL_PASSWORD.finditer(value):
                    found |= {match["password"], unquote(match["password"])}
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, Discord interaction tokens and the given secret values
    masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _DISCORD_TOKEN_PATH.sub(lambda m: f"{m['path']}{MASK}", text)
    text = _TOKEN_FIELD.sub(lambda m: f"{m['key']}{MASK}", text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class Redactor(logging.Formatter):
    """A formatter that masks secrets in the whole formatted record, traceback included."""

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)
        self.secrets: set[str] = set()

    def hide(self, sections: Iterable[BaseSettings]) -> None:
        """Also mask the secrets of ``sections`` from now on."""
        self.secrets |= secrets_of(sections)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def configure(level: str, sections: Iterable[BaseSettings]) -> Redactor:
    """Log to stderr at ``level`` through a ``Redactor`` that knows the secrets of ``sections``."""
    redactor = Redactor()
    redactor.hide(sections)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(redactor)
    logging.basicConfig(level=level, handlers=[handler])
    return redactor


__all__ = ["MASK", "Redactor", "configure", "redact", "secrets_of"]
