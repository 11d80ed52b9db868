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
from types import CodeType, FunctionType
from typing import Any

from tdpmmu.explore.runtime import NAME, Key, Tid, World

Member = tuple[int, int]  # (thread id, object id owned by that thread)
Groups = Sequence[Sequence[Member]]
Rename = Callable[[Any], Any]
# Thread ids and object ids, old to new: what a canonical fingerprint renamed.
Renaming = tuple[dict[int, Tid], dict[int, int]]


# Types whose values never name a thread or an object (a Tid is not an int here: types
# are compared exactly): returned as they are, before any other test.
_PLAIN = frozenset({int, bool, str, float, bytes, type(None), CodeType})


def make_rename(tid_map: dict[int, Tid], oid_map: dict[int, int]) -> Rename:
    member_oids = set(oid_map.values())

    def rename(v: Any) -> Any:
        t = type(v)
        if t in _PLAIN:
            return v
        if t is Tid:
            return tid_map.get(v, v)
        if t is tuple:
            out = tuple(map(rename, v))
            if out and all(getattr(x, "oid", None) in member_oids for x in out):
                return tuple(sorted(out, key=lambda x: x.oid))
            return out
        if t is frozenset:
            return frozenset(map(rename, v))
        if t is FunctionType:
            return (v.__code__, *(rename(c.cell_contents) for c in v.__closure__ or ()))
        renamed = getattr(v, "renamed", None)
        if renamed is not None and not isinstance(v, type):
            return renamed(oid_map)
        return v

    return rename


def world_hash(world: World, oid_map: dict[int, int], rename: Rename, member_cells: Sequence[Key]) -> int:
    """``World.h`` of the renamed world (names are not state), from ``World.h``: only the
    cells of renamed objects (``member_cells``: all of them, names excluded) and cells
    whose value may name a thread or an object change."""
    h = world.h
    cells = world.cells
    for key in member_cells:
        v = cells[key]
        h ^= hash((key, v)) ^ hash(((oid_map[key[0]], key[1]), v if type(v) in _PLAIN else rename(v)))
    plain = _PLAIN
    for key, v in cells.items():
        if type(v) not in plain and key[0] not in oid_map and key[1] != NAME:
            h ^= hash((key, v)) ^ hash((key, rename(v)))
    return h


def frames_hash(frames: tuple[tuple[Any, ...], ...], rename: Rename) -> int:
    """A thread's fingerprint (``execution.thread_frames``) with every local renamed."""
    plain = _PLAIN
    return hash(tuple((code, lasti, *[v if type(v) in plain else rename(v) for v in locs])
                      for code, lasti, *locs in frames))
