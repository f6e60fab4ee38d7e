"""Tests of nbutils.checks: the argument checks every module shares."""

import numpy as np
import pytest

from nbutils.checks import check_int, check_momentum, check_seeds


def test_check_int_accepts_ints_and_numpy_ints():
    assert check_int("n", 3) == 3
    assert check_int("n", np.int64(0), 0) == 0
    assert type(check_int("n", np.int32(5))) is int


@pytest.mark.parametrize(
    ("value", "lowest", "exc", "message"),
    [
        (True, 1, TypeError, "n must be an int >= 1, got True"),
        (1.0, 1, TypeError, "n must be an int >= 1, got 1.0"),
        ("2", 1, TypeError, "n must be an int >= 1, got '2'"),
        (0, 1, ValueError, "n must be an int >= 1, got 0"),
        (-1, 0, ValueError, "n must be an int >= 0, got -1"),
    ],
)
def test_check_int_rejects(value, lowest, exc, message):
    with pytest.raises(exc, match=message):
        check_int("n", value, lowest)


def test_check_seeds_returns_a_list_of_ints():
    assert check_seeds((3, np.int64(0), 11)) == [3, 0, 11]
    assert check_seeds([5, 5], distinct=False) == [5, 5]
    assert check_seeds(range(4), minimum=4) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("seeds", "kwargs", "exc", "message"),
    [
        (
            "01",
            {},
            TypeError,
            "seeds must be a sequence of at least 1 distinct ints >= 0, got '01'",
        ),
        (3, {}, TypeError, "seeds must be a sequence of at least 1 distinct ints >= 0, got 3"),
        ({0, 1}, {}, TypeError, "got {0, 1}"),
        (
            [],
            {},
            ValueError,
            r"seeds must be a sequence of at least 1 distinct ints >= 0, got \[\]",
        ),
        ([0], {"minimum": 2}, ValueError, r"at least 2 distinct ints >= 0, got \[0\]"),
        ([0, 1.5], {}, TypeError, "each of seeds must be an int >= 0, got 1.5"),
        ([0, True], {}, TypeError, "each of seeds must be an int >= 0, got True"),
        ([0, -2], {}, ValueError, "each of seeds must be an int >= 0, got -2"),
        ([2, 2], {}, ValueError, r"got repeated seeds in \[2, 2\]"),
        (
            [],
            {"name": "runs", "distinct": False},
            ValueError,
            "runs must be a sequence of at least 1 ints",
        ),
    ],
)
def test_check_seeds_rejects(seeds, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        check_seeds(seeds, **kwargs)


def test_check_momentum():
    assert check_momentum(1) == 1.0
    assert check_momentum(np.float32(0.25)) == 0.25
    for bad, exc in [(0, ValueError), (1.5, ValueError), (-0.1, ValueError), (True, TypeError),
                     (None, TypeError), ("0.1", TypeError)]:  # fmt: skip
        with pytest.raises(exc, match=r"momentum must be a number in \(0, 1\], got"):
            check_momentum(bad)
