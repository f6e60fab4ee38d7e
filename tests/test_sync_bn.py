"""Tests of nbutils.sync_bn: Sync BN on a gloo process group; the SyncBatchNorm reverter."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.sync_bn import (
    communicated_numbers,
    free_port,
    revert_sync_batchnorm,
    run_sync_bn_group,
    sync_batch_norm,
)


def _task(n: int = 6, c: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, c, 2, 3, generator=g, dtype=torch.float64) + 1
    return {
        "x": x,
        "dy": torch.randn(x.shape, generator=g, dtype=torch.float64),
        "weight": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
        "bias": torch.randn(c, generator=g, dtype=torch.float64),
    }


def _no_children_left() -> bool:
    return multiprocessing.active_children() == []


def test_three_processes_equal_one_large_batch():
    task = _task(n=6)
    res = run_sync_bn_group(3, task, timeout=120)
    x = task["x"].clone().requires_grad_()
    w, b = (task[k].clone().requires_grad_() for k in ("weight", "bias"))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, w, b, training=True)
    (y * task["dy"]).sum().backward()
    assert torch.allclose(torch.cat([r["y"] for r in res]), y, rtol=0, atol=1e-12)
    assert torch.allclose(torch.cat([r["dx"] for r in res]), x.grad, rtol=0, atol=1e-12)
    # parameter gradients are local: their sum over processes is the large batch's
    assert torch.allclose(sum(r["dweight"] for r in res), w.grad, rtol=0, atol=1e-12)
    assert torch.allclose(sum(r["dbias"] for r in res), b.grad, rtol=0, atol=1e-12)
    for r in res:  # running averages as nn.BatchNorm updates them on the whole batch
        assert torch.allclose(r["running_mean"], rm, rtol=0, atol=1e-12)
        assert torch.allclose(r["running_var"], rv, rtol=0, atol=1e-12)
        assert r["forward_numbers"] == [7] and r["backward_numbers"] == [6]
        assert r["syncbn_error"].startswith("ValueError: SyncBatchNorm expected input tensor")
    gap_local = (torch.cat([r["y_local"] for r in res]) - y).abs().max()
    assert gap_local > 1e-3  # per-process BN differs
    assert _no_children_left()


def test_worker_that_raises_leaves_no_process():
    with pytest.raises(RuntimeError, match="rank 1 failed on purpose"):
        run_sync_bn_group(2, {**_task(n=4), "fail_rank": 1}, timeout=120)
    assert _no_children_left()


def test_mismatched_features_between_processes():
    with pytest.raises(RuntimeError, match="feature count differs between processes"):
        run_sync_bn_group(2, {**_task(n=4), "features": [3, 2]}, timeout=120)
    assert _no_children_left()


def test_timeout_terminates_the_group():
    with pytest.raises(TimeoutError, match=r"timeout = 0\.01"):
        run_sync_bn_group(2, _task(n=4), timeout=0.01)
    assert _no_children_left()


@pytest.mark.parametrize("world_size", [1, 0, -2, 2.0, True, "2", 17])
def test_bad_world_size(world_size):
    with pytest.raises(ValueError, match="world_size must be"):
        run_sync_bn_group(world_size, _task())


def test_batch_not_divisible_by_world_size():
    with pytest.raises(ValueError, match="multiple of world_size = 4"):
        run_sync_bn_group(4, _task(n=6))


@pytest.mark.parametrize("key", ["weight", "bias"])
def test_mismatched_feature_count_in_task(key):
    task = _task(c=3)
    task[key] = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="feature count mismatch"):
        run_sync_bn_group(2, task)


def test_bad_task_and_timeout():
    with pytest.raises(TypeError, match="task must be a dict"):
        run_sync_bn_group(2, [1, 2])
    with pytest.raises(ValueError, match=r"task\['dy'\] must be a tensor"):
        run_sync_bn_group(2, {**_task(), "dy": None})
    with pytest.raises(ValueError, match=r"task\['dy'\] must have"):
        run_sync_bn_group(2, {**_task(), "dy": torch.zeros(6, 3)})
    with pytest.raises(ValueError, match="timeout must be"):
        run_sync_bn_group(2, _task(), timeout=0)


def test_sync_batch_norm_needs_a_group():
    with pytest.raises(RuntimeError, match=r"initialized torch\.distributed"):
        sync_batch_norm(torch.randn(4, 3))


def test_communicated_numbers():
    assert communicated_numbers(64) == {"forward": 129, "backward": 128}
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_features must be"):
            communicated_numbers(bad)


def test_free_port():
    assert 0 < free_port() < 65536


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.BatchNorm2d(4, momentum=None, eps=1e-3)),
    ).double()
    for bn in (model[1], model[3][0]):
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_()
            bn.bias.normal_()
        bn.num_batches_tracked.fill_(7)
    model[1].weight.requires_grad_(False)
    return model.eval()


def test_revert_sync_batchnorm_round_trip():
    model = _model()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    expected = model(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
    assert isinstance(synced[1], nn.SyncBatchNorm)
    back = revert_sync_batchnorm(synced)
    assert type(back[1]) is nn.BatchNorm2d and type(back[3][0]) is nn.BatchNorm2d
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in back.modules())
    assert torch.equal(back(x), expected)
    assert back.state_dict().keys() == model.state_dict().keys()
    assert back[3][0].momentum is None and back[3][0].eps == 1e-3
    assert not back[1].weight.requires_grad and not back.training
    assert int(back[1].num_batches_tracked) == 7
    back.train()
    back(x)  # training on CPU works again
    assert int(back[1].num_batches_tracked) == 8


@pytest.mark.parametrize(
    ("dims", "cls", "shape"), [(1, nn.BatchNorm1d, (4, 3)), (3, nn.BatchNorm3d, (2, 3, 2, 2, 2))]
)
def test_revert_other_dims_and_top_level(dims, cls, shape):
    out = revert_sync_batchnorm(nn.SyncBatchNorm(3, affine=False), spatial_dims=dims)
    assert type(out) is cls and out.weight is None
    assert out(torch.randn(shape)).shape == shape


def test_revert_bad_input():
    with pytest.raises(TypeError, match=r"module must be an nn\.Module"):
        revert_sync_batchnorm("model")
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3, got 4"):
        revert_sync_batchnorm(nn.SyncBatchNorm(3), spatial_dims=4)
