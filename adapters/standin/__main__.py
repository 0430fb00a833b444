"""Run the stand-in model on its own: ``python -m adapters.standin --port 8000``.

Prints the base URL to give an OpenAI client (``OPENAI_BASE_URL``), then serves until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from adapters.standin.server import StandinServer


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.standin",
        description="Parley's offline stand-in model: an OpenAI-compatible chat server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds to wait before each streamed chunk"
    )
    parser.add_argument(
        "--unknown-model",
        action="append",
        default=[],
        metavar="NAME",
        help="answer 404 model_not_found for this model (repeatable)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    server = StandinServer(
        args.host, args.port, args.latency, set(args.unknown_model), record=False
    )
    async with server:
        print(server.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    args = _parse(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # e.g. the port is taken
        sys.exit(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")


if __name__ == "__main__":
    main()
