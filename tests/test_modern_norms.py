"""Tests of nbutils.modern_norms: weight standardization, the WS sweep, the sequence task,
stacked Adam with per-model warm-up, and gradient norms of stacked models."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from nbutils import make_cnn
from nbutils.modern_norms import (
    StandardizeRows,
    adam_step,
    last_ffn_grad_norms,
    reversal_task,
    standardize_weight,
    train_with_warmup,
    ws_sweep,
)


def test_standardize_weight_matches_layer_norm_over_each_row():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 5), (4, 2, 3, 3), (2, 7, 5)]:
        w = 2.0 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.3
        rows = w.reshape(shape[0], -1)
        ref = F.layer_norm(rows, rows.shape[1:], eps=1e-3).reshape(shape)
        assert (standardize_weight(w, 1e-3) - ref).abs().max() < 1e-12


def test_standardize_weight_rows_have_mean_0_variance_1_at_eps_0():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    rows = standardize_weight(w, 0.0).reshape(6, -1)
    assert rows.mean(1).abs().max() < 1e-12
    assert (rows.var(1, correction=0) - 1).abs().max() < 1e-12


@pytest.mark.parametrize(
    ("weight", "eps", "error"),
    [
        ([1.0, 2.0], 1e-5, TypeError),
        (torch.ones(3), 1e-5, ValueError),
        (torch.ones(3, 2), -1.0, ValueError),
        (torch.ones(3, 2), "0", ValueError),
        (torch.ones(3, 2), True, ValueError),
    ],
)
def test_standardize_weight_rejects_bad_input(weight, eps, error):
    with pytest.raises(error):
        standardize_weight(weight, eps)


def test_standardize_rows_masks_rows():
    w = torch.randn(4, 3, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False])
    out = StandardizeRows(mask, eps=0.0)(w)
    full = standardize_weight(w, 0.0)
    assert torch.equal(out[mask], full[mask]) and torch.equal(out[~mask], w[~mask])
    assert torch.equal(StandardizeRows(None, eps=0.0)(w), full)


def test_standardize_rows_errors():
    with pytest.raises(TypeError, match="mask"):
        StandardizeRows(torch.ones(3))
    with pytest.raises(ValueError, match="eps"):
        StandardizeRows(None, eps=-1)
    with pytest.raises(ValueError, match="rows"):
        StandardizeRows(torch.ones(3, dtype=torch.bool))(torch.ones(4, 2))


def _split(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (24,), generator=gen)
    return x[:16], y[:16], x[16:], y[16:]


def _maker(norm):
    def make(seed):
        torch.manual_seed(seed)
        return make_cnn(channels=(4, 8), norm=norm)

    return make


def test_ws_sweep_equals_separate_training_with_parametrized_convs():
    seeds = [3, 5]
    models = {"gn": (_maker("gn"), False), "ws": (_maker("gn"), True)}
    got = ws_sweep(models, seeds, _split, batch=4, epochs=1, lr=0.05)
    assert set(got) == {"gn", "ws"} and got["ws"].shape == (2,)
    # The WS copy alone, trained with a parametrization on each of its own convs.
    for k, s in enumerate(seeds):
        alone = _maker("gn")(s)
        for layer in alone:
            if isinstance(layer, nn.Conv2d):
                parametrize.register_parametrization(layer, "weight", StandardizeRows())
        x, y, xt, yt = _split(s)
        opt = torch.optim.SGD(alone.parameters(), lr=0.05, momentum=0.9)
        order = torch.Generator().manual_seed(s)
        steps = 16 // 4
        perm = torch.randperm(16, generator=order)
        for t in range(steps):
            for group in opt.param_groups:
                group["lr"] = 0.05 * (1 + torch.cos(torch.tensor(torch.pi * t / steps))) / 2
            idx = perm[t * 4 : (t + 1) * 4]
            opt.zero_grad()
            F.cross_entropy(alone(x[idx]), y[idx]).backward()
            opt.step()
        alone.eval()
        with torch.no_grad():
            acc = (alone(xt).argmax(1) == yt).double().mean()
        assert abs(acc.item() - got["ws"][k].item()) < 1e-9


@pytest.mark.parametrize(
    ("models", "seeds", "data", "error"),
    [
        ({}, [0], _split, TypeError),
        ({"a": _maker("gn")}, [0], _split, TypeError),
        ({"a": (_maker("gn"), 1)}, [0], _split, TypeError),
        ({"a": (_maker("gn"), True)}, [], _split, ValueError),
        ({"a": (_maker("gn"), True)}, [0, 0], _split, ValueError),
        ({"a": (_maker("gn"), True)}, [-1], _split, ValueError),
        ({"a": (_maker("gn"), True)}, [0], "data", TypeError),
    ],
)
def test_ws_sweep_rejects_bad_input(models, seeds, data, error):
    with pytest.raises(error):
        ws_sweep(models, seeds, data, batch=4, epochs=1, lr=0.1)


def test_reversal_task():
    x, y = reversal_task(5, 7, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 7) and x.dtype == torch.int64
    assert torch.equal(y, x.flip(-1)) and 0 <= x.min() and x.max() < 4


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 3, 4, torch.Generator()), ValueError),
        ((2, 3, 1, torch.Generator()), ValueError),
        ((2, 3.0, 4, torch.Generator()), TypeError),
        ((2, 3, 4, 0), TypeError),
    ],
)
def test_reversal_task_rejects_bad_input(args, error):
    with pytest.raises(error):
        reversal_task(*args)


class _Seq(nn.Module):
    def __init__(self, vocab=5, length=4, d=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ff2 = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.head(torch.tanh(self.ff2(self.emb(x))))


def test_adam_step_equals_torch_adam_per_model():
    torch.manual_seed(0)
    params = [torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)]
    ref = [params[0][k].detach().clone().requires_grad_(True) for k in range(3)]
    lrs = torch.tensor([0.1, 0.01, 0.0], dtype=torch.float64)
    opts = [torch.optim.Adam([r], lr=lr.item()) for r, lr in zip(ref, lrs, strict=True)]
    state = [(torch.zeros_like(params[0]), torch.zeros_like(params[0]))]
    for step in range(1, 6):
        target = torch.randn(3, 4, 2, dtype=torch.float64)
        params[0].grad = None
        (params[0] - target).pow(2).sum().backward()
        adam_step(params, state, step, lrs)
        for k, (r, opt) in enumerate(zip(ref, opts, strict=True)):
            opt.zero_grad()
            (r - target[k]).pow(2).sum().backward()
            opt.step()
    for k in range(3):
        assert (params[0][k] - ref[k]).abs().max() < 1e-12


def test_adam_step_errors():
    p = [torch.zeros(2, 3, requires_grad=True)]
    state = [(torch.zeros(2, 3), torch.zeros(2, 3))]
    with pytest.raises(ValueError, match="grad"):
        adam_step(p, state, 1, torch.ones(2))
    p[0].grad = torch.ones(2, 3)
    with pytest.raises(TypeError, match="lr"):
        adam_step(p, state, 1, 0.1)
    with pytest.raises(ValueError, match="step"):
        adam_step(p, state, 0, torch.ones(2))


def test_train_with_warmup_matches_separate_adam():
    torch.manual_seed(1)
    models = [_Seq() for _ in range(2)]
    models = models + [copy.deepcopy(m) for m in models]
    warmups = [0, 0, 3, 3]
    losses = train_with_warmup(
        models, warmups, lr=0.05, steps=5, batch=6, length=4, vocab=5,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert losses.shape == (5, 4)
    # model 2 (warm-up 3) trained alone with torch.optim.Adam and LambdaLR
    alone = copy.deepcopy(models[2])
    opt = torch.optim.Adam(alone.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 3))
    gen = torch.Generator().manual_seed(7)
    for t in range(5):
        x, y = reversal_task(6, 4, 5, gen)
        loss = F.cross_entropy(alone(x).reshape(-1, 5), y.reshape(-1))
        assert abs(loss.item() - losses[t, 2].item()) < 1e-5
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert not torch.equal(losses[:, 0], losses[:, 2])  # the schedules differ


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"models": _Seq()}, TypeError),
        ({"warmups": "0"}, TypeError),
        ({"warmups": [0]}, ValueError),
        ({"warmups": [0, -1]}, ValueError),
        ({"lr": 0}, ValueError),
        ({"steps": 0}, ValueError),
        ({"batch": 0}, ValueError),
    ],
)
def test_train_with_warmup_rejects_bad_input(kwargs, error):
    args = {
        "models": [_Seq(), _Seq()], "warmups": [0, 1], "lr": 0.01, "steps": 1, "batch": 2,
        "length": 4, "vocab": 5, "generator": torch.Generator(),
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(error):
        train_with_warmup(**args)


def test_last_ffn_grad_norms_match_autograd_per_model():
    torch.manual_seed(2)
    models = [_Seq().double() for _ in range(3)]
    x, y = reversal_task(4, 4, 5, torch.Generator().manual_seed(1))
    got = last_ffn_grad_norms(models, ["ff2.weight", "head.weight"], x, y)
    assert got.shape == (2, 3)
    for k, m in enumerate(models):
        loss = F.cross_entropy(m(x).reshape(-1, 5), y.reshape(-1))
        gw, gh = torch.autograd.grad(loss, [m.ff2.weight, m.head.weight])
        assert abs(gw.norm() - got[0, k]) < 1e-12 and abs(gh.norm() - got[1, k]) < 1e-12


def test_last_ffn_grad_norms_errors():
    x, y = reversal_task(2, 4, 5, torch.Generator())
    with pytest.raises(TypeError):
        last_ffn_grad_norms(_Seq(), ["ff2.weight"], x, y)
    with pytest.raises(TypeError):
        last_ffn_grad_norms([_Seq()], "ff2.weight", x, y)
    with pytest.raises(ValueError, match="not parameters"):
        last_ffn_grad_norms([_Seq()], ["nope"], x, y)
