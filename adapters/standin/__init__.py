"""Parley's offline stand-in model: an OpenAI-compatible server that needs no API key."""

from adapters.standin.server import StandinServer

__all__ = ["StandinServer"]
