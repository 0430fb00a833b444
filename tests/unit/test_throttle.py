"""The per-user message rate limit."""

from __future__ import annotations

from core.throttle import MessageRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_slides_and_reports_the_wait():
    clock = Clock()
    rate = MessageRate(3, window=60.0, clock=clock)
    assert [rate.wait_for("slack", "u") for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 20
    assert rate.wait_for("slack", "u") == 40.0
    assert rate.wait_for("discord", "u") == 0.0
    clock.now += 40
    assert rate.wait_for("slack", "u") == 0.0


def test_quiet_users_are_forgotten():
    clock = Clock()
    rate = MessageRate(5, window=60.0, clock=clock)
    for i in range(999):
        rate.wait_for("slack", f"user{i}")
    assert len(rate) == 999
    clock.now += 61
    rate.wait_for("slack", "late")
    assert len(rate) == 1
