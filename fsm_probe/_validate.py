"""Shared checks of user-given numbers (CLI options, config fields, API arguments)."""

from __future__ import annotations

import math
import os
from typing import Any

from .errors import ConfigError, ResourceError

MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy both take every seed in [0, 2**63)


def is_int(value: Any, *, numpy: bool = False) -> bool:
    """True for an int that is not a bool (or, with `numpy`, also a numpy integer)."""
    if numpy:
        import numpy as np

        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(
    value: Any, name: str, *, error: type[Exception] = ConfigError, numpy: bool = False
) -> int:
    """`value` if it is an integer >= 1, else `error` naming `name` and `value`.

    With `numpy` a numpy integer is accepted too and returned as a Python int.
    """
    if not is_int(value, numpy=numpy) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return int(value) if numpy else value


def non_negative_int(
    value: Any, name: str, *, error: type[Exception] = ConfigError, numpy: bool = False
) -> int:
    """`value` if it is an integer >= 0, else `error` naming `name` and `value` (see `positive_int`)."""
    if not is_int(value, numpy=numpy) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {value!r}")
    return int(value) if numpy else value


def seed(value: Any, name: str = "seed") -> int:
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer in [0, 2**63 - 1], got {_short(value)}")
    return value


def finite_float(value: Any, name: str, low: float | None = None, low_open: bool = False) -> float:
    """`value` as a finite float, at least (or above, `low_open`) `low`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {_short(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    return v


def _short(value: Any) -> str:
    text = repr(value) if not is_int(value) or value.bit_length() < 200 else f"an integer of {len(str(value))} digits"
    return text if len(text) <= 80 else text[:77] + "..."


def memory_limit() -> int:
    """Bytes a run may plan to use: $FSM_PROBE_MEMORY_LIMIT, else 60% of physical memory."""
    env = os.environ.get("FSM_PROBE_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ConfigError(f"FSM_PROBE_MEMORY_LIMIT must be a number of bytes, got {env!r}") from None
    try:
        return int(0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 8 << 30


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.0f} EB"


def check_bytes(estimate: float, what: str, lower: str) -> None:
    """Refuse a plan whose estimated memory exceeds `memory_limit()`, naming what to lower."""
    limit = memory_limit()
    if estimate > limit:
        raise ResourceError(
            f"{what} needs about {human_bytes(estimate)} of memory, more than the {human_bytes(limit)} "
            f"available (set FSM_PROBE_MEMORY_LIMIT to change); lower {lower}"
        )
