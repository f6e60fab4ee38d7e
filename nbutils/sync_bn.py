"""Synchronized BatchNorm on a real ``torch.distributed`` process group, on CPUs.

``nn.SyncBatchNorm`` refuses CPU tensors in training mode, so this module implements the
synchronization itself, as a ``torch.autograd.Function``:

* forward: every process computes, per channel, its local ``Σx``, ``Σx²`` and count ``n``;
  **one** ``all_reduce`` of these ``2C + 1`` numbers gives the global mean and (biased)
  variance, with which every process normalizes its own samples;
* backward: every process computes its local ``Σ dy`` and ``Σ dy·x̂`` per channel; **one**
  ``all_reduce`` of these ``2C`` numbers gives the global sums that the input gradient of BN
  needs. The gradients of ``γ`` and ``β`` stay local (data parallelism all-reduces parameter
  gradients anyway).

The worker :func:`sync_bn_worker` runs in processes started by :func:`run_sync_bn_group`
(``torch.multiprocessing`` spawn, gloo backend, a free port on 127.0.0.1, a timeout, results
returned through files). Worker functions live here because spawned processes cannot import
functions defined in a notebook.

:func:`revert_sync_batchnorm` converts ``nn.SyncBatchNorm`` layers back to ``nn.BatchNorm1d``,
``2d`` or ``3d`` (parameters, buffers and flags copied), e.g. for CPU inference of a model
trained with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SyncBNFunction",
    "communicated_numbers",
    "free_port",
    "revert_sync_batchnorm",
    "run_sync_bn_group",
    "sync_batch_norm",
    "sync_bn_worker",
]


def communicated_numbers(num_features: int) -> dict[str, int]:
    """Numbers all-reduced per Sync BN layer and step: ``2C + 1`` forward, ``2C`` backward."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be an int >= 1, got {num_features!r}")
    return {"forward": 2 * num_features + 1, "backward": 2 * num_features}


def _shape(x: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Channel count and the dimensions reduced over (all but dimension 1)."""
    return x.shape[1], (0, *range(2, x.dim()))


class SyncBNFunction(torch.autograd.Function):
    """Batch normalization with statistics over all processes of ``group`` (no affine map).

    ``x``: ``(N_local, C, *)``. Returns ``x̂ = (x - μ) / sqrt(σ² + eps)`` with ``μ``, ``σ²``
    (biased) over the samples of all processes. Also returns the global mean, biased variance
    and count as non-differentiable outputs, for the running averages.
    """

    @staticmethod
    def forward(ctx, x, eps, group):
        c, dims = _shape(x)
        n_local = x.numel() // c
        packed = torch.cat([x.sum(dim=dims), (x * x).sum(dim=dims), x.new_tensor([float(n_local)])])
        dist.all_reduce(packed, group=group)  # 2C + 1 numbers
        n = packed[-1]
        mean = packed[:c] / n
        var = packed[c : 2 * c] / n - mean * mean
        view = (1, c) + (1,) * (x.dim() - 2)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean.view(view)) * inv_std.view(view)
        ctx.save_for_backward(x_hat, inv_std, n)
        ctx.group = group
        ctx.mark_non_differentiable(mean, var, n)
        return x_hat, mean, var, n

    @staticmethod
    def backward(ctx, grad_x_hat, _m, _v, _n):
        x_hat, inv_std, n = ctx.saved_tensors
        c, dims = _shape(x_hat)
        packed = torch.cat([grad_x_hat.sum(dim=dims), (grad_x_hat * x_hat).sum(dim=dims)])
        dist.all_reduce(packed, group=ctx.group)  # 2C numbers
        view = (1, c) + (1,) * (x_hat.dim() - 2)
        mean_dy = (packed[:c] / n).view(view)
        mean_dy_xhat = (packed[c:] / n).view(view)
        grad_x = inv_std.view(view) * (grad_x_hat - mean_dy - x_hat * mean_dy_xhat)
        return grad_x, None, None


def sync_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    group: object = None,
) -> torch.Tensor:
    """Training-mode BN of ``x`` (``(N_local, C, *)``) with statistics over all processes.

    ``weight`` and ``bias`` (``(C,)`` or None) give the affine map. If given, ``running_mean``
    and ``running_var`` are updated in place as ``nn.BatchNorm`` does, with the **global**
    statistics (the variance made unbiased with the global count). ``group`` is a process group
    (None: the default group, which must be initialized).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sync_batch_norm needs an initialized torch.distributed process group")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (N, C, *), got {getattr(x, 'shape', x)!r}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},) for C = {c}, got {tuple(t.shape)}")
    x_hat, mean, var, n = SyncBNFunction.apply(x, eps, group)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            unbiased = var * n / (n - 1)
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    view = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        x_hat = x_hat * weight.view(view)
    if bias is not None:
        x_hat = x_hat + bias.view(view)
    return x_hat


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_features(x: torch.Tensor, group: object = None) -> None:
    """Raise a clear ValueError on every process if the processes disagree on C."""
    c = torch.tensor([x.shape[1], -x.shape[1]], dtype=torch.int64)
    dist.all_reduce(c, op=dist.ReduceOp.MAX, group=group)
    if c[0] != -c[1]:
        raise ValueError(
            f"feature count differs between processes: this process has C = {x.shape[1]}, "
            f"others range from {-int(c[1])} to {int(c[0])}; all must have the same C"
        )


