"""`DictResult`: the base of result dataclasses that used to be plain dicts.

A subclass is a `@dataclass(frozen=True, eq=False)`; read its fields as attributes
(`report.fidelity`). `to_dict()` is the plain dict the function returned before, key for key.
For one release (until 0.3) the result also *is* that dict, read-only: `report["fidelity"]`,
`.get`, `in`, iteration, `{**report}`, `dict(report)`, `==` against a dict and `json.dumps`
behave as they did; writing an item raises `TypeError` (use `replace(...)` or `to_dict()`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn, TypeVar

R = TypeVar("R", bound="DictResult")


def _rebuild(cls: type[R], values: dict[str, Any]) -> R:
    return cls(**values)


def plain(obj: Any) -> Any:
    """`obj` with every `DictResult` in it, at any depth, turned into its plain dict (containers copied)."""
    if isinstance(obj, DictResult):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


class DictResult(dict):
    """A frozen dataclass that also reads as the dict `_items()` (deprecated; see the module)."""

    def _items(self) -> dict[Any, Any]:
        """The dict view, in the order of the old dict: by default every field, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        dict.update(self, self._items())

    def to_dict(self) -> dict[Any, Any]:
        """The plain dict (nested results as dicts too), as the function returned before."""
        return plain(self._items())

    def replace(self: R, **changes: Any) -> R:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def __reduce__(self) -> tuple[Any, ...]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _rebuild, (type(self), values)

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} is read-only: use .replace(...) for a changed copy or "
            ".to_dict() for a plain dict"
        )

    __setitem__ = __delitem__ = __ior__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only
