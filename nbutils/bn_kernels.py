"""Batch Normalization's backward pass against PyTorch's kernel and the memory-bandwidth bound.

Chapter "Backpropagation through Batch Normalization" writes the backward pass out twice (the
paper's six steps and a compact three-term formula). This module times such formulas, passed in
as callables, next to

* PyTorch's own backward kernel, called directly as the ATen operator
  ``torch.ops.aten.native_batch_norm_backward`` (no autograd bookkeeping is timed),
* the same formulas compiled with ``torch.compile`` (inductor generates C++ on a CPU), and
* a *bandwidth bound*: the bytes the backward must move (:func:`bytes_moved`) divided by the
  copy bandwidth measured in the same run on a tensor of the same size (:func:`copy_bytes`),
* and a *flop bound*: the backward's floating-point operations (:func:`flops`) at the rate of a
  matrix product measured in the same run.

Every figure is a ratio of two run times measured in one process, in interleaved rounds
(:func:`nbutils.timing.interleaved_medians`), with a 95% t-interval (:func:`nbutils.timing.
time_ratio`). Before anything is timed, every variant's output is checked against the native
kernel (:data:`TOLERANCES`). ``benchmarks/bn_kernels.py`` prints the table for several shapes and
thread counts; the chapter calls :func:`benchmark_backward` on one reduced shape.

A backward variant is a callable ``backward(dy, cache) -> (dx, dgamma, dbeta)`` on rows: ``dy``
and ``dx`` of shape ``(m, C)``, ``dgamma`` and ``dbeta`` of shape ``(C,)``, and ``cache`` the dict
that the chapter's ``bn_forward(x, gamma, beta, eps) -> (y, cache)`` returns for the rows ``x``.
A convolutional input ``(N, C, H, W)`` is stored channels-last, so that its rows
``x.permute(0, 2, 3, 1).reshape(-1, C)`` (``m = N H W``) are a view of the same memory: the
formulas and the kernel then read the same bytes in the same order.
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nbutils.display import markdown_table
from nbutils.timing import TimeRatio, interleaved_medians, time_ratio

__all__ = [
    "TOLERANCES",
    "BNProblem",
    "BackwardBenchmark",
    "CompileResult",
    "Row",
    "benchmark_backward",
    "bytes_moved",
    "check_backward",
    "copy_bytes",
    "flops",
    "functions_from_notebook",
    "make_problem",
    "native_backward",
    "results_table",
    "try_compile",
]

Backward = Callable[[torch.Tensor, dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]

#: Largest allowed ``max |variant - native| / max |native|`` per gradient, by dtype. The gradients
#: are sums over ``m`` terms whose round-off grows like ``sqrt(m)`` relative to the result (about
#: ``1e-4`` in float32 at ``m = 262144``, ``1e-13`` in float64); a wrong formula is off by errors
#: of order one.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-3}

#: Floating-point operations per element of the backward: ``dbeta`` (1 add), ``dgamma`` (1 mul,
#: 1 add), then ``m dy - dbeta - x_hat dgamma`` (1 mul, 1 sub, 1 mul, 1 sub) and the scaling by
#: ``gamma / (m sigma)`` (1 mul).
FLOPS_PER_ELEMENT = 8


def _check_shape(shape: object) -> tuple[int, ...]:
    allowed = "a tuple (m, C) or (N, C, H, W) of positive ints with at least 2 values per channel"
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) not in (2, 4):
        raise ValueError(f"shape must be {allowed}, got {shape!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"shape must be {allowed}, got {shape!r}")
        if s < 1:
            raise ValueError(f"shape must be {allowed}, got {shape!r}")
    shape = tuple(shape)
    if int(np.prod(shape)) // shape[1] < 2:
        raise ValueError(f"shape must be {allowed} (training-mode BN), got {shape!r}")
    return shape


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _check_threads(threads: object) -> int:
    cores = os.cpu_count() or 1
    allowed = f"an int from 1 to {cores} (the number of CPU cores)"
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be {allowed}, got {threads!r}")
    if not 1 <= threads <= cores:
        raise ValueError(f"threads must be {allowed}, got {threads}")
    return threads


def bytes_moved(shape: Sequence[int], dtype: torch.dtype) -> int:
    """The bytes the backward of training-mode BN must move at least.

    Read the upstream gradient ``dy`` and the input ``x`` (or ``x_hat``), write ``dx``: three
    arrays of ``shape``; plus the per-channel vectors, read mean (or sigma), 1/sigma and gamma,
    write dgamma and dbeta: five vectors of ``C = shape[1]`` entries.
    """
    shape, dtype = _check_shape(shape), _check_dtype(dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (3 * int(np.prod(shape)) + 5 * shape[1]) * itemsize


def copy_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """The bytes ``dst.copy_(src)`` moves for tensors of ``shape``: one read, one write."""
    shape, dtype = _check_shape(shape), _check_dtype(dtype)
    return 2 * int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()


def flops(shape: Sequence[int]) -> int:
    """Floating-point operations of the compact backward, :data:`FLOPS_PER_ELEMENT` per element
    (the per-channel work, a few operations per channel, is left out)."""
    return FLOPS_PER_ELEMENT * int(np.prod(_check_shape(shape)))


@dataclass(frozen=True)
class BNProblem:
    """Inputs of one backward pass and what the kernel and the formulas need.

    ``x``, ``dy``: ``shape`` (channels-last when 4-D); ``gamma``, ``beta``, ``mean``, ``invstd``:
    ``(C,)``, with ``mean`` and ``invstd = 1 / sqrt(var + eps)`` from PyTorch's forward kernel
    ``torch.ops.aten.native_batch_norm``; ``x_rows``, ``dy_rows``: ``(m, C)`` views of ``x`` and
    ``dy``.
    """

    shape: tuple[int, ...]
    x: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    dy: torch.Tensor
    mean: torch.Tensor
    invstd: torch.Tensor
    eps: float

    @property
    def x_rows(self) -> torch.Tensor:
        return _rows(self.x)

    @property
    def dy_rows(self) -> torch.Tensor:
        return _rows(self.dy)


def _rows(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 2:
        return t
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # a view for channels-last storage


def make_problem(
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    eps: float = 1e-5,
) -> BNProblem:
    """Random inputs of ``shape`` in ``dtype`` (features with means from -3 to 3 and scales from
    0.1 to 10, gamma of both signs when ``C >= 2``), drawn from
    ``torch.Generator().manual_seed(seed)``."""
    shape, dtype = _check_shape(shape), _check_dtype(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    scale = torch.logspace(-1, 1, c, dtype=dtype).reshape(view)
    shift = torch.linspace(-3, 3, c, dtype=dtype).reshape(view)
    x = torch.randn(shape, generator=gen, dtype=dtype) * scale + shift
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    if len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    sign = 1 - 2 * (torch.arange(c) % 2).to(dtype)  # +1, -1, +1, ...: gamma of both signs
    gamma = (0.5 + torch.rand(c, generator=gen, dtype=dtype)) * sign
    beta = torch.randn(c, generator=gen, dtype=dtype)
    _, mean, invstd = torch.ops.aten.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
    return BNProblem(shape, x, gamma, beta, dy, mean, invstd, float(eps))


def native_backward(p: BNProblem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's backward kernel, ``aten.native_batch_norm_backward`` in training mode:
    ``(dx, dgamma, dbeta)`` with ``dx`` of ``p.shape``."""
    dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
        p.dy, p.x, p.gamma, None, None, p.mean, p.invstd, True, p.eps, [True, True, True]
    )
    return dx, dgamma, dbeta


