"""The CI check for function length: counts from ``def`` to the last line, skips migrations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "function_length.py"
spec = importlib.util.spec_from_file_location("function_length", SCRIPT)
assert spec is not None and spec.loader is not None
function_length = importlib.util.module_from_spec(spec)
spec.loader.exec_module(function_length)


def function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function that is ``lines`` lines long, ``def`` included."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}async def {name}():\n{body}{indent}    return None\n"


def test_only_functions_over_the_limit_are_reported(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        function("fits", 60) + "\n\nclass Box:\n" + function("method", 61, indent="    ")
    )
    found = list(function_length.too_long(source))
    assert found == [f"{source}:64 method: 61 lines (max 60)"]  # after 60 + 3 lines
    assert function_length.main([str(tmp_path)]) == 1


def test_migrations_are_left_out(tmp_path):
    versions = tmp_path / "core" / "store" / "migrations" / "versions"
    versions.mkdir(parents=True)
    (versions / "0001_initial.py").write_text(function("upgrade", 200))
    assert function_length.main([str(tmp_path)]) == 0
