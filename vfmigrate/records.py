"""Tuples with named fields, as :func:`collections.namedtuple` makes them.

The hook imports this instead: ``collections`` costs about a millisecond to import
and ``namedtuple`` builds each type by ``exec``-ing source text, on a path that
runs inside libvirt's start and migration of every VF guest.  A record is a
tuple (compared, hashed, ordered and unpacked as one) with a property per field,
``_fields``, ``_replace()`` and ``_asdict()``; it has no defaults.
"""

from __future__ import annotations

try:   # the C field accessor namedtuple itself uses (CPython >= 3.8)
    from _collections import _tuplegetter
except ImportError:   # another Python: a property does the same, slower
    def _tuplegetter(index: int, doc: str) -> property:
        return property(lambda self: self[index], doc=doc)


def record(name: str, field_names: str, doc: str = "") -> type:
    """A tuple type called ``name`` with the space-separated ``field_names``."""
    fields = tuple(field_names.split())

    def __new__(cls, *values, **named):
        if named:
            try:
                values += tuple(named.pop(field) for field in fields[len(values):])
            except KeyError as missing:
                raise TypeError(f"{name}() lacks field {missing}") from None
            if named:
                raise TypeError(f"{name}() has no field {', '.join(named)}")
        if len(values) != len(fields):
            raise TypeError(f"{name}() takes {len(fields)} fields ({', '.join(fields)}), "
                            f"not {len(values)}")
        return tuple.__new__(cls, values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(
            f"{field}={value!r}" for field, value in zip(fields, self)) + ")"

    def _replace(self, **changes):
        return type(self)(*(changes.pop(field, value) for field, value in zip(fields, self)))

    def _asdict(self) -> dict:
        return dict(zip(fields, self))

    namespace = {"__slots__": (), "__doc__": doc, "_fields": fields, "__new__": __new__,
                 "__repr__": __repr__, "_replace": _replace, "_asdict": _asdict,
                 "__getnewargs__": lambda self: tuple(self)}
    for index, field in enumerate(fields):
        namespace[field] = _tuplegetter(index, f"Field {index}: {field}")
    return type(name, (tuple,), namespace)
