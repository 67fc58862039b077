"""PruningSchedule: pure functions of the epoch."""

from __future__ import annotations

import pytest

from autoprune.schedule import PruningSchedule


@pytest.mark.parametrize("ramp", ["linear", "cubic"])
@pytest.mark.parametrize(("start", "end", "freq"), [(1, 5, 1), (3, 10, 2), (4, 4, 1), (2, 9, 3)])
def test_reaches_target_exactly_at_end_epoch(ramp: str, start: int, end: int, freq: int) -> None:
    s = PruningSchedule(start, end, 0.7, freq, ramp)
    fractions = [s.fraction(e) for e in range(1, end + 4)]
    assert all(f == 0.0 for f in fractions[: start - 1])
    assert s.fraction(end - 1) < 0.7 or start == end
    assert s.fraction(end) == 0.7
    assert all(f == 0.7 for f in fractions[end - 1:])
    assert fractions == sorted(fractions)  # never un-prunes
    assert s.steps()[-1] == end
    assert all(s.is_step(e) for e in s.steps())


def test_steps_follow_frequency_and_fraction_is_held_between_them() -> None:
    s = PruningSchedule(2, 10, 0.5, frequency=3)
    assert s.steps() == [2, 5, 8, 10]
    assert s.fraction(3) == s.fraction(2) == s.fraction(4)
    assert s.fraction(5) > s.fraction(4)


def test_cubic_prunes_faster_early() -> None:
    lin = PruningSchedule(1, 10, 0.8, ramp="linear")
    cub = PruningSchedule(1, 10, 0.8, ramp="cubic")
    assert cub.fraction(2) > lin.fraction(2)
    assert cub.fraction(10) == lin.fraction(10) == 0.8


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(start_epoch=0, end_epoch=3, target_ratio=0.5),
        dict(start_epoch=4, end_epoch=3, target_ratio=0.5),
        dict(start_epoch=1, end_epoch=3, target_ratio=1.0),
        dict(start_epoch=1, end_epoch=3, target_ratio=0.5, ramp="exp"),
    ],
)
def test_invalid_schedules(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PruningSchedule(**kwargs)