def _autograd_native(p: BNProblem) -> Callable[[], tuple]:
    """The same kernel reached through autograd (``torch.autograd.grad`` on ``F.batch_norm``)."""
    leaves = [t.detach().clone().requires_grad_() for t in (p.x, p.gamma, p.beta)]
    y = torch.nn.functional.batch_norm(
        leaves[0], None, None, leaves[1], leaves[2], training=True, eps=p.eps
    )
    return lambda: torch.autograd.grad(y, leaves, p.dy, retain_graph=True)


def check_backward(name: str, backward: Backward, p: BNProblem, cache: dict) -> dict[str, float]:
    """Compare ``backward(p.dy_rows, cache)`` with :func:`native_backward` on ``p``.

    Returns ``{"dx": e, "dgamma": e, "dbeta": e}`` with ``e = max |variant - native| / max
    |native|``, and raises ``AssertionError`` naming the variant when one exceeds the tolerance
    of ``p``'s dtype (:data:`TOLERANCES`) or has the wrong shape.
    """
    out = backward(p.dy_rows, cache)
    if not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise TypeError(f"{name}: backward must return (dx, dgamma, dbeta), got {type(out)}")
    ref = native_backward(p)
    errors = {}
    for key, mine, theirs in zip(("dx", "dgamma", "dbeta"), out, ref, strict=True):
        theirs = _rows(theirs) if key == "dx" else theirs
        if tuple(mine.shape) != tuple(theirs.shape):
            raise AssertionError(
                f"{name}: {key} has shape {tuple(mine.shape)}, expected {tuple(theirs.shape)}"
            )
        diff = (mine.to(theirs.dtype) - theirs).abs().max().item()
        errors[key] = diff / max(theirs.abs().max().item(), 1e-30)
    tol = TOLERANCES[p.x.dtype]
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tol:  # also catches NaN
        raise AssertionError(
            f"{name} disagrees with aten.native_batch_norm_backward in {p.x.dtype} on shape "
            f"{p.shape}: max relative error of {worst} is {errors[worst]:.2e} > {tol:.0e}"
        )
    return errors


