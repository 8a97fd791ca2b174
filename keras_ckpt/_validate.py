"""One formula for every argument error: name the argument, what is allowed, what was received.

Pure: no Keras, no files. Used by the policies, the schedule and the callbacks.
"""

from __future__ import annotations

from collections.abc import Sequence


def invalid(argument: str, expected: str, value: object) -> ValueError:
    """`Invalid value for argument `x`. Expected <expected>. Received: x=<value>`."""
    return ValueError(
        f"Invalid value for argument `{argument}`. Expected {expected}. "
        f"Received: {argument}={value!r}"
    )


def check_count(argument: str, value: object) -> int:
    """`value` if it is a positive int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(argument, "a positive int", value)
    return value


def check_optional_count(argument: str, value: object) -> int | None:
    return None if value is None else check_count(argument, value)


def check_seconds(argument: str, value: object) -> float | None:
    """`value` as a float if it is a positive number (not a bool), None stays None."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value == float("inf")
    ):
        raise invalid(argument, "a positive number of seconds", value)
    return float(value)


def check_bool(argument: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise invalid(argument, "True or False", value)
    return value


def check_choice(argument: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise invalid(argument, " or ".join(f'"{a}"' for a in allowed), value)
    return value
