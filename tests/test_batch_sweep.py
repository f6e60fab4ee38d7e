"""nbutils.batch_sweep: copies side by side train exactly as they would alone."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils import make_cnn, recalibrate_bn
from nbutils.batch_sweep import (
    SideBySide,
    accuracies,
    error_ratio,
    fmt_accuracy,
    sweep,
    train_sgd,
)
from nbutils.stats import mc_z


class ChunkedBN(nn.BatchNorm2d):
    """A BN subclass with an extra attribute: BN statistics over chunks of `norm_batch`."""

    def __init__(self, num_features: int, norm_batch: int) -> None:
        super().__init__(num_features)
        self.norm_batch = norm_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return torch.cat([super(ChunkedBN, self).forward(c) for c in x.split(self.norm_batch)])


def cnn(norm: str, seed: int, *, groups: int = 4, chunk: int | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    model = make_cnn(channels=(4, 8), norm=norm, groups=groups).double()
    if chunk is not None:
        for k, layer in enumerate(model):
            if isinstance(layer, nn.BatchNorm2d):
                model[k] = ChunkedBN(layer.num_features, chunk).double()
    with torch.no_grad():  # non-trivial affine parameters, so that a mix-up cannot hide
        for name, p in model.named_parameters():
            if p.dim() == 1 and "weight" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_()
    return model


def mixed_models() -> list[nn.Sequential]:
    # Runs of equal layers (two BN, two GN(4)), single ones, and a BN subclass.
    return [
        cnn("bn", 0),
        cnn("bn", 1),
        cnn("gn", 2),
        cnn("gn", 3),
        cnn("gn", 4, groups=2),
        cnn("ln", 5),
        cnn("in", 6),
        cnn("bn", 7, chunk=2),
    ]


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, 1, 8, 8, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("training", [True, False])
def test_copies_side_by_side_give_each_copy_its_own_output(training):
    models = mixed_models()
    net = SideBySide(models).train(training)
    x = images(len(models), 6)
    out = net(x)
    assert out.shape == (len(models), 6, 10)
    for k, model in enumerate(models):
        expected = model.train(training)(x[k])
        assert (out[k] - expected).abs().max() < 1e-12
    shared = net(x[0])  # (B, C, H, W): the same batch for every copy
    for k, model in enumerate(models):
        assert (shared[k] - model(x[0])).abs().max() < 1e-12


def test_copies_without_normalizer_keep_their_conv_biases():
    models = [cnn("none", 0), cnn("none", 1)]
    x = images(2, 3)
    out = SideBySide(models)(x)
    assert all((out[k] - models[k](x[k])).abs().max() < 1e-12 for k in range(2))


def test_equal_layers_share_one_wide_layer():
    net = SideBySide([cnn("bn", 0), cnn("bn", 1), cnn("gn", 2)])
    norm = net.body[1]
    assert [type(m) for m in norm.parts] == [nn.BatchNorm2d, nn.GroupNorm]
    assert norm.parts[0].num_features == 8 and norm.parts[1].num_groups == 4
    assert isinstance(SideBySide([cnn("ln", 0), cnn("ln", 1)]).body[1], nn.GroupNorm)


def reference_sgd(model, x, y, *, batch, epochs, lr, seed, momentum=0.9):
    # The textbook loop, one model: its own order, CosineAnnealingLR, mean cross-entropy.
    steps = len(x) // batch
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)[: steps * batch].view(steps, batch)
        for idx in perm:
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            schedule.step()
    return model


@pytest.mark.parametrize("own_data", [False, True])
def test_training_side_by_side_equals_training_alone(own_data):
    models = mixed_models()
    seeds = [10, 11, 10, 12, 13, 10, 14, 15]  # copies 0, 2 and 5 share their batches
    k, n = len(models), 26  # 26 images, batches of 4: 6 steps per epoch, 2 dropped
    x = images(k, n, seed=1) if own_data else images(n, seed=1)
    gen = torch.Generator().manual_seed(2)
    y = torch.randint(0, 10, (k, n) if own_data else (n,), generator=gen)
    net = SideBySide(models)
    steps = train_sgd(net, x, y, batch=4, epochs=2, lr=0.05, seeds=seeds)
    assert steps == 12
    test_x = images(5, seed=3)
    for i, model in enumerate(models):
        alone = copy.deepcopy(model)
        data = (x[i], y[i]) if own_data else (x, y)
        reference_sgd(alone, *data, batch=4, epochs=2, lr=0.05, seed=seeds[i])
        for mode in (False, True):  # eval first: a train-mode pass moves BN's running averages
            out = copy.deepcopy(net).train(mode)(test_x)[i]
            assert (out - alone.train(mode)(test_x)).abs().max() < 1e-10, (i, mode)


def test_accuracies_count_correct_argmax_per_copy():
    models = [cnn("bn", 0), cnn("gn", 1)]
    net = SideBySide(models).train()
    x, y = images(7, seed=4), torch.arange(7)
    acc = accuracies(net, x, y)
    assert net.training  # restored
    for k, model in enumerate(models):
        expected = (model.eval()(x).argmax(dim=1) == y).double().mean()
        assert acc[k] == expected
    own = accuracies(net, x.expand(2, *x.shape), y.expand(2, 7))
    assert torch.equal(own, acc)


def digits_like(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(20, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (20,), generator=gen)
    return x[:12], y[:12], x[12:], y[12:]


def test_sweep_trains_every_model_and_seed_and_recalibrates_bn():
    makers = {"bn": lambda s: cnn("bn", s), "gn": lambda s: cnn("gn", s)}
    calls = []
    result = sweep(
        makers,
        [3, 5],
        digits_like,
        batch=4,
        epochs=2,
        lr=0.05,
        before_recalibration=calls.append,
    )
    assert set(result) == {"bn", "gn"} and set(result["gn"]) == {"acc"}
    assert set(result["bn"]) == {"acc", "acc_recal"} and len(calls) == 1
    for name in makers:
        for i, seed in enumerate([3, 5]):
            x, y, x_test, y_test = digits_like(seed)
            alone = SideBySide([makers[name](seed)])
            train_sgd(alone, x, y, batch=4, epochs=2, lr=0.05, seeds=[seed])
            assert result[name]["acc"][i] == accuracies(alone, x_test, y_test)[0]
            if name == "bn":
                recalibrate_bn(alone, [x])
                assert result[name]["acc_recal"][i] == accuracies(alone, x_test, y_test)[0]


def test_error_ratio_of_exactly_proportional_errors_is_that_factor():
    b = [0.02, 0.05, 0.01, 0.03]
    r = error_ratio([1.5 * v for v in b], b)
    assert math.isclose(r.value, 1.5) and math.isclose(r.lo, 1.5) and math.isclose(r.hi, 1.5)
    assert r.above(1.4) and r.below(1.6) and r.format() == "1.50× (1.50 to 1.50)"


def test_error_ratio_is_symmetric_and_a_geometric_mean():
    a, b = [0.03, 0.05, 0.02, 0.04], [0.02, 0.02, 0.03, 0.01]
    r, inverse = error_ratio(a, b), error_ratio(b, a)
    assert math.isclose(r.value * inverse.value, 1.0)
    assert math.isclose(r.lo * inverse.hi, 1.0) and math.isclose(r.hi * inverse.lo, 1.0)
    per_seed = [x / y for x, y in zip(a, b, strict=True)]
    assert math.isclose(r.value, math.prod(per_seed) ** (1 / 4))
    assert r.log.n == 4 and r.log.df == 3 and r.lo < r.value < r.hi


def test_error_ratio_covers_the_true_ratio_95_percent_of_the_time():
    # Monte Carlo: log-normal errors with a true ratio of 1.5 and a shared per-seed factor.
    rng = np.random.default_rng(0)
    reps, n = 4000, 12
    shared = rng.normal(0, 0.3, (reps, n))
    b = 0.02 * np.exp(shared + rng.normal(0, 0.2, (reps, n)))
    a = 1.5 * 0.02 * np.exp(shared + rng.normal(0, 0.2, (reps, n)))
    covered = sum(
        error_ratio(a[i], b[i]).lo <= 1.5 <= error_ratio(a[i], b[i]).hi for i in range(reps)
    )
    z = mc_z(covered / reps, 0.95, math.sqrt(0.95 * 0.05 / reps))
    assert abs(z) < 4


def test_side_by_side_rejects_bad_models():
    with pytest.raises(TypeError, match="models must be a list"):
        SideBySide(cnn("bn", 0))
    with pytest.raises(ValueError, match="at least one"):
        SideBySide([])
    with pytest.raises(TypeError, match=r"models\[1\] must be an nn.Sequential"):
        SideBySide([cnn("bn", 0), nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="models\\[1\\] has 3 layers"):
        SideBySide([cnn("bn", 0), nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())])
    with pytest.raises(ValueError, match="must start with a Conv2d"):
        SideBySide([nn.Sequential(nn.Flatten(), nn.Linear(64, 10))])
    with pytest.raises(ValueError, match="must start with a Conv2d"):
        SideBySide([nn.Sequential()])
    with pytest.raises(ValueError, match="layer 0: every copy needs the same Conv2d"):
        SideBySide([cnn("bn", 0), make_cnn(channels=(6, 8)).double()])
    with pytest.raises(ValueError, match="groups=1"):
        SideBySide([nn.Sequential(nn.Conv2d(2, 4, 3, groups=2))])
    with pytest.raises(ValueError, match="layer 0: every copy needs the same Conv2d"):
        SideBySide([cnn("bn", 0), cnn("none", 1)])  # with and without a bias
    with pytest.raises(
        TypeError,
        match=r"layer 1: a normalization layer cannot share its position.*BatchNorm2d, ReLU",
    ):
        SideBySide([nn.Sequential(nn.Conv2d(1, 4, 3), m) for m in (nn.BatchNorm2d(4), nn.ReLU())])
    with pytest.raises(TypeError, match="cannot put Tanh side by side"):
        SideBySide([nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh())])
    with pytest.raises(ValueError, match="layer 1: the copies' layers differ"):
        SideBySide(
            [nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(k)) for k in (2, 3)],
        )
    with pytest.raises(ValueError, match="layer 1: every copy needs the same Linear"):
        SideBySide([nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(6, k)) for k in (2, 3)])


def test_side_by_side_rejects_bad_inputs():
    net = SideBySide([cnn("bn", 0), cnn("gn", 1)])
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        net([1.0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\) or \(K, B, 1, H, W\)"):
        net(images(3, 4))


def test_train_sgd_and_accuracies_reject_bad_arguments():
    net = SideBySide([cnn("bn", 0), cnn("gn", 1)])
    x, y = images(8), torch.zeros(8, dtype=torch.int64)
    ok = {"batch": 2, "epochs": 1, "lr": 0.1, "seeds": [0, 1]}
    with pytest.raises(TypeError, match="net must be a SideBySide"):
        train_sgd(cnn("bn", 0), x, y, **ok)
    with pytest.raises(TypeError, match=r"x and y must be torch\.Tensor"):
        train_sgd(net, x, [0] * 8, **ok)
    with pytest.raises(ValueError, match="integer labels"):
        train_sgd(net, x, y.double(), **ok)
    with pytest.raises(ValueError, match=r"\(K, N\)"):
        train_sgd(net, x, y[:5], **ok)
    for key, value, error, text in [
        ("batch", 0, ValueError, "batch must be an int >= 1, got 0"),
        ("batch", 2.0, TypeError, "batch must be an int"),
        ("batch", 9, ValueError, "batch must be at most the 8 training images, got 9"),
        ("epochs", 0, ValueError, "epochs must be an int >= 1"),
        ("lr", 0.0, ValueError, "lr must be a number > 0"),
        ("lr", True, ValueError, "lr must be a number > 0"),
        ("seeds", "01", TypeError, "seeds must be a list of ints"),
        ("seeds", [0], ValueError, r"one int per copy \(2\), got 1"),
        ("seeds", [0, -1], ValueError, "each seed must be an int >= 0, got -1"),
    ]:
        with pytest.raises(error, match=text):
            train_sgd(net, x, y, **(ok | {key: value}))
    with pytest.raises(TypeError, match="net must be a SideBySide"):
        accuracies(None, x, y)
    with pytest.raises(ValueError, match="with K = 2"):
        accuracies(net, images(3, 8), torch.zeros(3, 8, dtype=torch.int64))


def test_sweep_rejects_bad_arguments():
    make = {"bn": lambda s: cnn("bn", s)}
    ok = {"batch": 4, "epochs": 1, "lr": 0.1}
    with pytest.raises(TypeError, match="models must be a non-empty dict"):
        sweep({}, [0], digits_like, **ok)
    with pytest.raises(TypeError, match=r"models\['bn'\] must be callable"):
        sweep({"bn": 3}, [0], digits_like, **ok)
    with pytest.raises(ValueError, match="seeds must be a sequence of at least 1 distinct"):
        sweep(make, [], digits_like, **ok)
    with pytest.raises(ValueError, match="got repeated seeds in"):
        sweep(make, [1, 1], digits_like, **ok)
    with pytest.raises(TypeError, match="each of seeds must be an int"):
        sweep(make, [1.5], digits_like, **ok)
    with pytest.raises(TypeError, match="data must be callable"):
        sweep(make, [0], None, **ok)
    with pytest.raises(TypeError, match="before_recalibration must be callable or None"):
        sweep(make, [0], digits_like, before_recalibration=1, **ok)

    def ragged(seed):
        x, y, xt, yt = digits_like(seed)
        return x[: 10 + seed], y[: 10 + seed], xt, yt

    with pytest.raises(ValueError, match="the same shapes for every seed"):
        sweep(make, [0, 1], ragged, **ok)


def test_fmt_accuracy_gives_mean_interval_and_one_run_binomial_se():
    acc = [0.97, 0.98, 0.99]  # mean 0.98, sd 0.01, t_{2, 0.975} = 4.303
    half = 4.302653 * 0.01 / math.sqrt(3)
    se_one = math.sqrt(0.98 * 0.02 / 719)
    assert fmt_accuracy(acc, 719) == f"98.0 ± {100 * half:.1f} [{100 * se_one:.1f}]"
    assert fmt_accuracy(torch.tensor(acc), 719) == "98.0 ± 2.5 [0.5]"


def test_fmt_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="n_test must be an int >= 1, got 0"):
        fmt_accuracy([0.9, 0.8], 0)
    with pytest.raises(ValueError, match=r"acc must hold accuracies in \[0, 1\]"):
        fmt_accuracy([90.0, 80.0], 10)
    with pytest.raises(ValueError, match="at least 2 values"):
        fmt_accuracy([0.9], 10)


def test_error_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        error_ratio([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"b must hold positive error rates.*minimum 0"):
        error_ratio([0.1, 0.2], [0.0, 0.1])
    with pytest.raises(ValueError, match="a must hold positive error rates"):
        error_ratio([-0.1, 0.2], [0.1, 0.1])
    with pytest.raises(ValueError, match="level must be a float in"):
        error_ratio([1.0, 2.0], [1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="at least 2 values"):
        error_ratio([1.0], [1.0])
