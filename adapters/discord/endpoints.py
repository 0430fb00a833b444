"""Where discord.py sends REST calls and opens the gateway.

discord.py keeps both URLs as class attributes (``Route.BASE``, ``DiscordWebSocket.DEFAULT_GATEWAY``),
so they are process-wide: every Discord client in the process uses the last values set here.
"""

from __future__ import annotations

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

DEFAULT_API_URL = Route.BASE
DEFAULT_GATEWAY_URL = DiscordWebSocket.DEFAULT_GATEWAY


def use_endpoints(api_url: str | None, gateway_url: str | None) -> None:
    """Point discord.py at ``api_url`` (e.g. ``http://127.0.0.1:8080/api/v10``) and
    ``gateway_url`` (``ws://...``); None restores Discord's own."""
    Route.BASE = api_url.rstrip("/") if api_url else DEFAULT_API_URL
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url) if gateway_url else DEFAULT_GATEWAY_URL
