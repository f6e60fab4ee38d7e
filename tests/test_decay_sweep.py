"""nbutils.decay_sweep: the stacked sweep takes exactly the steps of separate SGD(weight_decay)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.decay_sweep import DecaySweep, stack_mlps, stacked_forward, train_decay_sweep


def mlp(seed: int, width: int = 8, d_in: int = 1, d_out: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, d_out),
    ).double()


def data(n_sets: int, n: int = 7, m: int = 11, d_in: int = 1, d_out: int = 1):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    ys = torch.randn(n_sets, n, d_out, generator=gen, dtype=torch.float64)
    x_te = torch.randn(m, d_in, generator=gen, dtype=torch.float64)
    y_te = torch.randn(m, d_out, generator=gen, dtype=torch.float64)
    return x, ys, x_te, y_te


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sweep_equals_separate_sgd_with_weight_decay(momentum):
    lams, n_sets, steps, every = (0.0, 0.05, 0.7), 3, 15, 4
    models = [mlp(s, d_in=2, d_out=2) for s in range(n_sets)]
    before = [flat(m) for m in models]
    x, ys, x_te, y_te = data(n_sets, d_in=2, d_out=2)
    sweep = train_decay_sweep(
        models, x, ys, lams, steps=steps, lr=0.05, momentum=momentum, eval_every=every,
        x_test=x_te, y_test=y_te,
    )  # fmt: skip
    assert isinstance(sweep, DecaySweep)
    assert sweep.steps.tolist() == [0, 4, 8, 12, 15]
    assert sweep.train_loss.shape == sweep.test_loss.shape == sweep.norm.shape == (5, 3, 3)
    assert sweep.test_pred.shape == (3, 3, 11, 2)
    for m, b in zip(models, before, strict=True):  # the initializations are not modified
        assert torch.equal(flat(m), b)
    for i, lam in enumerate(lams):
        for s in range(n_sets):
            model = copy.deepcopy(models[s])
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=lam)
            curve = {"train": [], "test": [], "norm": []}
            for step in range(steps + 1):
                if step:
                    opt.zero_grad()
                    F.mse_loss(model(x), ys[s]).backward()
                    opt.step()
                if step in sweep.steps.tolist():
                    with torch.no_grad():
                        curve["train"].append(F.mse_loss(model(x), ys[s]).item())
                        curve["test"].append(F.mse_loss(model(x_te), y_te).item())
                        curve["norm"].append(flat(model).norm().item())
            torch.testing.assert_close(sweep.flat_parameters(i, s), flat(model), rtol=0, atol=1e-12)
            for key, got in (
                ("train", sweep.train_loss),
                ("test", sweep.test_loss),
                ("norm", sweep.norm),
            ):
                want = torch.tensor(curve[key], dtype=torch.float64)
                torch.testing.assert_close(got[:, i, s], want, rtol=1e-12, atol=1e-12)
            with torch.no_grad():
                torch.testing.assert_close(sweep.test_pred[i, s], model(x_te), rtol=0, atol=1e-12)


def test_weight_decay_changes_the_result():
    # The comparison above can fail: λ > 0 moves the parameters away from λ = 0.
    models = [mlp(0)]
    x, ys, x_te, y_te = data(1)
    sweep = train_decay_sweep(models, x, ys, (0.0, 0.5), steps=10, lr=0.1, x_test=x_te, y_test=y_te)
    assert (sweep.flat_parameters(0, 0) - sweep.flat_parameters(1, 0)).abs().max() > 1e-3
    assert sweep.norm[-1, 1, 0] < sweep.norm[-1, 0, 0]


def test_per_set_inputs_equal_shared_inputs():
    models = [mlp(s) for s in range(2)]
    x, ys, x_te, y_te = data(2)
    kw = {"steps": 5, "lr": 0.05, "momentum": 0.5, "x_test": x_te, "y_test": y_te}
    shared = train_decay_sweep(models, x, ys, (0.1,), **kw)
    per_set = train_decay_sweep(models, x.expand(2, -1, -1), ys, (0.1,), **kw)
    torch.testing.assert_close(shared.test_loss, per_set.test_loss, rtol=0, atol=1e-14)
    assert shared.steps.tolist() == [0, 1, 2, 3, 4, 5]


def test_stack_and_forward_match_the_modules():
    models = [mlp(s, d_in=3, d_out=2) for s in range(4)]
    layers = stack_mlps(models)
    assert [tuple(w.shape) for w, _ in layers] == [(4, 3, 8), (4, 8, 8), (4, 8, 2)]
    assert [tuple(b.shape) for _, b in layers] == [(4, 1, 8), (4, 1, 8), (4, 1, 2)]
    assert all(w.requires_grad and b.requires_grad for w, b in layers)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = stacked_forward(layers, x)
    with torch.no_grad():
        want = torch.stack([m(x) for m in models])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(stacked_forward(layers, x.expand(4, -1, -1)), out)


def test_stacked_forward_rejects_bad_input():
    layers = stack_mlps([mlp(0), mlp(1)])
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        stacked_forward(layers, [[1.0]])
    with pytest.raises(ValueError, match=r"x must have shape \(2, n, 1\) or \(n, 1\)"):
        stacked_forward(layers, torch.zeros(3, 5, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape"):
        stacked_forward(layers, torch.zeros(5, 2, dtype=torch.float64))


def test_flat_parameters_rejects_bad_indices():
    x, ys, x_te, y_te = data(1)
    sweep = train_decay_sweep([mlp(0)], x, ys, (0.0,), steps=1, lr=0.1, x_test=x_te, y_test=y_te)
    with pytest.raises(ValueError, match=r"i must be an int in \[0, 1\), got 1"):
        sweep.flat_parameters(1, 0)
    with pytest.raises(ValueError, match=r"s must be an int in \[0, 1\), got -1"):
        sweep.flat_parameters(0, -1)
    with pytest.raises(ValueError, match="s must be an int"):
        sweep.flat_parameters(0, True)


def bad_models():
    wrong_kind = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    no_bias = nn.Sequential(nn.Linear(1, 4, bias=False), nn.ReLU(), nn.Linear(4, 1))
    ends_in_relu = nn.Sequential(nn.Linear(1, 4), nn.ReLU())
    return [
        (mlp(0), TypeError, "models must be a list or tuple of nn.Sequential"),
        ("abc", TypeError, "models must be a list or tuple"),
        ([], ValueError, "models must hold at least one"),
        ([nn.Linear(1, 1)], TypeError, r"models\[0\] must be an nn.Sequential, got Linear"),
        ([wrong_kind], ValueError, r"models\[0\] must alternate nn.Linear and nn.ReLU"),
        ([ends_in_relu], ValueError, r"must alternate nn.Linear and nn.ReLU"),
        ([nn.Sequential()], ValueError, r"must alternate nn.Linear and nn.ReLU"),
        ([no_bias], ValueError, r"models\[0\]: every nn.Linear must have a bias"),
        ([mlp(0), mlp(1, width=5)], ValueError, r"models\[1\] does not have the layer sizes"),
    ]


@pytest.mark.parametrize(("models", "error", "message"), bad_models())
def test_bad_models_are_rejected(models, error, message):
    with pytest.raises(error, match=message):
        stack_mlps(models)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"lams": ()}, ValueError, "lams must hold at least one number >= 0"),
        ({"lams": "0.1"}, TypeError, "lams must be a sequence of numbers >= 0, got '0.1'"),
        ({"lams": 0.1}, TypeError, "lams must be a sequence of numbers >= 0, got 0.1"),
        ({"lams": (0.0, -0.1)}, ValueError, r"lams\[1\] must be a number in \[0.0, inf\)"),
        ({"lams": (True,)}, TypeError, r"lams\[0\] must be a number"),
        ({"lams": (float("nan"),)}, ValueError, r"lams\[0\] must be a number"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
        ({"steps": 2.0}, TypeError, "steps must be an int >= 1, got 2.0"),
        ({"eval_every": 0}, ValueError, "eval_every must be an int >= 1, got 0"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0"),
        ({"lr": -1.0}, ValueError, "lr must be a finite number > 0, got -1.0"),
        ({"lr": float("inf")}, ValueError, "lr must be a finite number > 0, got inf"),
        ({"lr": "0.1"}, TypeError, "lr must be a number > 0, got '0.1'"),
        ({"momentum": 1.0}, ValueError, r"momentum must be a number in \[0.0, 1.0\), got 1.0"),
        ({"x": [[0.0]]}, TypeError, "x must be a floating-point torch.Tensor, got list"),
        ({"x": torch.zeros(7, 1, dtype=torch.long)}, TypeError, "x must be a floating-point"),
        (
            {"x": torch.zeros(7, 2)},
            ValueError,
            r"x must have shape \(n, 1\) with n >= 1, got \(7, 2\)",
        ),
        (
            {"x": torch.zeros(3, 7, 1)},
            ValueError,
            r"x must have shape \(2, n, 1\) with n >= 1, got \(3, 7, 1\)",
        ),
        (
            {"x": torch.zeros(0, 1)},
            ValueError,
            r"x must have shape \(n, 1\) with n >= 1, got \(0, 1\)",
        ),
        (
            {"ys": torch.zeros(2, 6, 1)},
            ValueError,
            r"ys must have shape \(2, 7, 1\) with n >= 1, got \(2, 6, 1\)",
        ),
        (
            {"x_test": torch.zeros(4)},
            ValueError,
            r"x_test must have shape \(n, 1\) with n >= 1, got \(4,\)",
        ),
        (
            {"y_test": torch.zeros(10, 1)},
            ValueError,
            r"y_test must have shape \(11, 1\) with n >= 1, got \(10, 1\)",
        ),
    ],
)
def test_bad_arguments_are_rejected(change, error, message):
    x, ys, x_te, y_te = data(2)
    kw = {"x": x, "ys": ys, "lams": (0.0,), "steps": 2, "lr": 0.1, "x_test": x_te, "y_test": y_te}
    kw.update(change)
    with pytest.raises(error, match=message):
        train_decay_sweep([mlp(0), mlp(1)], **kw)
