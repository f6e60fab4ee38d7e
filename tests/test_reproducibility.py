"""nbutils.setup and seed_everything: seeds, threads, errors."""

import random

import numpy as np
import pytest
import torch

import nbutils


def draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand())  # noqa: NPY002, float(torch.rand(()))


def test_same_seed_same_draws_and_other_seed_differs():
    nbutils.setup(seed=3, style=False)
    first = draw()
    nbutils.setup(seed=3, style=False)
    assert draw() == first
    nbutils.setup(seed=4, style=False)
    assert draw() != first


def test_thread_count_is_fixed():
    assert nbutils.setup(seed=0, threads=1, style=False) is None
    assert torch.get_num_threads() == 1


def test_style_is_applied():
    import matplotlib as mpl

    mpl.rcParams["axes.grid"] = False
    nbutils.setup(seed=0, style=True)
    assert mpl.rcParams["axes.grid"] is True
    assert mpl.rcParams["figure.dpi"] == nbutils.plotting.STYLE["figure.dpi"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"seed": 1.5}, TypeError, "seed must be an int >= 0, got 1.5"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"threads": 0}, ValueError, "threads must be an int >= 1, got 0"),
        ({"threads": "2"}, TypeError, "threads must be an int >= 1"),
        ({"style": "yes"}, TypeError, "style must be True or False"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        nbutils.setup(**kwargs)


def test_seed_everything_rejects_negative():
    with pytest.raises(ValueError, match="seed"):
        nbutils.seed_everything(-5)
