"""Batch Normalization's backward against PyTorch's kernel and the memory-bandwidth bound.

    python benchmarks/bn_kernels.py            # the full table (a few minutes on 2 idle cores)
    python benchmarks/bn_kernels.py --quick    # one shape, 1 thread, few rounds (a smoke test)
    python benchmarks/bn_kernels.py --shapes 4096x64 64x32x8x8 --threads 1 --out /tmp/t.md

Chapter "Backpropagation through Batch Normalization" (chapters/part2-batchnorm/05-backprop.ipynb)
writes BN's backward out twice, as the paper's six steps (``bn_backward_steps``) and as a compact
three-term formula (``bn_backward_compact``). This script takes both functions, and the forward
pass ``bn_forward`` that builds their cache, from the chapter's code cells (only those ``def``
statements are executed, see ``nbutils.bn_kernels.functions_from_notebook``), so it times exactly
the code the chapter teaches. The shapes are (256, 512) and (4096, 64) (dense layers) and
(64, 32, 8, 8) (a convolution's feature maps), with arrays of 0.5 to 1 MiB that fit in the
last-level cache of most processors, and (262144, 64), with 64 MiB per array, which does not.
For each shape and thread count it

1. checks every variant against PyTorch's kernel ``aten.native_batch_norm_backward`` in float64
   (relative tolerance 1e-10) and in float32 (1e-3), ``nbutils.bn_kernels.TOLERANCES``;
2. times, in one process and in interleaved rounds (``nbutils.timing.interleaved_medians``:
   warm-up, then per round one ``torch.utils.benchmark.Timer.blocked_autorange`` median per
   candidate, order alternating by round), in float32: the kernel called directly (no autograd),
   the kernel through autograd, the compact formula in eager mode, the compact formula under
   ``torch.compile`` (inductor, C++ on a CPU), the step-by-step formula, a copy of a tensor of the
   same size and a 256 x 256 matrix product;
3. reports every figure as a ratio of run times from that one run, with a 95% t-interval over the
   rounds (``nbutils.timing.time_ratio``): each candidate's time over the kernel's, and over the
   *bandwidth bound*, the bytes the backward must move (read dy and x, write dx, five
   per-channel vectors: ``nbutils.bn_kernels.bytes_moved``) at the copy's bandwidth. The line
   "flop bound" is the backward's 8 flops per element at the matrix product's flop rate, over
   the bandwidth bound: below 1, the bytes set the limit.

A convolutional input (N, C, H, W) is stored channels-last, so that the formulas, which work on
(N*H*W, C) rows, read the same memory as the kernel. With one thread the clock is the CPU time of
the process (it leaves out waiting for a core on a shared machine), with two the wall clock.
The process runs with the allocator settings ``nbutils.timing.ALLOCATOR_ENV`` (it restarts
itself with them if they are missing). At (262144, 64) the output dx (64 MiB) is larger than
MALLOC_MMAP_THRESHOLD_ (32 MiB), so every call of a candidate maps fresh pages for it, while the
copy writes into a destination allocated once: the table includes that cost of a new output.
``torch.compile`` runs under ``torch._dynamo.reset()`` for every shape and thread count, so each
case is compiled for its own shape and thread count; if it fails (no C++ compiler), or if the
compiled code's output fails the check, the compiled row says "skipped" and why, and the rest is
measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nbutils.timing import ALLOCATOR_ENV  # noqa: E402  (imported before torch on purpose)

CHAPTER = ROOT / "chapters" / "part2-batchnorm" / "05-backprop.ipynb"
SHAPES = [(256, 512), (4096, 64), (64, 32, 8, 8), (262144, 64)]
THREADS = [1, 2]


def restart_with_allocator_env() -> None:
    """Re-execute this script with the allocator settings if the process lacks them."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        env = {**os.environ, **ALLOCATOR_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_shape(text: str) -> tuple[int, ...]:
    """'4096x64' -> (4096, 64); two or four positive ints."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is MxC or NxCxHxW of ints >= 1, got {text!r}")
    return shape


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (default 10)")
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=0.05,
        help="seconds per candidate and round in blocked_autorange (default 0.05)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help=f"thread counts (default {' '.join(map(str, THREADS))}, those the machine has)",
    )
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=None,
        help="shapes as MxC or NxCxHxW (default "
        + " ".join("x".join(map(str, s)) for s in SHAPES)
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: shape 4096 x 64, 1 thread, 3 rounds of 0.02 s (about 15 s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "bn_kernels.md",
        help="Markdown file for the table (default benchmarks/results/bn_kernels.md; "
        "--quick writes nothing unless --out is given)",
    )
    args = parser.parse_args()
    out_given = any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:])
    if args.quick:
        args.rounds, args.min_run_time, args.threads = 3, 0.02, [1]
        args.shapes = [(4096, 64)]
        if not out_given:
            args.out = None
    elif args.shapes is None:
        args.shapes = SHAPES
    if args.threads is None:
        args.threads = [t for t in THREADS if t <= (os.cpu_count() or 1)]
    if args.rounds < 2:
        parser.error(f"--rounds must be an int >= 2, got {args.rounds}")
    if not args.min_run_time > 0:
        parser.error(f"--min-run-time must be > 0, got {args.min_run_time}")
    cores = os.cpu_count() or 1
    for t in args.threads:
        if not 1 <= t <= cores:
            parser.error(f"--threads must be ints from 1 to {cores} (the CPU cores), got {t}")
    if args.seed < 0:
        parser.error(f"--seed must be an int >= 0, got {args.seed}")
    return args


def main() -> int:
    args = parse_args()
    restart_with_allocator_env()

    import torch

    from nbutils.bn_kernels import benchmark_backward, functions_from_notebook, results_table

    fns = functions_from_notebook(
        CHAPTER, ["bn_forward", "bn_backward_steps", "bn_backward_compact"]
    )
    variants = {"compact": fns["bn_backward_compact"], "step-by-step": fns["bn_backward_steps"]}

    start = time.perf_counter()
    results = []
    for shape in args.shapes:
        for threads in args.threads:
            res = benchmark_backward(
                shape,
                fns["bn_forward"],
                variants,
                compile_variants=["compact"],
                threads=threads,
                rounds=args.rounds,
                min_run_time=args.min_run_time,
                seed=args.seed,
                include_autograd=True,
                check_float64=threads == args.threads[0],
            )
            results.append(res)
            worst = {
                d: max(
                    (
                        max(e.values())
                        for k, e in res.errors.items()
                        if (d in k) == (d == "float64")
                    ),
                    default=None,
                )
                for d in ("float64", "float32")
            }
            checked = ", ".join(f"{v:.1e} in {d}" for d, v in worst.items() if v is not None)
            print(
                f"{' x '.join(map(str, shape))}, {threads} thread(s): checked "
                f"{len(res.errors)} variant outputs against the kernel (max relative error "
                f"{checked}); {time.perf_counter() - start:.0f} s so far",
                file=sys.stderr,
                flush=True,
            )
            for name, message in res.skipped.items():
                print(f"  {name}: {message}", file=sys.stderr, flush=True)

    clocks = sorted({f"{r.threads} thread(s): {r.clock} time" for r in results})
    header = (
        f"# BN backward: kernel, formulas, torch.compile and the bandwidth bound\n\n"
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; float32 inputs, channels-last for 4-D shapes; clock: "
        + "; ".join(clocks)
        + "; allocator: "
        + ", ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
        + f"; {args.rounds} interleaved rounds of blocked_autorange(min_run_time="
        f"{args.min_run_time:g}) per candidate; geometric mean of the per-round ratios with "
        f"its 95% t-interval. Bandwidth bound: (3 arrays + 5 per-channel vectors) at the "
        f"bandwidth of a copy of the same size, measured in the same run. Flop bound: 8 flops "
        f"per element at the rate of a 256 x 256 matrix product. Every variant was checked "
        f"against aten.native_batch_norm_backward first (relative tolerance 1e-10 in float64, "
        f"1e-3 in float32).\n\n"
        f"Command: `python benchmarks/bn_kernels.py"
        + (
            " --quick"
            if args.quick
            else f" --rounds {args.rounds} --min-run-time {args.min_run_time:g} --threads "
            + " ".join(map(str, args.threads))
            + " --shapes "
            + " ".join("x".join(map(str, s)) for s in args.shapes)
        )
        + f" --seed {args.seed}`\n\n"
    )
    text = header + results_table(results) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}", file=sys.stderr)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
