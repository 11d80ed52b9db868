"""refcount_t: inc on 0 and dec below 0 are violations, inc_not_zero fails at 0,
dec_and_test is true exactly on 1 -> 0."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_violation, log, outcomes
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.refcount import (
    refcount_dec_and_test,
    refcount_inc,
    refcount_inc_not_zero,
    refcount_read,
    refcount_set,
    refcount_t,
)


def setup_with(refs: int):
    def setup() -> Shared:
        r = kzalloc(refcount_t, "r")
        r.refs = refs
        return Shared(b=kzalloc(Box, "b"), r=r)
    return setup


def observe(s: Shared):
    return s.b.log, s.r.refs


def test_inc_on_zero_is_a_violation() -> None:
    def t(s: Shared):
        yield from refcount_inc(s.r)
    expect_violation(Prog(setup_with(0), [t]), "refcount", "refcount_t: addition on 0; use-after-free (r)")


def test_inc_on_one() -> None:
    def t(s: Shared):
        yield from refcount_inc(s.r)
    assert outcomes(Prog(setup_with(1), [t], observe=observe)) == {((), 2)}


def test_dec_and_test_on_zero_is_underflow() -> None:
    def t(s: Shared):
        yield from refcount_dec_and_test(s.r)
    expect_violation(Prog(setup_with(0), [t]), "refcount", "refcount_t: underflow; use-after-free (r)")


def test_dec_below_zero_after_last_put() -> None:
    def t(s: Shared):
        log(s.b, (yield from refcount_dec_and_test(s.r)))
        yield from refcount_dec_and_test(s.r)
    expect_violation(Prog(setup_with(1), [t]), "refcount", "underflow")


@pytest.mark.parametrize(("start", "result", "after"), [(1, True, 0), (2, False, 1), (3, False, 2)])
def test_dec_and_test_true_exactly_at_one(start: int, result: bool, after: int) -> None:
    def t(s: Shared):
        log(s.b, (yield from refcount_dec_and_test(s.r)))
    assert outcomes(Prog(setup_with(start), [t], observe=observe)) == {((result,), after)}


@pytest.mark.parametrize(("start", "result", "after"), [(0, False, 0), (1, True, 2), (5, True, 6)])
def test_inc_not_zero(start: int, result: bool, after: int) -> None:
    def t(s: Shared):
        log(s.b, (yield from refcount_inc_not_zero(s.r)))
    assert outcomes(Prog(setup_with(start), [t], observe=observe)) == {((result,), after)}


def test_set_and_read() -> None:
    def t(s: Shared):
        yield from refcount_set(s.r, 7)
        log(s.b, (yield from refcount_read(s.r)))
    assert outcomes(Prog(setup_with(0), [t], observe=observe)) == {((7,), 7)}


def putter(s: Shared):
    if (yield from refcount_dec_and_test(s.r)):
        log(s.b, "last")


def test_exactly_one_concurrent_put_sees_the_last_reference() -> None:
    prog = Prog(setup_with(3), [("p0", putter), ("p1", putter), ("p2", putter)], observe=observe,
                final=lambda s: None if s.b.log == ("last",) else f"last-reference log {s.b.log}")
    assert outcomes(prog) == {(("last",), 0)}


def getter_not_zero(s: Shared):
    if (yield from refcount_inc_not_zero(s.r)):
        log(s.b, "got")
        yield from putter(s)


def test_get_not_zero_races_with_last_put() -> None:
    """inc_not_zero either gets a live object or fails; the last put happens exactly once."""
    prog = Prog(setup_with(1), [getter_not_zero, putter], observe=observe,
                final=lambda s: None if s.b.log.count("last") == 1 else f"log {s.b.log}")
    assert outcomes(prog) == {(("last",), 0), (("got", "last"), 0)}


def getter_plain(s: Shared):
    yield from refcount_inc(s.r)
    yield from putter(s)


def test_plain_get_racing_with_last_put_is_found() -> None:
    result = expect_violation(Prog(setup_with(1), [getter_plain, putter]), "refcount", "addition on 0")
    assert [t for t, _ in result.schedule] == [1, 0]  # the put first, then the get
