"""nbutils.bn_dropout against hand-written loops and brute-force computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbutils.bn_dropout import bn_eval_inputs, train_stacked, variance_ratios


def mlp(dropout: float = 0.0) -> nn.Sequential:
    layers = [nn.Linear(5, 6, bias=False)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def data(n: int = 23, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = 1.0 + 2.0 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


def train_one_by_one(make_model, seeds, x, y, epochs, batch_size, lr):
    # The reference: one network, one optimizer and one data order per seed, in a loop.
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = make_model().train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=order).split(batch_size):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        out.append(model.eval())
    return out


def test_train_stacked_matches_separate_training_with_uneven_batches():
    x, y = data(23)  # batches of 5: 5, 5, 5, 5, 3
    seeds = [3, 0, 11]
    stacked = train_stacked(mlp, seeds, x, y, epochs=3, batch_size=5, lr=0.05)
    separate = train_one_by_one(mlp, seeds, x, y, epochs=3, batch_size=5, lr=0.05)
    assert len(stacked) == len(seeds)
    for a, b in zip(stacked, separate, strict=True):
        assert not a.training
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:  # weights and BN running statistics
            assert torch.allclose(sa[key].double(), sb[key].double(), rtol=0, atol=1e-10), key


def test_same_seed_gives_same_network_without_dropout_and_different_masks_with_it():
    x, y = data(20)
    twins = train_stacked(mlp, [5, 5], x, y, epochs=2, batch_size=4, lr=0.05)
    assert all(
        torch.equal(a, b)
        for a, b in zip(twins[0].state_dict().values(), twins[1].state_dict().values(), strict=True)
    )
    noisy = train_stacked(lambda: mlp(0.5), [5, 5], x, y, epochs=2, batch_size=4, lr=0.05)
    assert not torch.equal(noisy[0][0].weight, noisy[1][0].weight)


def test_variants_trained_from_the_same_seeds_start_from_the_same_weights():
    # epochs=1 with lr tiny: the weights are the initial ones up to lr-sized steps.
    x, y = data(20)
    plain = train_stacked(mlp, [1, 2], x, y, epochs=1, batch_size=20, lr=1e-12)
    noisy = train_stacked(lambda: mlp(0.3), [1, 2], x, y, epochs=1, batch_size=20, lr=1e-12)
    for a, b in zip(plain, noisy, strict=True):
        assert torch.allclose(a[0].weight, b[0].weight, atol=1e-9, rtol=0)
        assert torch.allclose(a[-1].weight, b[-1].weight, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"make_model": "mlp"}, TypeError, "make_model must be callable"),
        ({"seeds": []}, ValueError, r"seeds must be a sequence of at least 1 ints >= 0, got \[\]"),
        ({"seeds": "01"}, TypeError, "seeds must be a sequence of at least 1 ints"),
        ({"seeds": 3}, TypeError, "seeds must be a sequence of at least 1 ints"),
        ({"seeds": [1, -2]}, ValueError, "each of seeds must be an int >= 0, got -2"),
        ({"seeds": [1, True]}, TypeError, "each of seeds must be an int >= 0, got True"),
        ({"seeds": [1.0]}, TypeError, "each of seeds must be an int >= 0, got 1.0"),
        ({"x": [[1.0]]}, TypeError, "x and y must be torch.Tensor"),
        ({"y": torch.zeros(4, dtype=torch.long)}, ValueError, "the same N"),
        ({"x": torch.zeros(8)}, ValueError, "x must have shape"),
        ({"epochs": 0}, ValueError, "epochs must be an int >= 1, got 0"),
        ({"epochs": 2.0}, TypeError, "epochs must be an int >= 1, got 2.0"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": True}, TypeError, "batch_size must be an int >= 1, got True"),
        ({"lr": 0.0}, ValueError, "lr must be a number > 0, got 0.0"),
        ({"lr": -1}, ValueError, "lr must be a number > 0, got -1"),
        ({"lr": "fast"}, ValueError, "lr must be a number > 0, got 'fast'"),
        ({"lr": True}, ValueError, "lr must be a number > 0, got True"),
    ],
)
def test_train_stacked_rejects_bad_input(kwargs, error, message):
    x, y = data(8)
    args = {"make_model": mlp, "seeds": [0, 1], "x": x, "y": y}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    options = {"epochs": 1, "batch_size": 4, "lr": 0.1} | kwargs
    with pytest.raises(error, match=message):
        train_stacked(args["make_model"], args["seeds"], args["x"], args["y"], **options)


def trained_bn_model(seed: int = 0) -> nn.Sequential:
    # Linear -> Dropout -> BN -> ReLU -> Linear -> BN, float64, non-trivial statistics.
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.5),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4),
        nn.BatchNorm1d(4),
    ).double()
    with torch.no_grad():
        for bn in (model[2], model[5]):
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return model


def test_bn_eval_inputs_are_the_eval_mode_inputs_and_modes_are_restored():
    model = trained_bn_model().train()
    model[1].eval()  # a mixed state that must survive
    before = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    x, _ = data(31)
    inputs = bn_eval_inputs(model, x)
    assert list(inputs) == ["2", "5"]
    with torch.no_grad():
        first = model[0](x)  # Dropout is the identity in eval mode
        bn1 = model[2]
        z = (first - bn1.running_mean) / torch.sqrt(bn1.running_var + bn1.eps)
        second = model[4](torch.relu(z * bn1.weight + bn1.bias))
    assert torch.allclose(inputs["2"], first, rtol=0, atol=1e-12)
    assert torch.allclose(inputs["5"], second, rtol=0, atol=1e-12)
    assert [m.training for m in model.modules()] == before
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_variance_ratios_match_a_brute_force_computation():
    model = trained_bn_model()
    x, _ = data(57)
    result = variance_ratios(model, x)
    inputs = bn_eval_inputs(model, x)
    for (ratio, se), name in zip(result, ("2", "5"), strict=True):
        a = inputs[name]
        rv = dict(model.named_modules())[name].running_var
        per_channel = [a[:, c].var().item() / rv[c].item() for c in range(a.shape[1])]
        assert ratio == pytest.approx(sum(per_channel) / len(per_channel), rel=1e-12)
        assert se > 0


def test_variance_ratio_standard_error_matches_the_spread_over_data_sets():
    # Correlated, skewed channels; the spread of R over many independent data sets must match
    # the standard error reported from one data set (on average), within 15%.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double().eval()
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64))
    gen = torch.Generator().manual_seed(1)
    values, ses = [], []
    for _ in range(400):
        x = torch.randn(200, 3, generator=gen, dtype=torch.float64).exp()  # log-normal
        ((ratio, se),) = variance_ratios(model, x)
        values.append(ratio)
        ses.append(se)
    spread = torch.tensor(values).std().item()
    reported = math.sqrt(sum(s * s for s in ses) / len(ses))
    assert reported == pytest.approx(spread, rel=0.15)


def test_variance_ratios_pool_positions_of_batchnorm2d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)).double()
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    x = torch.randn(9, 2, 5, 5, dtype=torch.float64)
    ((ratio, _),) = variance_ratios(model, x)
    with torch.no_grad():
        h = model[0](x).transpose(0, 1).reshape(3, -1)  # (C, N * H * W)
    expected = (h.var(dim=1) / model[1].running_var).mean().item()
    assert ratio == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("function", [bn_eval_inputs, variance_ratios])
@pytest.mark.parametrize(
    ("model", "x", "error", "message"),
    [
        ("not a model", torch.zeros(4, 5), TypeError, "model must be an nn.Module"),
        (nn.Linear(5, 2), torch.zeros(4, 5), ValueError, "no BatchNorm layer"),
        (
            nn.Sequential(nn.BatchNorm1d(5, track_running_stats=False)),
            torch.zeros(4, 5),
            ValueError,
            "no BatchNorm layer",
        ),
        (None, torch.zeros(1, 5), ValueError, "x must be a tensor of shape"),
        (None, torch.zeros(5), ValueError, "x must be a tensor of shape"),
        (None, [[0.0] * 5] * 4, ValueError, "x must be a tensor of shape"),
    ],
)
def test_measurements_reject_bad_input(function, model, x, error, message):
    model = trained_bn_model() if model is None else model
    with pytest.raises(error, match=message):
        function(model, x)
