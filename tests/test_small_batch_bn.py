"""nbutils.small_batch_bn: Ghost BN and Batch Renorm against nn.BatchNorm2d and the formulas."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.batch_sweep import SideBySide
from nbutils.small_batch_bn import BatchRenorm2d, GhostBatchNorm2d, renorm_limits


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
        module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
        module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)


def _pair(ghost: int, gen: torch.Generator, momentum: float = 0.1):
    gbn = GhostBatchNorm2d(3, ghost, momentum=momentum).double()
    _randomize(gbn, gen)
    bn = nn.BatchNorm2d(3, momentum=momentum).double()
    bn.load_state_dict(gbn.state_dict())
    return gbn, bn


@pytest.mark.parametrize("n", [4, 6])
def test_ghost_with_one_ghost_batch_is_batchnorm(n):
    gen = torch.Generator().manual_seed(n)
    gbn, bn = _pair(n, gen)
    x = (2 * torch.randn(n, 3, 4, 5, generator=gen, dtype=torch.float64) + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = gbn(x), bn(x2)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    assert (y - y_ref).abs().max() < 1e-12
    assert (x.grad - x2.grad).abs().max() < 1e-12
    assert (gbn.weight.grad - bn.weight.grad).abs().max() < 1e-12
    for name in ("running_mean", "running_var"):
        assert (getattr(gbn, name) - getattr(bn, name)).abs().max() < 1e-12
    assert int(gbn.num_batches_tracked) == int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize(("n", "ghost", "momentum"), [(8, 2, 0.1), (12, 4, 0.3), (6, 1, 0.5)])
def test_ghost_equals_batchnorm_fed_ghost_batches_in_order(n, ghost, momentum):
    gen = torch.Generator().manual_seed(n + ghost)
    gbn, bn = _pair(ghost, gen, momentum)
    x = torch.randn(n, 3, 3, 3, generator=gen, dtype=torch.float64) * 3 - 1
    y = gbn(x)
    y_ref = torch.cat([bn(c) for c in x.split(ghost)])  # one ghost batch after another
    assert (y - y_ref).abs().max() < 1e-12
    for name in ("running_mean", "running_var"):
        assert (getattr(gbn, name) - getattr(bn, name)).abs().max() < 1e-12
    assert int(gbn.num_batches_tracked) == n // ghost
    gbn.eval(), bn.eval()
    assert (gbn(x) - bn(x)).abs().max() < 1e-12


def test_ghost_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"ghost_batch must be an int >= 1, got 2\.0"):
        GhostBatchNorm2d(3, 2.0)
    with pytest.raises(ValueError, match="ghost_batch must be an int >= 1, got 0"):
        GhostBatchNorm2d(3, 0)
    with pytest.raises(ValueError, match="num_features must be an int >= 1, got 0"):
        GhostBatchNorm2d(0, 2)
    with pytest.raises(ValueError, match=r"momentum must be a number in \(0, 1\], got 0"):
        GhostBatchNorm2d(3, 2, momentum=0)
    with pytest.raises(TypeError, match="momentum must be a number"):
        GhostBatchNorm2d(3, 2, momentum=None)
    with pytest.raises(ValueError, match="eps must be a number >= 0, got -1"):
        GhostBatchNorm2d(3, 2, eps=-1)
    gbn = GhostBatchNorm2d(3, 4)
    with pytest.raises(
        ValueError, match="batch of 6 samples must be a multiple of ghost_batch = 4"
    ):
        gbn(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\), got \(4, 2, 2, 2\)"):
        gbn(torch.randn(4, 2, 2, 2))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        gbn([1.0])


def _renorm_pair(gen, **kwargs):
    brn = BatchRenorm2d(3, **kwargs).double()
    _randomize(brn, gen)
    return brn


def test_renorm_with_unit_limits_is_batchnorm_in_training():
    gen = torch.Generator().manual_seed(1)
    brn = _renorm_pair(gen, r_max=1.0, d_max=0.0)
    bn = nn.BatchNorm2d(3).double()
    bn.load_state_dict(brn.state_dict())
    x = (torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 + 3).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = brn(x), bn(x2)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    assert (y - y_ref).abs().max() < 1e-12
    assert (x.grad - x2.grad).abs().max() < 1e-12
    assert (brn.weight.grad - bn.weight.grad).abs().max() < 1e-12
    assert (brn.bias.grad - bn.bias.grad).abs().max() < 1e-12


def test_renorm_unclipped_training_output_is_inference_output():
    gen = torch.Generator().manual_seed(2)
    brn = _renorm_pair(gen, r_max=math.inf, d_max=math.inf)
    before = copy.deepcopy(brn).eval()
    x = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64) * 4 - 2
    y_train = brn.train()(x)
    y_eval = before(x)
    sigma = before.running_var.sqrt()[:, None, None]  # the formula, written out once more
    y_formula = (x - before.running_mean[:, None, None]) / sigma * before.weight[
        :, None, None
    ] + before.bias[:, None, None]
    assert (y_train - y_eval).abs().max() < 1e-12
    assert (y_train - y_formula).abs().max() < 1e-12
    assert (brn(x) - y_eval).abs().max() > 1e-3  # the running statistics moved


def test_renorm_gradient_is_r_times_batchnorm_gradient():
    # r and d carry no gradient: dy/dx is BN's with gamma multiplied by r.
    gen = torch.Generator().manual_seed(3)
    brn = _renorm_pair(gen, r_max=math.inf, d_max=math.inf)
    x = (torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    std = torch.sqrt(x.detach().var(dim=(0, 2, 3), correction=0) + brn.eps)
    r = std / brn.running_var.sqrt()
    x2 = x.detach().clone().requires_grad_()
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (brn(x) * w).sum().backward()
    ref = F.batch_norm(x2, None, None, brn.weight.detach() * r, None, training=True)
    (ref * w).sum().backward()
    assert (x.grad - x2.grad).abs().max() < 1e-12


def test_renorm_running_statistics_follow_the_paper():
    gen = torch.Generator().manual_seed(4)
    brn = _renorm_pair(gen, r_max=2.0, d_max=1.0, momentum=0.3)
    mu0, sigma0 = brn.running_mean.clone(), brn.running_var.sqrt()
    x = torch.randn(3, 3, 2, 2, generator=gen, dtype=torch.float64) + 0.5
    brn(x)
    mean = x.mean(dim=(0, 2, 3))
    std = torch.sqrt(x.var(dim=(0, 2, 3), correction=0) + brn.eps)
    assert (brn.running_mean - (mu0 + 0.3 * (mean - mu0))).abs().max() < 1e-12
    assert (brn.running_var.sqrt() - (sigma0 + 0.3 * (std - sigma0))).abs().max() < 1e-12
    assert int(brn.num_batches_tracked) == 1


def test_renorm_clips_r_and_d():
    gen = torch.Generator().manual_seed(5)
    brn = BatchRenorm2d(2, r_max=1.5, d_max=0.25).double()
    with torch.no_grad():  # running sigma 1, mean 0; the batch: sigma ~ 3, mean ~ 2
        brn.weight.fill_(1.0)
        brn.bias.zero_()
    x = torch.randn(64, 2, 2, 2, generator=gen, dtype=torch.float64) * 3 + 2
    y = brn(x)
    mean = x.mean(dim=(0, 2, 3))
    std = torch.sqrt(x.var(dim=(0, 2, 3), correction=0) + 1e-5)
    expected = (x - mean[:, None, None]) / std[:, None, None] * 1.5 + 0.25
    assert (y - expected).abs().max() < 1e-12


def test_renorm_schedule_in_the_module():
    brn = BatchRenorm2d(2, r_max=3.0, d_max=5.0, plain_steps=2, r_steps=6, d_steps=4)
    seen = []
    for _ in range(7):
        seen.append(brn.limits())
        brn(torch.randn(4, 2, 2, 2))
    assert seen == [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5), (2.5, 5), (3, 5)]


def test_renorm_limits_schedule_of_the_paper():
    kw = {"r_max": 3.0, "d_max": 5.0, "plain_steps": 5000, "r_steps": 40000, "d_steps": 25000}
    assert renorm_limits(0, **kw) == (1.0, 0.0)
    assert renorm_limits(4999, **kw) == (1.0, 0.0)
    assert renorm_limits(5000, **kw) == (1.0, 0.0)
    r, d = renorm_limits(15000, **kw)
    assert math.isclose(r, 1 + 2 * 10000 / 35000) and math.isclose(d, 5 * 10000 / 20000)
    assert renorm_limits(25000, **kw)[1] == 5.0
    assert renorm_limits(10**6, **kw) == (3.0, 5.0)
    assert renorm_limits(7, r_max=math.inf, d_max=math.inf) == (math.inf, math.inf)


def test_renorm_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"r_max must be a number >= 1 \(inf allowed\), got 0.5"):
        BatchRenorm2d(3, r_max=0.5)
    with pytest.raises(ValueError, match=r"d_max must be a number >= 0 \(inf allowed\), got -1"):
        BatchRenorm2d(3, d_max=-1)
    with pytest.raises(TypeError, match="r_max must be a number"):
        BatchRenorm2d(3, r_max="3")
    with pytest.raises(TypeError, match="d_max must be a number"):
        BatchRenorm2d(3, d_max=float("nan"))
    with pytest.raises(ValueError, match="r_steps must be 0 or >= plain_steps = 10, got 5"):
        BatchRenorm2d(3, plain_steps=10, r_steps=5)
    with pytest.raises(ValueError, match="d_steps must be 0 or >= plain_steps = 10, got 5"):
        BatchRenorm2d(3, plain_steps=10, r_steps=20, d_steps=5)
    with pytest.raises(ValueError, match="plain_steps must be an int >= 0, got -1"):
        BatchRenorm2d(3, plain_steps=-1)
    with pytest.raises(ValueError, match=r"momentum must be a number in \(0, 1\], got 1.5"):
        BatchRenorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match=r"eps must be a number >= 0, got -0\.1"):
        BatchRenorm2d(3, eps=-0.1)
    with pytest.raises(ValueError, match="num_features must be an int >= 1, got 0"):
        BatchRenorm2d(0)
    with pytest.raises(ValueError, match="an infinite bound cannot be ramped"):
        renorm_limits(3, r_max=math.inf, d_max=1.0, plain_steps=1, r_steps=5)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        renorm_limits(-1, r_max=2.0, d_max=1.0)
    brn = BatchRenorm2d(3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\), got \(2, 3\)"):
        brn(torch.randn(2, 3))


def test_both_modules_train_side_by_side_as_alone():
    # SideBySide merges each module's copies into one wide layer: outputs equal one by one.
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 1, 6, 6, generator=gen, dtype=torch.float64)
    for make in (lambda: GhostBatchNorm2d(4, 2), lambda: BatchRenorm2d(4, r_max=2.0, d_max=1.0)):
        models = []
        for k in range(3):
            torch.manual_seed(k)
            models.append(
                nn.Sequential(
                    nn.Conv2d(1, 4, 3, bias=False),
                    make(),
                    nn.ReLU(),
                    nn.Flatten(),
                    nn.Linear(64, 2),
                ).double()
            )
        for m in models:
            _randomize(m[1], gen)
        net = SideBySide(models)
        out = net(x)
        for k, m in enumerate(models):
            assert (out[k] - m(x)).abs().max() < 1e-12
