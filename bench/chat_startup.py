"""How long `parley chat` takes to show its first prompt, and its first answer.

Starts `parley chat` in a pseudo-terminal (offline stand-in, SQLite in a temporary directory)
several times, measures the time from spawn to the first prompt and from there to the first
answer (the core starts while the prompt is up), prints a table and writes JSON
(bench/results/chat_startup.json). The goal is a first prompt in under 1 s on a quiet machine.

    python bench/chat_startup.py --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pexpect

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("parley")
COMMAND = str(SCRIPT) if SCRIPT.exists() else f"{sys.executable} -m bots.cli"


def one_run(workdir: Path) -> dict[str, float]:
    """Seconds to the first prompt, and from the first prompt to the end of the first answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DATABASE_URL"))}
    env.update(HOME=str(workdir), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm-256color")
    start = time.perf_counter()
    child = pexpect.spawn(
        f"{COMMAND} chat", cwd=str(workdir), env=env, encoding="utf-8", timeout=60
    )
    try:
        child.expect_exact("you>")
        prompt = time.perf_counter()
        child.send("hello\r")
        child.expect_exact("(offline stand-in): ")
        answered = time.perf_counter()
        child.send("/quit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return {"first_prompt_s": prompt - start, "first_answer_after_prompt_s": answered - prompt}


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs after the first (cold) one")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "chat_startup.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cold = one_run(workdir)  # creates the SQLite database and its schema
        warm = [one_run(workdir) for _ in range(args.runs)]

    results: dict[str, Any] = {
        "command": f"{COMMAND} chat",
        "cold": {k: round(v, 3) for k, v in cold.items()},
        "warm": {k: summary([run[k] for run in warm]) for k in cold},
        "runs": warm,
        "load_average": os.getloadavg(),
        "goal_first_prompt_s": 1.0,
    }
    print(f"{'measure':<30} {'cold':>7} {'min':>7} {'median':>7} {'max':>7}")
    for key in cold:
        w = results["warm"][key]
        print(f"{key:<30} {cold[key]:7.3f} {w['min']:7.3f} {w['median']:7.3f} {w['max']:7.3f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in results['load_average'])}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
