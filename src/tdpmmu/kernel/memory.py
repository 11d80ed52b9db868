"""C structs whose fields live in the runtime's shared memory.

A model object is a handle: ``(oid, prefix)``. Reading ``root.role.invalid`` reads the
cell ``(oid, "role.invalid")`` of the current world, so the same handle is valid in every
replay of a schedule, handles are hashable values (they may sit in thread locals and be
fingerprinted), and freeing an object poisons every field at once.

Field access is *not* a scheduling point: it is the plain C access that happens between
two points, protected by whatever lock the model holds. Accesses that race on purpose go
through ``READ_ONCE``/``WRITE_ONCE`` (``tdpmmu.kernel.atomic``), which are points.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, TypeVar, overload

from tdpmmu.explore.runtime import CURRENT, Numbered, world

S = TypeVar("S", bound="Struct")
T = TypeVar("T")


class Field:
    """A plain field: ``Field()`` in a class body."""

    def __init__(self, default: Hashable = 0) -> None:
        self.default = default
        self.name = ""
        # The cell name under each prefix ("role." + "invalid"), built once: one string
        # object per cell name, whose hash is computed once, not one per access.
        self.cell_names: dict[str, str] = {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.cell_names = {"": name}

    def cell_name(self, prefix: str) -> str:
        name = self.cell_names[prefix] = prefix + self.name
        return name

    @overload
    def __get__(self, obj: None, owner: type) -> Field: ...
    @overload
    def __get__(self, obj: Struct, owner: type) -> Any: ...
    def __get__(self, obj: Struct | None, owner: type) -> Any:
        if obj is None:
            return self
        name = self.cell_names.get(obj.prefix)
        return CURRENT.world.get((obj.oid, self.cell_name(obj.prefix) if name is None else name))

    def __set__(self, obj: Struct, value: Hashable) -> None:
        name = self.cell_names.get(obj.prefix)
        CURRENT.world.set((obj.oid, self.cell_name(obj.prefix) if name is None else name), value)


class Embedded:
    """A struct embedded by value (``struct list_head link;``): same object, own fields."""

    def __init__(self, cls: type[Struct]) -> None:
        self.cls = cls
        self.name = ""
        self.prefixes: dict[str, str] = {}  # the embedded struct's prefix under each outer one

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Struct | None, owner: type) -> Any:
        if obj is None:
            return self
        prefix = self.prefixes.get(obj.prefix)
        if prefix is None:
            prefix = self.prefixes[obj.prefix] = obj.prefix + self.name + "."
        return self.cls(obj.oid, prefix)


class Struct:
    """Base of every modeled struct. Subclasses declare ``Field``s and ``Embedded``s."""

    __slots__ = ("oid", "prefix")
    C_NAME: ClassVar[str] = ""  # how traces name it, e.g. "root"

    def __init__(self, oid: int, prefix: str = "") -> None:
        self.oid = oid
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.oid == self.oid  # type: ignore[attr-defined]
            and other.prefix == self.prefix  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.oid, self.prefix))

    def __repr__(self) -> str:
        name = world().name_of(self.oid)
        return f"{name}.{self.prefix[:-1]}" if self.prefix else name

    def renamed(self, oid_map: dict[int, int]) -> Struct:
        """This handle with its object renamed (symmetry reduction)."""
        return type(self)(oid_map.get(self.oid, self.oid), self.prefix)

    def container(self) -> Any:
        """``container_of``: the top-level object this (embedded) struct belongs to."""
        return world().type_of(self.oid)(self.oid)


def get_member(obj: Struct, field: str, member: int) -> Any:
    """Read a set-valued field of which only ``member``'s part is used (a thread's own
    entry in a lock's readers): see ``World.get_member``."""
    return world().get_member((obj.oid, obj.prefix + field), member)


def set_member(obj: Struct, field: str, value: Hashable, member: int) -> None:
    """Store a set-valued field that changed in ``member``'s part only."""
    world().set_member((obj.oid, obj.prefix + field), value, member)


_LAYOUTS: dict[type, tuple[tuple[str, Hashable], ...]] = {}


def _layout(cls: type) -> tuple[tuple[str, Hashable], ...]:
    """Every plain field of ``cls``, embedded structs flattened: ("role.invalid", False)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        out: list[tuple[str, Hashable]] = []
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Field):
                    out.append((name, attr.default))
                elif isinstance(attr, Embedded):
                    out.extend((f"{name}.{sub}", d) for sub, d in _layout(attr.cls))
        layout = _LAYOUTS[cls] = tuple(out)
    return layout


def kzalloc(cls: type[S], name: str = "", **fields: Hashable) -> S:
    """Allocate a zeroed object (every field at its default), then set ``fields``."""
    w = world()
    oid = w.alloc(cls, name)
    for path, default in _layout(cls):
        w.set((oid, path), default)
    obj = cls(oid)
    for field_name, value in fields.items():
        setattr(obj, field_name, value)
    return obj


def kfree(obj: Struct) -> None:
    """Poison the object: later accesses are reported as use-after-free."""
    world().free(obj.oid)


def objects_of(cls: type[S], *, live_only: bool = False) -> list[S]:
    """Every object of type ``cls`` allocated so far (the model's view of a slab)."""
    w = world()
    return [
        cls(oid)
        for oid in w.oids()
        if w.type_of(oid) is cls and not (live_only and w.is_freed(oid))
    ]


def set_item(obj: Struct, field: str, index: int, value: Hashable) -> None:
    """``obj->field[index] = value`` for an array field (stored as a tuple, so that
    cell values stay immutable): one read and one write of the field."""
    items = list(getattr(obj, field))
    items[index] = value
    setattr(obj, field, tuple(items))


def next_name(cls: type[Struct], prefix: str) -> Numbered:
    """``prefix`` + the object's number among those of ``cls`` named so, in allocation
    order: traces say "root2" rather than an object id. Worked out when shown (names are
    not state, and a step that names an object names it alike in every history)."""
    return Numbered(cls, prefix)


def set_name(obj: Struct, name: str | Numbered) -> None:
    world().set_name(obj.oid, name)
