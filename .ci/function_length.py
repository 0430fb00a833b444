"""Fail when a function outside the tests is longer than MAX_LINES lines, ``def`` to last line.

Usage: python .ci/function_length.py [PATH ...]   (default: core adapters bots bench .ci)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_LINES = 60
DEFAULT_PATHS = ("core", "adapters", "bots", "bench", ".ci")
# Alembic migrations are generated, append-only records of the schema: never refactored.
EXCLUDED = ("core/store/migrations/versions/",)


def python_files(paths: list[str]) -> Iterator[Path]:
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            if not any(part in path.as_posix() for part in EXCLUDED):
                yield path


def too_long(path: Path) -> Iterator[str]:
    """``path:line name: N lines`` for each function over the limit."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_LINES:
                yield f"{path}:{node.lineno} {node.name}: {lines} lines (max {MAX_LINES})"


def main(argv: list[str]) -> int:
    found = [line for path in python_files(argv or list(DEFAULT_PATHS)) for line in too_long(path)]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
