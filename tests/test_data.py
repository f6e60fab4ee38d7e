"""nbutils.data: the toy regression, the digits split and the loaders."""

import pytest
import torch

import nbutils


def test_toy_regression_shapes_and_slope():
    x, y = nbutils.make_toy_regression(2000, slope=1.5, noise_std=0.5, seed=0)
    assert x.shape == (2000, 1) and y.shape == (2000, 1)
    assert x.min() >= -1 and x.max() <= 1
    # least-squares slope of 2000 points: standard error 0.5 / sqrt(sum x^2) ~ 0.019
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    se = 0.5 / float((xc**2).sum().sqrt())
    assert abs(slope - 1.5) < 4 * se
    resid = y - 1.5 * x
    # sample variance of 2000 normal draws: relative standard error sqrt(2/1999) ~ 3.2%
    assert abs(float(resid.var()) / 0.25 - 1) < 4 * (2 / 1999) ** 0.5


def test_toy_regression_is_reproducible_and_grid_is_fixed():
    a = nbutils.make_toy_regression(10, seed=1)
    b = nbutils.make_toy_regression(10, seed=1)
    c = nbutils.make_toy_regression(10, seed=2)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    g1 = nbutils.make_toy_regression(5, design="grid", seed=1, dtype=torch.float64)
    g2 = nbutils.make_toy_regression(5, design="grid", seed=2, dtype=torch.float64)
    assert torch.equal(g1[0], g2[0])
    assert torch.equal(g1[0].flatten(), torch.linspace(-1, 1, 5, dtype=torch.float64))
    assert g1[0].dtype == torch.float64
    x0, y0 = nbutils.make_toy_regression(4, noise_std=0.0, design="grid")
    assert torch.allclose(y0, 1.5 * x0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be an int >= 1, got 0"),
        ({"n": 3, "design": "random"}, "design must be one of uniform, grid; got 'random'"),
        ({"n": 3, "noise_std": -0.1}, "noise_std must be >= 0"),
        ({"n": 3, "x_range": (1.0, -1.0)}, "x_range must be"),
        ({"n": 3, "seed": -2}, "seed must be None or an int >= 0"),
        ({"n": 3, "dtype": torch.int64}, "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_toy_regression_bad_input(kwargs, message):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nbutils.make_toy_regression(n, **kwargs)


def test_digits_split_is_stratified_disjoint_and_complete():
    d = nbutils.load_digits_tensors(seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8)
    assert 0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1
    sizes = [len(d.y_train), len(d.y_val), len(d.y_test)]
    assert sum(sizes) == 1797
    assert all(abs(s / 1797 - f) < 0.01 for s, f in zip(sizes, (0.6, 0.2, 0.2), strict=True))
    for y in (d.y_train, d.y_val, d.y_test):
        counts = torch.bincount(y, minlength=10).float()
        assert (counts / counts.sum() - 0.1).abs().max() < 0.01  # each class ~10%
    # the split is a partition of the 1,797 images: same multiset of labels as the full set
    labels = torch.cat([d.y_train, d.y_val, d.y_test])
    from sklearn.datasets import load_digits

    full = torch.as_tensor(load_digits().target)
    assert torch.equal(torch.bincount(labels), torch.bincount(full))
    other = nbutils.load_digits_tensors(seed=1)
    assert not torch.equal(d.y_train, other.y_train)


def test_stratified_split_partitions_indices():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    parts = nbutils.stratified_split(labels, (0.5, 0.3, 0.2), seed=0)
    joined = torch.sort(torch.cat(parts)).values
    assert torch.equal(joined, torch.arange(60))
    assert [len(p) for p in parts] == [30, 18, 12]
    for p, f in zip(parts, (0.5, 0.3, 0.2), strict=True):
        assert torch.equal(torch.bincount(labels[p]), torch.tensor([10, 20, 30]) * f)


@pytest.mark.parametrize(
    ("labels", "fractions", "message"),
    [
        (torch.zeros(4, 2), (0.5, 0.5), "labels must be 1-D"),
        (torch.zeros(4), (1.0,), "fractions must be two or more numbers"),
        (torch.zeros(4), (0.5, 0.6), "fractions must sum to 1"),
        (torch.zeros(4), (0.0, 1.0), "fractions must be two or more numbers in"),
    ],
)
def test_stratified_split_bad_input(labels, fractions, message):
    with pytest.raises(ValueError, match=message):
        nbutils.stratified_split(labels, fractions)


def test_digits_loaders_shapes_and_reproducible_shuffle():
    train, val, test = nbutils.digits_loaders(batch_size=32, seed=0, flatten=True)
    xb, yb = next(iter(train))
    assert xb.shape == (32, 64) and yb.shape == (32,) and yb.dtype == torch.int64
    first = next(iter(nbutils.digits_loaders(batch_size=32, seed=0, flatten=True)[0]))[1]
    assert torch.equal(first, yb)
    assert sum(len(b[1]) for b in val) + sum(len(b[1]) for b in test) == 1797 - len(train.dataset)
    xb4, _ = next(iter(nbutils.digits_loaders(batch_size=8)[0]))
    assert xb4.shape == (8, 1, 8, 8)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_make_loader_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        nbutils.make_loader(torch.zeros(4, 1), torch.zeros(4), batch_size)


def test_make_loader_length_mismatch_and_bad_fractions():
    with pytest.raises(ValueError, match="x and y must have the same length, got 4 and 3"):
        nbutils.make_loader(torch.zeros(4, 1), torch.zeros(3), 2)
    with pytest.raises(ValueError, match=r"fractions must be \(train, val, test\)"):
        nbutils.load_digits_tensors(fractions=(0.5, 0.5))
