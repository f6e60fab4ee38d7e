"""nbutils.bn_kernels: byte and flop counts, the problem's statistics and the kernel against
autograd, the checks (a wrong formula is caught), compilation failures (skipped, not fatal), the
ratios of the table, reading functions from a notebook, and every error message."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbutils import bn_kernels as bk

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "part2-batchnorm" / "05-backprop.ipynb"


def autograd_backward(dy: torch.Tensor, cache: dict) -> tuple:
    """An independent backward: autograd through F.batch_norm on the cached rows."""
    x, gamma, beta = (t.detach().clone().requires_grad_() for t in cache["inputs"])
    y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=cache["eps"])
    return torch.autograd.grad(y, (x, gamma, beta), dy)


def forward(x, gamma, beta, eps):
    return None, {"inputs": (x, gamma, beta), "eps": eps}


def wrong_backward(dy: torch.Tensor, cache: dict) -> tuple:
    dx, dgamma, dbeta = autograd_backward(dy, cache)
    return dx + dy.mean(), dgamma, dbeta  # a gradient that is no longer orthogonal to 1


def test_byte_and_flop_counts():
    assert bk.bytes_moved((4096, 64), torch.float32) == (3 * 4096 * 64 + 5 * 64) * 4
    assert bk.bytes_moved((64, 32, 8, 8), torch.float64) == (3 * 64 * 32 * 64 + 5 * 32) * 8
    assert bk.copy_bytes((256, 512), torch.float32) == 2 * 256 * 512 * 4
    assert bk.flops((10, 3)) == 8 * 30


@pytest.mark.parametrize("shape", [(7, 3), (3, 2, 4, 5)])
def test_problem_statistics_and_rows(shape):
    p = bk.make_problem(shape, torch.float64, seed=3)
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    assert torch.allclose(p.mean, p.x.mean(dim=dims), atol=1e-12)
    var = p.x.var(dim=dims, correction=0)
    assert torch.allclose(p.invstd, 1 / torch.sqrt(var + p.eps), rtol=1e-12)
    rows = p.x_rows
    assert rows.shape == (p.x.numel() // shape[1], shape[1]) and rows.is_contiguous()
    assert rows.data_ptr() == p.x.data_ptr()  # a view: the same memory as the kernel's input
    assert torch.equal(bk.make_problem(shape, torch.float64, seed=3).x, p.x)
    assert (p.gamma > 0).any() and (p.gamma < 0).any()


@pytest.mark.parametrize("shape", [(9, 4), (2, 3, 3, 2)])
def test_native_backward_matches_autograd(shape):
    p = bk.make_problem(shape, torch.float64, seed=1)
    leaves = [t.clone().requires_grad_() for t in (p.x, p.gamma, p.beta)]
    y = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True, eps=p.eps)
    ref = torch.autograd.grad(y, leaves, p.dy)
    for mine, theirs in zip(bk.native_backward(p), ref, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_backward_passes_a_right_formula_and_catches_a_wrong_one(dtype):
    p = bk.make_problem((16, 5), dtype, seed=2)
    cache = forward(p.x_rows, p.gamma, p.beta, p.eps)[1]
    errors = bk.check_backward("autograd", autograd_backward, p, cache)
    assert set(errors) == {"dx", "dgamma", "dbeta"}
    assert max(errors.values()) <= bk.TOLERANCES[dtype]
    with pytest.raises(AssertionError, match=r"wrong disagrees .* max relative error of dx"):
        bk.check_backward("wrong", wrong_backward, p, cache)
    with pytest.raises(AssertionError, match="dgamma has shape"):
        bk.check_backward("short", lambda dy, c: (dy, dy[0, :2], dy[0]), p, cache)
    with pytest.raises(TypeError, match="must return"):
        bk.check_backward("one", lambda dy, c: dy, p, cache)


def test_the_chapters_formulas_pass_the_check():
    fns = bk.functions_from_notebook(
        CHAPTER, ["bn_forward", "bn_backward_steps", "bn_backward_compact"]
    )
    for shape in [(32, 6), (4, 3, 2, 5)]:
        for dtype in (torch.float64, torch.float32):
            p = bk.make_problem(shape, dtype)
            cache = fns["bn_forward"](p.x_rows, p.gamma, p.beta, p.eps)[1]
            for name in ("bn_backward_steps", "bn_backward_compact"):
                bk.check_backward(name, fns[name], p, cache)


def test_try_compile_reports_failures_instead_of_raising():
    def no_compiler(fn):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

    res = bk.try_compile(lambda a: a + 1, (torch.ones(2),), compiler=no_compiler)
    assert not res.ok and res.fn is None
    assert res.message == (
        "torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ compiler found)"
    )

    def fails_at_first_call(fn):  # torch.compile compiles lazily, at the first call
        def compiled(*args):
            raise OSError("g++: not found")

        return compiled

    res = bk.try_compile(lambda a: a + 1, (torch.ones(2),), compiler=fails_at_first_call)
    assert not res.ok and "OSError: g++: not found" in res.message

    res = bk.try_compile(lambda a: a + 1, (torch.ones(2),), compiler=lambda fn: fn)
    assert res.ok and torch.equal(res.fn(torch.ones(2)), torch.full((2,), 2.0))


def fake_medians(times):
    def medians(candidates, rounds, min_run_time, clock):
        assert set(candidates) == set(times), sorted(candidates)
        for fn in candidates.values():
            fn()
        return {name: np.asarray(times[name], dtype=float) for name in candidates}

    return medians


def test_benchmark_ratios_and_a_skipped_compilation(monkeypatch):
    shape = (8, 3)
    times = {
        "native kernel": [2.0, 2.2, 1.8],
        "autograd": [4.0, 4.4, 3.6],
        "copy": [0.5, 0.5, 0.5],
        "matmul": [1.0, 1.0, 1.0],
    }
    monkeypatch.setattr(bk, "interleaved_medians", fake_medians(times))

    def no_compiler(fn):
        raise RuntimeError("no compiler")

    threads = torch.get_num_threads()
    res = bk.benchmark_backward(
        shape,
        forward,
        {"autograd": autograd_backward},
        compile_variants=["autograd"],
        rounds=3,
        compiler=no_compiler,
    )
    assert torch.get_num_threads() == threads
    assert [r.name for r in res.rows] == ["native kernel", "autograd"]
    assert res.skipped == {
        "autograd (compiled)": "torch.compile failed (RuntimeError: no compiler)"
    }
    assert set(res.errors) == {"autograd", "autograd (float64)"}
    assert res.row("autograd").vs_native.ratio == pytest.approx(2.0)
    assert res.row("native kernel").vs_native is None
    # time / bound = time / (copy time * bytes_moved / copy_bytes)
    bound = 0.5 * bk.bytes_moved(shape, torch.float32) / bk.copy_bytes(shape, torch.float32)
    expected = math.exp(np.mean(np.log(np.asarray(times["native kernel"]) / bound)))
    assert res.row("native kernel").vs_bandwidth.ratio == pytest.approx(expected, rel=1e-12)
    flop_time = bk.flops(shape) / (2 * 256**3) * 1.0
    assert res.flop_over_bandwidth.ratio == pytest.approx(flop_time / bound, rel=1e-12)
    assert res.flop_over_bandwidth.lo == pytest.approx(flop_time / bound, rel=1e-12)
    table = bk.results_table([res])
    assert "| 8 × 3 | 1 | autograd | 2.00 (" in table
    assert "| autograd (compiled) | skipped: torch.compile failed" in table
    assert "| 8 × 3 | 1 | native kernel | 1 (reference) |" in table
    with pytest.raises(KeyError, match="no row named 'x'"):
        res.row("x")


def test_benchmark_compiles_and_times_the_compiled_variant(monkeypatch):
    names = ["native kernel", "native kernel via autograd", "autograd", "autograd (compiled)"]
    times = {name: [1.0, 1.0] for name in [*names, "copy", "matmul"]}
    monkeypatch.setattr(bk, "interleaved_medians", fake_medians(times))
    calls = []

    def fake_compiler(fn):
        calls.append(fn)
        return fn

    res = bk.benchmark_backward(
        (2, 3, 2, 2),
        forward,
        {"autograd": autograd_backward},
        compile_variants=["autograd"],
        rounds=2,
        include_autograd=True,
        check_float64=False,
        compiler=fake_compiler,
    )
    assert len(calls) == 1 and res.skipped == {}
    assert set(res.compile_seconds) == {"autograd (compiled)"}
    assert set(res.errors) == {"autograd", "autograd (compiled)"}
    assert [r.name for r in res.rows][-1] == "autograd (compiled)"


def test_a_compiled_variant_that_fails_the_check_is_skipped_not_timed(monkeypatch):
    times = {name: [1.0, 1.0] for name in ["native kernel", "autograd", "copy", "matmul"]}
    monkeypatch.setattr(bk, "interleaved_medians", fake_medians(times))
    res = bk.benchmark_backward(
        (8, 3),
        forward,
        {"autograd": autograd_backward},
        compile_variants=["autograd"],
        rounds=2,
        compiler=lambda fn: wrong_backward,  # a miscompilation
    )
    message = res.skipped["autograd (compiled)"]
    assert message.startswith("its output failed the check: autograd (compiled) disagrees")
    assert "float64" in message and "autograd (compiled)" not in [r.name for r in res.rows]


def test_benchmark_checks_before_it_times(monkeypatch):
    def must_not_time(*args, **kwargs):
        raise AssertionError("timed a wrong formula")

    monkeypatch.setattr(bk, "interleaved_medians", must_not_time)
    with pytest.raises(AssertionError, match="wrong disagrees"):
        bk.benchmark_backward((8, 3), forward, {"wrong": wrong_backward}, rounds=2)


def test_a_real_timing_run_is_positive_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    res = bk.benchmark_backward(
        (16, 4), forward, {"autograd": autograd_backward}, rounds=2, min_run_time=0.001
    )
    assert res.clock == "cpu" and res.rounds == 2
    assert torch.equal(torch.rand(3), expected)
    assert all(r.vs_bandwidth.ratio > 0 for r in res.rows)


def test_functions_from_notebook_runs_only_the_definitions(tmp_path):
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": ["def not_code(): pass"]},
            {
                "cell_type": "code",
                "source": [
                    "%matplotlib inline\n",
                    "def f(a):\n",
                    "    return g(a) + 1\n",
                    "raise RuntimeError('cell body ran')\n",
                ],
            },
            {"cell_type": "code", "source": ["def g(a):\n", "    return torch.as_tensor(a) * 2\n"]},
            {"cell_type": "code", "source": ["def twice(): pass\n"]},
            {"cell_type": "code", "source": ["def twice(): pass\n"]},
        ]
    }  # fmt: skip
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    fns = bk.functions_from_notebook(path, ["f", "g"])
    assert fns["f"](3).item() == 7
    with pytest.raises(ValueError, match=r"not defined in a code cell: \['not_code'\]"):
        bk.functions_from_notebook(path, ["not_code"])
    with pytest.raises(ValueError, match=r"defined more than once: \['twice'\]"):
        bk.functions_from_notebook(path, ["twice"])
    with pytest.raises(TypeError, match="names must be a non-empty sequence"):
        bk.functions_from_notebook(path, "f")


CORES = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: bk.bytes_moved((4, 3, 2), torch.float32), ValueError, r"shape must be a tuple"),
        (lambda: bk.bytes_moved((4, 0), torch.float32), ValueError, "shape must be"),
        (lambda: bk.bytes_moved((4.0, 3), torch.float32), TypeError, "shape must be"),
        (lambda: bk.bytes_moved("43", torch.float32), ValueError, "shape must be"),
        (lambda: bk.copy_bytes((1, 3), torch.float32), ValueError, "training-mode BN"),
        (lambda: bk.flops((1, 3, 1, 1)), ValueError, "at least 2 values per channel"),
        (lambda: bk.bytes_moved((4, 3), torch.float16), ValueError, "dtype must be torch.float32"),
        (lambda: bk.bytes_moved((4, 3), "float32"), TypeError, "dtype must be torch.float32"),
        (lambda: bk.make_problem((4, 3), seed=-1), ValueError, "seed must be an int >= 0"),
        (lambda: bk.make_problem((4, 3), eps=0.0), ValueError, "eps must be a number > 0"),
        (lambda: bk.try_compile(3, ()), TypeError, "fn must be callable"),
        (lambda: bk.try_compile(abs, "ab"), TypeError, "example_args must be a sequence"),
        (lambda: bk.results_table([]), TypeError, "results must be a non-empty sequence"),
        (lambda: bk.results_table([3]), TypeError, "results must be a non-empty sequence"),
    ],
)
def test_helpers_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"shape": (8,)}, ValueError, r"shape must be a tuple \(m, C\) or \(N, C, H, W\)"),
        ({"threads": 0}, ValueError, rf"threads must be an int from 1 to {CORES} .*, got 0"),
        ({"threads": CORES + 1}, ValueError, f"threads must be an int from 1 to {CORES}"),
        ({"threads": 1.5}, TypeError, "threads must be an int"),
        ({"threads": True}, TypeError, "threads must be an int"),
        ({"dtype": torch.int64}, ValueError, "dtype must be torch.float32 or torch.float64"),
        ({"forward": None}, TypeError, "forward must be callable"),
        ({"variants": {}}, TypeError, "variants must be a non-empty mapping"),
        ({"variants": {"a": 3}}, TypeError, r"variants\['a'\] must be callable"),
        ({"compile_variants": "a"}, TypeError, "compile_variants must be a sequence of names"),
        ({"compile_variants": ["b"]}, ValueError, r"names 'b', which is not in variants \['a'\]"),
        ({"clock": "gpu"}, ValueError, "clock must be 'cpu' or 'wall'"),
    ],
)
def test_benchmark_rejects_bad_input(kwargs, error, message):
    args = {"shape": (8, 3), "forward": forward, "variants": {"a": autograd_backward}} | kwargs
    with pytest.raises(error, match=message):
        bk.benchmark_backward(**args)
