"""Symmetry reduction: states equal up to swapping identical threads are explored once.

A program that has interchangeable threads (vCPUs running the same code) names them in
``Program.symmetry(world)``: groups of members ``(thread id, object id)``, the object
being the one only that thread owns (its ``struct kvm_vcpu``). The canonical fingerprint
of a state sorts each group's members by a key that does not depend on their names,
renames thread ids and object ids by that order everywhere (shared cells, values, the
locals of every thread), and hashes the result. Two states get the same canonical
fingerprint only if one is the other with members renamed, so pruning by it is sound
whenever the program is really symmetric in that state; the program returns None
(no reduction) in states where it is not (e.g. once VM teardown walks vCPUs in order).

Values are renamed structurally: a ``Tid`` (thread id) and any object with
``renamed(oid_map)`` (struct handles) are mapped; tuples and frozensets recursively; a
tuple made only of members' objects is sorted, i.e. treated as a set (``kvm->vcpus``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import is_
from types import FunctionType
from typing import Any

from tdpmmu.explore.runtime import INERT_TYPES, Key, Tid, World

Member = tuple[int, int]  # (thread id, object id owned by that thread)
Groups = Sequence[Sequence[Member]]
Rename = Callable[[Any], Any]
# Thread ids and object ids, old to new: what a canonical fingerprint renamed.
Renaming = tuple[dict[int, Tid], dict[int, int]]
_MISSING = object()


# How each type of value renames: decided once per type (``_kind``), since renaming runs
# on every cell and local that may name something, at every state. A type is INERT when
# its values never name a thread or an object (ints, strings, classes, enum members: a
# Tid is not an int here, types are compared exactly).
INERT, TID, TUPLE, FROZENSET, FUNCTION, HANDLE, RENAMED = range(7)
_KINDS: dict[type, int] = {Tid: TID, tuple: TUPLE, frozenset: FROZENSET, FunctionType: FUNCTION,
                          **{t: INERT for t in INERT_TYPES}}


def _kind(t: type) -> int:
    kind = _KINDS.get(t)
    if kind is None:
        # A value that names objects has ``renamed(oid_map)``; a handle (a Struct) names
        # exactly one, its ``oid``, and is left as it is when that is not renamed.
        if not callable(getattr(t, "renamed", None)):
            kind = INERT
        else:
            kind = HANDLE if hasattr(t, "oid") else RENAMED
        _KINDS[t] = kind
        if kind == INERT:
            INERT_TYPES.add(t)  # World stops listing cells that hold it (World.naming)
    return kind


def make_rename(tid_map: dict[int, Tid], oid_map: dict[int, int]) -> Rename:
    member_oids = set(oid_map.values())
    kinds = _KINDS

    def rename(v: Any) -> Any:
        t = type(v)
        kind = kinds.get(t)
        if kind is None:
            kind = _kind(t)
        if kind == INERT:
            return v
        if kind == HANDLE:
            return v.renamed(oid_map) if v.oid in oid_map else v
        if kind == TID:
            return tid_map.get(v, v)
        if kind == TUPLE:
            out = tuple(map(rename, v))
            if out and all(getattr(x, "oid", None) in member_oids for x in out):
                return tuple(sorted(out, key=lambda x: x.oid))
            return v if all(map(is_, out, v)) else out  # (v itself: nothing to rehash)
        if kind == FROZENSET:
            return frozenset(map(rename, v))
        if kind == RENAMED:
            return v.renamed(oid_map)
        return (v.__code__, *(rename(c.cell_contents) for c in v.__closure__ or ()))

    return rename


def member_delta(keys: Sequence[Key], values: Sequence[Any], oid_map: dict[int, int], rename: Rename) -> int:
    """What renaming changes in ``World.h`` (the XOR of every cell's hash) for the cells
    ``keys``, holding ``values``, of an object being renamed: each moves to its new
    object's key, with its value renamed."""
    d = 0
    for key, v in zip(keys, values, strict=True):
        d ^= hash((key, v)) ^ hash(((oid_map[key[0]], key[1]), rename(v)))
    return d


def naming_delta(world: World, oid_map: dict[int, int], rename: Rename) -> int:
    """What renaming changes in ``World.h`` for the cells of objects not renamed: only
    those holding a value that names a renamed thread or object (``World.naming`` lists
    every cell that may)."""
    d = 0
    cells = world.cells
    for key in world.naming:
        if key[0] not in oid_map:
            v = cells.get(key, _MISSING)  # (a restore may have dropped it)
            if v is not _MISSING:
                r = rename(v)
                if r is not v:
                    d ^= hash((key, v)) ^ hash((key, r))
    return d


def frame_hash(frame: tuple[Any, ...], rename: Rename) -> int:
    """The hash of one frame of a thread's fingerprint (``execution.thread_frames``:
    code, offset, slots) with every slot renamed."""
    code, lasti, *slots = frame
    return hash((code, lasti, *map(rename, slots)))