@dataclass(frozen=True)
class CompileResult:
    """What :func:`try_compile` got: ``fn`` (None when compilation failed), a ``message`` that
    says why, and the wall ``seconds`` the first call (tracing and compiling) took."""

    fn: Callable | None
    message: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.fn is not None


def try_compile(
    fn: Callable,
    example_args: Sequence[object],
    compiler: Callable[[Callable], Callable] | None = None,
    reset: bool = True,
) -> CompileResult:
    """Compile ``fn`` with ``torch.compile(fn, dynamic=False)`` and call it once on
    ``example_args`` (compilation happens at that first call).

    Any failure (no C++ compiler, a backend error, an unsupported construct) is caught and
    reported in ``message``, with ``fn=None``, so that a caller can skip the compiled variant.
    ``compiler`` replaces ``torch.compile`` (tests use it to simulate a failure). ``reset=True``
    calls ``torch._dynamo.reset()`` first, so the code is compiled for the current shapes and
    thread count rather than reused from an earlier call (this clears every compiled function
    of the process from dynamo's cache; the on-disk cache of inductor still saves the compiler
    runs). Inductor compiles in the calling process (``compile_threads=1``), which saves
    starting worker processes on a small machine, and without its FX graph cache
    (``fx_graph_cache=False``): in torch 2.13 that cache's key leaves out the environment variable
    ``ATEN_CPU_CAPABILITY``, and code cached under one setting gave wrong gradients when loaded
    under another (``avx2`` after the default AVX-512 run) on the same machine.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(example_args, (str, bytes)) or not isinstance(example_args, Sequence):
        raise TypeError(
            f"example_args must be a sequence of arguments, got {type(example_args).__name__}"
        )
    start = time.perf_counter()
    try:
        if compiler is None:
            import torch._dynamo
            import torch._inductor.config as inductor_config

            if reset:
                torch._dynamo.reset()
            compiled = torch.compile(fn, dynamic=False)
            with inductor_config.patch(compile_threads=1, fx_graph_cache=False):
                compiled(*example_args)
        else:
            compiled = compiler(fn)
            compiled(*example_args)
    except Exception as exc:  # any failure means: skip the compiled variant
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"torch.compile failed ({type(exc).__name__}: {first[:200]})"
        return CompileResult(None, message, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return CompileResult(compiled, f"compiled in {seconds:.1f} s", seconds)


@dataclass(frozen=True)
class Row:
    """One timed candidate: its time over the native kernel's (None for the kernel itself) and
    over the bandwidth bound, each a :class:`~nbutils.timing.TimeRatio`."""

    name: str
    vs_native: TimeRatio | None
    vs_bandwidth: TimeRatio


@dataclass(frozen=True)
class BackwardBenchmark:
    """The result of :func:`benchmark_backward` for one shape, dtype and thread count.

    ``rows``: one :class:`Row` per candidate (the native kernel first). ``flop_over_bandwidth``:
    the flop bound over the bandwidth bound (below 1: the bytes, not the flops, set the limit),
    a :class:`~nbutils.timing.TimeRatio`. ``skipped``: ``{name: message}`` for compiled variants
    that could not be built or whose output failed the check. ``errors``: ``{name: {gradient:
    relative error}}`` of the checks in ``dtype`` (float32) and, under ``name + " (float64)"``,
    in float64. ``compile_seconds``:
    ``{name: wall seconds}`` of the first call of each compiled variant (tracing and compiling,
    the first build of the process included) in ``dtype`` and, under ``name + " (float64)"``, in
    float64.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    threads: int
    clock: str
    rounds: int
    rows: list[Row]
    flop_over_bandwidth: TimeRatio
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    compile_seconds: dict[str, float] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")


