"""Immutable JSON values: the read-only mapping events hold, and :func:`thaw`,
which gives plain dicts and lists back.

An event's containers are frozen when the event is made (see
:mod:`purpose_bus._admission`): every mapping becomes a :class:`FrozenDict`,
every list or tuple a tuple, all the way down. Nothing the producer still holds
is shared with the event, and nothing a consumer gets can be changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

__all__ = ["EMPTY", "FrozenDict", "thaw"]


def _read_only(self: FrozenDict, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        "an event's mappings are read-only; purpose_bus.thaw(value) gives a "
        "plain dict to change"
    )


class FrozenDict(dict[str, Any]):
    """A read-only ``dict``: what an event holds in place of every mapping.

    Reads are a dict's own (it *is* a dict, so ``json`` and ``==`` treat it as
    one); every method that would change it raises :exc:`TypeError`. It is
    hashable (its values are frozen too), and copying it returns itself.
    The normal forms of the keys inside it, at any depth, are kept with the
    outermost one of a field for the hidden-reasoning guard (see
    :meth:`normal_keys`); one nested in another works them out when first
    asked, so deep nesting never holds a key set per level.

    Make one with ``FrozenDict(mapping)``, which checks and freezes *mapping*
    as an event field of type ``Mapping[str, Any]`` is checked: string keys,
    JSON values only.
    """

    __slots__ = ("_hash", "_keys")

    _keys: frozenset[str] | None
    _hash: int | None

    def __new__(cls, mapping: Mapping[str, Any] | Iterable[Any] = (), /) -> FrozenDict:
        from ._admission import freeze_mapping

        if not isinstance(mapping, Mapping):
            mapping = dict(mapping)
        return freeze_mapping(mapping)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # filled by _make (dict.__init__ would fill it a second time)

    @classmethod
    def _make(cls, items: dict[str, Any], keys: frozenset[str] | None) -> FrozenDict:
        """Wrap *items* (already frozen, owned by nobody else) as they are;
        *keys* are the normal forms of every key inside, or ``None`` (not
        known yet: see :meth:`normal_keys`)."""
        frozen = dict.__new__(cls)
        dict.update(frozen, items)
        frozen._keys = keys
        frozen._hash = None
        return frozen

    def normal_keys(self) -> frozenset[str]:
        """The normal forms (:func:`purpose_bus._hidden.normal_key`) of every
        key inside this mapping, at any depth."""
        keys = self._keys
        if keys is None:
            keys = self._keys = _normal_keys_below(self)
        return keys

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __hash__(self) -> int:  # type: ignore[override]
        value = self._hash
        if value is None:
            value = self._hash = hash(frozenset(self.items()))
        return value

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("purpose_bus values are not pickled; encode the event")

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


def _normal_keys_below(value: FrozenDict) -> frozenset[str]:
    from ._hidden import normal_key

    found: set[str] = set()
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is FrozenDict:
            known = item._keys
            if known is not None:
                found |= known
                continue
            found.update(map(normal_key, item))
            stack.extend(item.values())
        elif type(item) is tuple:
            stack.extend(item)
    return frozenset(found)


#: The empty mapping every event shares as its default payload.
EMPTY: FrozenDict = FrozenDict._make({}, frozenset())


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of *value*: every mapping a ``dict``, every
    tuple or list a ``list`` (for a consumer that wants to change what it got).
    Other values are returned as they are."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value
