"""Argument checks shared by the modules of nbutils: one message format everywhere."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_int", "check_momentum", "check_seeds"]


def check_int(name: str, value: object, lowest: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= lowest``; else raise.

    ``TypeError`` for a non-integer (``bool`` included), ``ValueError`` for one below ``lowest``;
    both messages name the argument, the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {lowest}, got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be an int >= {lowest}, got {value}")
    return int(value)


def check_seeds(
    seeds: object, minimum: int = 1, name: str = "seeds", *, distinct: bool = True
) -> list[int]:
    """Return ``seeds`` as a list of ints if it is a sequence of ints ``>= 0``; else raise.

    ``TypeError`` when ``seeds`` is not a sequence (a string is not one) or holds a non-integer;
    ``ValueError`` when it holds fewer than ``minimum`` seeds, a negative one, or (with
    ``distinct=True``, the default) a repeated one. Every message names the argument, the value
    and what is allowed.
    """
    kind = "distinct ints" if distinct else "ints"
    allowed = f"a sequence of at least {minimum} {kind} >= 0"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"{name} must be {allowed}, got {seeds!r}")
    if len(seeds) < minimum:
        raise ValueError(f"{name} must be {allowed}, got {list(seeds)}")
    values = [check_int(f"each of {name}", s, 0) for s in seeds]
    if distinct and len(set(values)) != len(values):
        raise ValueError(f"{name} must be {allowed}, got repeated seeds in {values}")
    return values


def check_momentum(momentum: object, name: str = "momentum") -> float:
    """Return ``momentum`` as a float if it is a real number in ``(0, 1]``; else raise.

    BatchNorm's convention: the weight of the newest value in a moving average. ``TypeError``
    for a non-number (``bool`` included), ``ValueError`` for one outside ``(0, 1]``.
    """
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number in (0, 1], got {momentum!r}")
    if not 0 < momentum <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {momentum}")
    return float(momentum)
