"""The operator settings of a worker (PARLEY_HEALTH_PORT, PARLEY_METRICS_PORT, PARLEY_OPS_HOST)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.ops import OpsSettings, metrics_for
from core.errors import ConfigError
from core.settings import load

EXAMPLE = Path(__file__).parents[2] / ".env.example"


def test_env_example_lists_every_ops_variable_with_its_default() -> None:
    names = {line.split("=", 1)[0] for line in EXAMPLE.read_text().splitlines() if "=" in line}
    assert {f"PARLEY_{f}".upper() for f in OpsSettings.model_fields} <= names
    from_example = OpsSettings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    assert from_example.model_dump() == OpsSettings(_env_file=None).model_dump()  # type: ignore[call-arg]


def test_health_and_metrics_are_off_by_default() -> None:
    settings = OpsSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.health_port is None and settings.metrics_port is None
    assert metrics_for(settings) is None
    on = OpsSettings(_env_file=None, metrics_port=9100)  # type: ignore[call-arg]
    assert metrics_for(on) is not None


def test_a_wrong_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_HEALTH_PORT", "eighty")
    with pytest.raises(ConfigError, match="PARLEY_HEALTH_PORT"):
        load(OpsSettings, _env_file=None)