def _scaled(r: TimeRatio, factor: float) -> TimeRatio:
    return TimeRatio(r.ratio * factor, r.lo * factor, r.hi * factor, r.level, r.n)


def benchmark_backward(
    shape: Sequence[int],
    forward: Forward,
    variants: Mapping[str, Backward],
    compile_variants: Sequence[str] = (),
    threads: int = 1,
    dtype: torch.dtype = torch.float32,
    rounds: int = 10,
    min_run_time: float = 0.05,
    clock: str | None = None,
    seed: int = 0,
    include_autograd: bool = False,
    check_float64: bool = True,
    compiler: Callable[[Callable], Callable] | None = None,
) -> BackwardBenchmark:
    """Check, then time BN's backward on ``shape`` with ``threads`` threads.

    ``forward(x, gamma, beta, eps) -> (y, cache)`` builds the cache of the ``(m, C)`` rows;
    ``variants`` maps a name to a backward formula ``backward(dy, cache)``; each name in
    ``compile_variants`` is also compiled (:func:`try_compile`) and timed as
    ``name + " (compiled)"``, or listed in ``skipped`` when compilation fails or the compiled
    code's output fails the check (a fault of the compiler, since the variant itself passed).
    Every variant is checked against :func:`native_backward` in ``dtype`` first, and in float64
    too unless ``check_float64=False`` (``AssertionError`` beyond :data:`TOLERANCES`). Then the
    native kernel, the variants, a copy of a tensor of the same size, a square matrix product
    (for the flop rate) and, with ``include_autograd``, the native kernel through autograd are
    timed with :func:`~nbutils.timing.interleaved_medians` (``rounds``, ``min_run_time``;
    ``clock`` defaults to ``"cpu"`` with one thread and ``"wall"`` with more). The thread count
    is restored afterwards.
    """
    shape, dtype, threads = _check_shape(shape), _check_dtype(dtype), _check_threads(threads)
    if not callable(forward):
        raise TypeError(f"forward must be callable, got {type(forward).__name__}")
    if not isinstance(variants, Mapping) or not variants:
        raise TypeError(
            f"variants must be a non-empty mapping of names to callables, got {variants!r}"
        )
    for name, fn in variants.items():
        if not callable(fn):
            raise TypeError(f"variants[{name!r}] must be callable, got {type(fn).__name__}")
    if isinstance(compile_variants, str):
        raise TypeError(f"compile_variants must be a sequence of names, got {compile_variants!r}")
    for name in compile_variants:
        if name not in variants:
            raise ValueError(
                f"compile_variants names {name!r}, which is not in variants {sorted(variants)}"
            )
    clock = clock if clock is not None else ("cpu" if threads == 1 else "wall")
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _benchmark(
            shape, forward, variants, compile_variants, threads, dtype, rounds,
            min_run_time, clock, seed, include_autograd, check_float64, compiler,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def _benchmark(
    shape, forward, variants, compile_variants, threads, dtype, rounds, min_run_time, clock,
    seed, include_autograd, check_float64, compiler,
) -> BackwardBenchmark:  # fmt: skip
    errors: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    compile_seconds: dict[str, float] = {}
    dtypes = list(dict.fromkeys((torch.float64, dtype) if check_float64 else (dtype,)))
    problems = {d: make_problem(shape, d, seed) for d in dtypes}
    caches = {d: forward(p.x_rows, p.gamma, p.beta, p.eps)[1] for d, p in problems.items()}
    timed: dict[str, Callable] = {}
    for d in dtypes:  # float64 first, then the timed dtype
        p, cache = problems[d], caches[d]
        suffix = " (float64)" if d != dtype else ""
        for name, fn in variants.items():
            errors[name + suffix] = check_backward(name, fn, p, cache)
            if d == dtype:
                timed[name] = fn
        for name in compile_variants:
            if name + " (compiled)" in skipped:
                continue
            res = try_compile(variants[name], (p.dy_rows, cache), compiler=compiler)
            compile_seconds[name + " (compiled)" + suffix] = res.seconds
            if not res.ok:
                skipped[name + " (compiled)"] = res.message
                continue
            try:
                errors[name + " (compiled)" + suffix] = check_backward(
                    name + " (compiled)", res.fn, p, cache
                )
            except AssertionError as exc:  # a compiler fault: reported, never timed
                skipped[name + " (compiled)"] = f"its output failed the check: {exc}"
                timed.pop(name + " (compiled)", None)
                continue
            if d == dtype:
                timed[name + " (compiled)"] = res.fn

    p, cache = problems[dtype], caches[dtype]
    gen = torch.Generator().manual_seed(seed)  # not the global generator: no side effects
    src = torch.randn(p.x.numel(), generator=gen, dtype=dtype)
    dst = torch.empty_like(src)
    n_mm = 256
    a = torch.randn(n_mm, n_mm, generator=gen, dtype=dtype)
    b = torch.randn(n_mm, n_mm, generator=gen, dtype=dtype)
    candidates: dict[str, Callable] = {"native kernel": lambda: native_backward(p)}
    if include_autograd:
        candidates["native kernel via autograd"] = _autograd_native(p)
    dy_rows = p.dy_rows
    for name, fn in timed.items():
        candidates[name] = lambda fn=fn: fn(dy_rows, cache)
    candidates["copy"] = lambda: dst.copy_(src)
    candidates["matmul"] = lambda: torch.mm(a, b)
    times = interleaved_medians(candidates, rounds, min_run_time, clock=clock)

    to_bound = copy_bytes(shape, dtype) / bytes_moved(shape, dtype)
    rows = []
    for name in candidates:
        if name in ("copy", "matmul"):
            continue
        vs_native = None if name == "native kernel" else time_ratio(
            times[name], times["native kernel"]
        )  # fmt: skip
        rows.append(Row(name, vs_native, _scaled(time_ratio(times[name], times["copy"]), to_bound)))
    # flop bound / bandwidth bound = (flops / (2 n^3) * t_mm) / (t_copy / to_bound)
    flop_factor = flops(shape) / (2 * n_mm**3) * to_bound
    flop_over_bw = _scaled(time_ratio(times["matmul"], times["copy"]), flop_factor)
    return BackwardBenchmark(
        shape, dtype, threads, clock, rounds, rows, flop_over_bw, skipped, errors, compile_seconds
    )


def _fmt(r: TimeRatio | None) -> str:
    if r is None:
        return "1 (reference)"
    return f"{r.ratio:.2f} ({r.lo:.2f} to {r.hi:.2f})"


def results_table(results: Sequence[BackwardBenchmark]) -> str:
    """A Markdown table of one or more :func:`benchmark_backward` results: per candidate, its
    time over the native kernel's and over the bandwidth bound (geometric means with 95%
    intervals), and a line per result for the flop bound over the bandwidth bound."""
    if isinstance(results, BackwardBenchmark):
        results = [results]
    if not results or not all(isinstance(r, BackwardBenchmark) for r in results):
        raise TypeError("results must be a non-empty sequence of BackwardBenchmark")
    header = ["shape", "threads", "backward", "time / native kernel", "time / bandwidth bound"]
    body = []
    for res in results:
        shape = " × ".join(str(s) for s in res.shape)
        for row in res.rows:
            body.append([shape, res.threads, row.name, _fmt(row.vs_native), _fmt(row.vs_bandwidth)])
        body.append(
            [shape, res.threads, "flop bound (matmul rate)", "", _fmt(res.flop_over_bandwidth)]
        )
        for name, message in res.skipped.items():
            body.append([shape, res.threads, name, f"skipped: {message}", ""])
    return markdown_table(header, body)


def functions_from_notebook(
    path: str | os.PathLike, names: Sequence[str], namespace: dict | None = None
) -> dict[str, Callable]:
    """Define the functions ``names`` from the code cells of the notebook at ``path``.

    Only the ``def`` statements themselves are executed (found with :mod:`ast`), not the rest of
    their cells, in ``namespace`` (default: one holding ``torch``). So a script can time exactly
    the code a chapter teaches without keeping a second copy of it. Raises ``ValueError`` naming
    the functions that are missing or defined more than once.
    """
    if isinstance(names, str) or not names:
        raise TypeError(f"names must be a non-empty sequence of function names, got {names!r}")
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    found: dict[str, list[ast.FunctionDef]] = {name: [] for name in names}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in found:
                found[node.name].append(node)
    missing = [n for n, nodes in found.items() if not nodes]
    twice = [n for n, nodes in found.items() if len(nodes) > 1]
    if missing or twice:
        raise ValueError(
            f"{path}: functions not defined in a code cell: {missing}; defined more than once: "
            f"{twice}"
        )
    ns = {"torch": torch} if namespace is None else namespace
    module = ast.Module(body=[found[n][0] for n in names], type_ignores=[])
    exec(compile(module, str(path), "exec"), ns)  # the repository's own chapter
    return {name: ns[name] for name in names}
