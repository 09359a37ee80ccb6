"""The one way a bad setting is reported: :class:`ConfigError`, made by :func:`bad`.

Every schema (features, encoder, model, data, trainer) checks its values on creation
with these helpers, so every message has the same form: the full key as the user types
it on the command line, the value, what is allowed and, where there is one, the fix.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad setting from the user: the message names the key, the allowed range and the fix."""


def bad(key: str, value: object, allowed: str, fix: str = "") -> ConfigError:
    """``key=value is invalid: expected allowed; fix`` as a :class:`ConfigError` (to raise)."""
    msg = f"{key}={value!r} is invalid: expected {allowed}"
    return ConfigError(msg + (f"; {fix}" if fix else ""))


def check_int(key: str, value: Any, low: int) -> None:
    """``value`` is an int (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad(key, value, f"an int >= {low}")


def check_float(key: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    """``value`` is a number (not a bool) in ``[low, high]`` (``[low, high)`` if ``high_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        raise bad(key, value, f"a number in [{low}, {high}{')' if high_open else ']'}")


def check_choice(key: str, value: Any, choices: tuple) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise bad(key, value, f"one of {choices}")


def check_range(key: str, value: Any, low: float, high: float = float("inf")) -> tuple[float, float]:
    """``value`` is ``[min, max]`` with ``low <= min <= max <= high``; returned as floats."""
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise bad(key, list(value), f"[min, max] with {low} <= min <= max <= {high}")
    return float(value[0]), float(value[1])
