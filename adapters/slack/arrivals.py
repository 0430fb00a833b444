"""A message is claimed when it arrives, before Slack is told it arrived.

Slack does not deliver an event again once it was acknowledged (HTTP 200, or the Socket Mode
ack). So a message Parley may answer is claimed in the database first, with the event as Slack
sent it, in one short transaction; only then does bolt acknowledge it. A worker that dies
between the two leaves a "received" claim that another worker takes over once its lease runs
out, and handles as if the event had just arrived (``SlackAdapter.resume``). A redelivery of a
message claimed by a live worker is acknowledged and dropped.

The ack waits for the claim (Slack gives up waiting after 3 s and delivers the event again:
that delivery waits for the same row and is dropped once the first claim is in). Only when the
database is out for longer than ``ARRIVAL_PATIENCE`` seconds is the event acknowledged before
its claim is recorded; its handler then waits for the claim (or, when it failed, claims the
message itself once the database is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.slack import translate
from core.recovery import received_request
from core.service import ConversationService

log = logging.getLogger("parley.slack")

ARRIVAL_PATIENCE = 10.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """A message or mention event as the adapter handles it, and what it keeps to handle it
    again in another worker (``payload``)."""

    body: Mapping[str, Any]
    event: Mapping[str, Any]
    bot_user_id: str | None
    bot_id: str | None

    @property
    def mention(self) -> bool:
        return self.event.get("type") == "app_mention"

    @property
    def payload(self) -> dict[str, Any]:
        """What is kept with the claim (not the body's verification ``token``)."""
        body = {name: value for name, value in self.body.items() if name != "token"}
        return {"body": body, "bot_user_id": self.bot_user_id, "bot_id": self.bot_id}

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Arrival | None:
        """The arrival ``payload`` kept; None when it is not one."""
        body = payload.get("body")
        event = body.get("event") if isinstance(body, Mapping) else None
        if not isinstance(body, Mapping) or not isinstance(event, Mapping):
            return None
        bot_user, bot = payload.get("bot_user_id"), payload.get("bot_id")
        return cls(
            body,
            event,
            bot_user if isinstance(bot_user, str) else None,
            bot if isinstance(bot, str) else None,
        )

    def answerable(self, *, follow_threads: bool) -> translate.SlackMessage | None:
        """The message, when Parley may answer it (no network asked: a thread reply is
        answered only in a thread Parley answered in, which its handler checks)."""
        if translate.ignore_reason(self.event, self.bot_user_id, self.bot_id) is not None:
            return None
        message = translate.parse_message(self.body, self.event)
        route = translate.route(
            message,
            mention=self.mention,
            bot_user_id=self.bot_user_id,
            follow_threads=follow_threads,
        )
        return None if route == "ignore" else message


async def claim_on_arrival(
    service: ConversationService, arrival: Arrival, message: translate.SlackMessage
) -> bool | None:
    """Claim ``message`` as received: True when claimed, False when it is a redelivery of one
    claimed already, None when the database could not say."""
    try:
        return await service.claim_event(
            translate.PLATFORM,
            message.dedupe_id,
            received=True,
            request=received_request(arrival.payload),
            conversation=str(message.key),
            sent_at=message.sent_at,
        )
    except Exception as exc:
        log.warning("slack: claiming a message on arrival failed (%s)", type(exc).__name__)
        return None


@dataclass(slots=True)
class Claim:
    """The claim of one message on arrival: ``event_id``, and whether it was claimed (True),
    is a redelivery (False) or could not be (None), once ``claiming`` is done."""

    event_id: str
    claiming: asyncio.Future[bool | None]

    @classmethod
    async def start(
        cls, service: ConversationService, arrival: Arrival, message: translate.SlackMessage
    ) -> Claim:
        """Claim ``message``, waiting at most ``ARRIVAL_PATIENCE`` s (the claim goes on after
        that, and its handler waits for it)."""
        claiming = asyncio.ensure_future(claim_on_arrival(service, arrival, message))
        await asyncio.wait({claiming}, timeout=ARRIVAL_PATIENCE)
        if not claiming.done():
            log.info("slack: acknowledging a message before its claim is recorded (slow database)")
        return cls(message.dedupe_id, claiming)

    @classmethod
    def taken(cls, event_id: str) -> Claim:
        """A claim this worker holds already (taken over from a stopped worker)."""
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        return cls(event_id, done)

    @property
    def redelivered(self) -> bool:
        """Known now to be a redelivery of a message claimed already."""
        return self.claiming.done() and self.claiming.result() is False


__all__ = ["ARRIVAL_PATIENCE", "Arrival", "Claim", "claim_on_arrival"]