class _Counter:
    """Counts the numbers passed to dist.all_reduce while active."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._orig = None

    def __enter__(self) -> _Counter:
        self._orig = dist.all_reduce

        def counted(tensor, *args, **kwargs):
            self.calls.append(tensor.numel())
            return self._orig(tensor, *args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc: object) -> None:
        dist.all_reduce = self._orig


def sync_bn_worker(rank: int, world_size: int, port: int, out_dir: str, task: dict) -> None:
    """One process of the Sync BN check (started by :func:`run_sync_bn_group`).

    ``task`` holds float64 tensors ``x`` (``(N, C, *)``, the whole batch), ``dy`` (same shape,
    the upstream gradient), ``weight`` and ``bias`` (``(C,)``), and optionally ``fail_rank``
    (that rank raises, for tests) and ``features`` (a per-rank list of channel counts to cut
    the local batch to, for tests). Rank ``r`` takes the ``r``-th of ``world_size`` equal
    chunks of the batch and writes to ``out_dir/rank{r}.pt``: Sync BN output, input gradient
    and parameter gradients, per-process BN output and input gradient, the numbers
    all-reduced per call, the running averages after one step, and the message of the error
    that ``nn.SyncBatchNorm`` raises on CPU tensors in training mode.
    """
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _run_worker(rank, world_size, out_dir, task)
    except Exception as err:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(f"rank {rank}: {type(err).__name__}: {err}")
        raise
    finally:
        dist.destroy_process_group()


def _run_worker(rank: int, world_size: int, out_dir: str, task: dict) -> None:
    if task.get("fail_rank") == rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    x = task["x"].chunk(world_size)[rank].clone()
    dy = task["dy"].chunk(world_size)[rank]
    if "features" in task:
        x = x[:, : task["features"][rank]]
    _check_features(x)
    x.requires_grad_()
    weight = task["weight"].clone().requires_grad_()
    bias = task["bias"].clone().requires_grad_()
    c = x.shape[1]
    running = (torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype))
    with _Counter() as counter:
        y = sync_batch_norm(x, weight, bias, running_mean=running[0], running_var=running[1])
        forward_calls = list(counter.calls)
        (y * dy).sum().backward()
    result = {
        "y": y.detach(),
        "dx": x.grad,
        "dweight": weight.grad,
        "dbias": bias.grad,
        "forward_numbers": forward_calls,
        "backward_numbers": counter.calls[len(forward_calls) :],
        "running_mean": running[0],
        "running_var": running[1],
    }
    x_local = x.detach().clone().requires_grad_()
    y_local = F.batch_norm(x_local, None, None, task["weight"], task["bias"], training=True)
    (y_local * dy).sum().backward()
    result["y_local"], result["dx_local"] = y_local.detach(), x_local.grad
    try:
        nn.SyncBatchNorm(c).double()(x.detach())
        result["syncbn_error"] = None
    except ValueError as err:
        result["syncbn_error"] = f"{type(err).__name__}: {err}"
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def _check_task(task: object, world_size: int) -> None:
    if not isinstance(task, dict):
        raise TypeError(f"task must be a dict, got {type(task).__name__}")
    for key in ("x", "dy", "weight", "bias"):
        if not isinstance(task.get(key), torch.Tensor):
            raise ValueError(f"task[{key!r}] must be a tensor, got {task.get(key)!r}")
    x = task["x"]
    if x.dim() < 2 or x.shape[0] % world_size != 0:
        raise ValueError(
            f"task['x'] must have shape (N, C, *) with N a multiple of world_size = "
            f"{world_size}, got shape {tuple(x.shape)}"
        )
    if task["dy"].shape != x.shape:
        raise ValueError(
            f"task['dy'] must have x's shape {tuple(x.shape)}, got {tuple(task['dy'].shape)}"
        )
    for key in ("weight", "bias"):
        if tuple(task[key].shape) != (x.shape[1],):
            raise ValueError(
                f"feature count mismatch: task[{key!r}] has shape {tuple(task[key].shape)}, "
                f"x has C = {x.shape[1]} channels"
            )


def run_sync_bn_group(
    world_size: int,
    task: dict,
    *,
    timeout: float = 120.0,
    worker: Callable = sync_bn_worker,
) -> list[dict]:
    """Start ``world_size`` CPU processes (gloo), run ``worker`` in each, return their results.

    Each process calls ``worker(rank, world_size, port, out_dir, task)`` and writes
    ``out_dir/rank{rank}.pt``; the list of the loaded dicts is returned, ordered by rank.
    If a worker raises, a ``RuntimeError`` carrying its message is raised; if the group does
    not finish within ``timeout`` seconds, a ``TimeoutError``. In every case all processes
    are terminated and joined before this function returns or raises.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size must be an int >= 2, got {world_size!r}")
    if world_size > 16:
        raise ValueError(f"world_size must be at most 16 CPU processes, got {world_size}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    _check_task(task, world_size)
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            worker,
            args=(world_size, free_port(), out_dir, task),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=0.1):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the process group did not finish within timeout = {timeout} s"
                    )
        except ProcessException:
            time.sleep(0.2)  # let the other ranks write their messages
            messages = [
                open(os.path.join(out_dir, name)).read()
                for name in sorted(os.listdir(out_dir))
                if name.endswith(".err")
            ]
            raise RuntimeError(
                "a Sync BN worker failed; " + "; ".join(messages or ["no message"])
            ) from None
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in ctx.processes:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]


_BN_CLASSES = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def revert_sync_batchnorm(module: nn.Module, spatial_dims: int = 2) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` in ``module`` by an equivalent ``BatchNorm{d}d``.

    ``spatial_dims`` picks the class: 1 for ``BatchNorm1d`` (inputs ``(N, C)`` or
    ``(N, C, L)``), 2 for ``BatchNorm2d``, 3 for ``BatchNorm3d`` (SyncBatchNorm does not record
    which one it replaced). Parameters (with their ``requires_grad``), running statistics,
    ``num_batches_tracked``, ``eps``, ``momentum``, ``affine``, ``track_running_stats``, the
    train/eval flag, dtype and device are kept. Works in place on children and returns the
    (possibly new) module, like ``convert_sync_batchnorm``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if spatial_dims not in _BN_CLASSES:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = _BN_CLASSES[spatial_dims](
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child, spatial_dims))
    return out
