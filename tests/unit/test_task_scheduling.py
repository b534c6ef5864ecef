"""Parallel Mind's choice of the next queue: priority first, no starvation, fair owners."""

from __future__ import annotations

from collections import Counter

from revo_engine_parallel.scheduling import Scheduler


def test_the_higher_priority_goes_first() -> None:
    scheduler = Scheduler()
    assert scheduler.next([(1, "a"), (9, "a"), (5, "a")]) == (9, "a")


def test_a_lower_priority_still_gets_its_share() -> None:
    scheduler = Scheduler()
    picks = Counter(scheduler.next([(9, "a"), (1, "a")]) for _ in range(257 * 4))
    assert picks[(1, "a")] == 4  # weights 256 : 1
    assert picks[(9, "a")] == 256 * 4


def test_owners_of_one_level_take_turns() -> None:
    scheduler = Scheduler()
    picks = [scheduler.next([(5, "flood"), (5, "other")]) for _ in range(6)]
    assert Counter(picks) == {(5, "flood"): 3, (5, "other"): 3}


def test_a_queue_that_starts_waiting_gets_no_burst() -> None:
    scheduler = Scheduler()
    for _ in range(100):
        scheduler.next([(5, "early")])
    picks = [scheduler.next([(5, "early"), (5, "late")]) for _ in range(10)]
    assert Counter(picks) == {(5, "early"): 5, (5, "late"): 5}


def test_nothing_waiting_is_none() -> None:
    assert Scheduler().next([]) is None
