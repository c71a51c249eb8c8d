"""Lamport and vector clocks, with property tests for the algebra the conflict rule relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import LamportClock, Order, VectorClock

producers = st.sampled_from(["a", "b", "c", "d"])
clocks = st.dictionaries(producers, st.integers(min_value=0, max_value=20)).map(VectorClock)


@given(clocks, clocks)
def test_merge_is_commutative(x: VectorClock, y: VectorClock) -> None:
    """merge(x, y) == merge(y, x)."""
    assert x.merge(y) == y.merge(x)


@given(clocks, clocks, clocks)
def test_merge_is_associative(x: VectorClock, y: VectorClock, z: VectorClock) -> None:
    """merge(merge(x, y), z) == merge(x, merge(y, z))."""
    assert x.merge(y).merge(z) == x.merge(y.merge(z))


@given(clocks)
def test_merge_is_idempotent(x: VectorClock) -> None:
    """merge(x, x) == x."""
    assert x.merge(x) == x


@given(clocks, clocks)
def test_compare_is_consistent_with_merge(x: VectorClock, y: VectorClock) -> None:
    """x <= y exactly when merging x into y changes nothing; the merge dominates both."""
    m = x.merge(y)
    assert x.compare(m) in (Order.BEFORE, Order.EQUAL)
    assert y.compare(m) in (Order.BEFORE, Order.EQUAL)
    assert (x.compare(y) in (Order.BEFORE, Order.EQUAL)) == (m == y)


@given(clocks, clocks)
def test_compare_is_antisymmetric(x: VectorClock, y: VectorClock) -> None:
    """Swapping the operands swaps before/after and keeps equal/concurrent."""
    flip = {
        Order.BEFORE: Order.AFTER,
        Order.AFTER: Order.BEFORE,
        Order.EQUAL: Order.EQUAL,
        Order.CONCURRENT: Order.CONCURRENT,
    }
    assert y.compare(x) is flip[x.compare(y)]


@given(clocks, producers)
def test_increment_happens_after(x: VectorClock, p: str) -> None:
    """An incremented clock is strictly after the clock it came from."""
    assert x.compare(x.increment(p)) is Order.BEFORE
    assert x.increment(p).get(p) == x.get(p) + 1


def test_independent_writers_are_concurrent() -> None:
    """Two producers that never saw each other's events have concurrent clocks."""
    a = VectorClock().increment("a")
    b = VectorClock().increment("b")
    assert a.compare(b) is Order.CONCURRENT
    assert a.merge(b).increment("a").compare(b) is Order.AFTER


def test_zero_entries_are_ignored_and_negatives_refused() -> None:
    """Missing entries count as zero; a negative counter is refused."""
    assert VectorClock({"a": 0}) == VectorClock()
    with pytest.raises(ValueError):
        VectorClock({"a": -1})


def test_lamport_tick_and_observe() -> None:
    """Lamport time ticks by one and jumps past any observed later time."""
    c = LamportClock()
    assert c.tick() == 1
    c.observe(10)
    assert c.tick() == 11
    c.observe(3)
    assert c.tick() == 12
