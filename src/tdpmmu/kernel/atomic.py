"""READ_ONCE / WRITE_ONCE / xchg: a racy (lock-free) access to one field, as a scheduling point."""

from __future__ import annotations

from collections.abc import Generator, Hashable
from typing import Any

from tdpmmu.explore.runtime import Op, primitive
from tdpmmu.kernel.memory import Struct


@primitive
def READ_ONCE(obj: Struct, field: str) -> Generator[Op, int, Any]:
    yield Op("READ_ONCE", f"{obj!r}->{field}")
    return getattr(obj, field)


@primitive
def WRITE_ONCE(obj: Struct, field: str, value: Hashable) -> Generator[Op, int, None]:
    yield Op("WRITE_ONCE", f"{obj!r}->{field}", value)
    setattr(obj, field, value)


@primitive
def xchg(obj: Struct, field: str, value: Hashable) -> Generator[Op, int, Any]:
    """Store ``value``, return the old one, atomically."""
    yield Op("xchg", f"{obj!r}->{field}", value)
    old = getattr(obj, field)
    setattr(obj, field, value)
    return old
