"""Inference speed-up from folding BatchNorm into the preceding convolution, with an interval.

    python benchmarks/bn_fold.py                      # 20 rounds, 1 thread (about a minute)
    python benchmarks/bn_fold.py --rounds 40 --min-run-time 0.2
    python benchmarks/bn_fold.py --threads 2

Chapter "Batch Normalization in PyTorch" folds every Conv2d -> BatchNorm2d pair of a trained
network into one convolution (eq. eq-bnp-fold there). This script measures what that buys at
inference, in one process, on:

* the chapter's small digits CNN (``nbutils.make_cnn(1, (16, 32), 10, norm="bn")``) on a batch
  of 64 images of 8 x 8, and
* one ``Conv2d(32, 32, 3, padding=1) -> BatchNorm2d -> ReLU`` block on feature maps of 8 x 8,
  32 x 32 and 64 x 64 (batch 16), to see how the saving changes with the size of the maps.

The folded models come from ``torch.nn.utils.fusion.fuse_conv_bn_eval``; the fold written out by
hand (as in the chapter) is checked against ``fuse_conv_bn_weights`` and timed against the
library's as a control: the two are the same convolution, so their interval should cover 1.

Method: ``nbutils.timing.interleaved_medians`` warms every candidate up, then in each round
measures each once with ``torch.utils.benchmark.Timer.blocked_autorange`` (order alternating by
round) and keeps the median; ``nbutils.timing.time_ratio`` gives the geometric mean of the
per-round ratios with a 95% t-interval (paired by round). A speed-up is reported as resolved only
when the whole interval lies above 1, otherwise as "within noise". The process runs with the
allocator settings ``nbutils.timing.ALLOCATOR_ENV`` (MALLOC_MMAP_THRESHOLD_=33554432,
MALLOC_TRIM_THRESHOLD_=268435456; it restarts itself with them if they are missing), with the
stated number of threads, and by default with one thread measures CPU time (``--clock cpu``),
which leaves out the time the process waits for a core on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nbutils.timing import ALLOCATOR_ENV  # noqa: E402  (imported before torch on purpose)


def restart_with_allocator_env() -> None:
    """Re-execute this script with the allocator settings if the process lacks them."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        env = {**os.environ, **ALLOCATOR_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (default 20)")
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=0.1,
        help="seconds per candidate and round in blocked_autorange (default 0.1)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        help="cpu: CPU time of the process (default with 1 thread; leaves out waiting for a "
        "core on a shared machine); wall: elapsed time (default with more threads)",
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds must be an int >= 2, got {args.rounds}")
    if not args.min_run_time > 0:
        parser.error(f"--min-run-time must be > 0, got {args.min_run_time}")
    if args.threads < 1:
        parser.error(f"--threads must be an int >= 1, got {args.threads}")
    if args.seed < 0:
        parser.error(f"--seed must be an int >= 0, got {args.seed}")
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    return args


def main() -> int:
    args = parse_args()
    restart_with_allocator_env()

    import numpy as np
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

    import nbutils
    from nbutils.timing import interleaved_medians, time_ratio

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    def trained_like(model: nn.Module) -> nn.Module:
        # Running statistics, gamma and beta away from their initial values; eval mode.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    c = m.num_features
                    m.running_mean.copy_(torch.randn(c, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                    m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                    m.bias.copy_(0.3 * torch.randn(c, generator=gen))
        return model.eval()

    def fold_by_hand(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        # The chapter's eq. (eq-bnp-fold): W' = a W, c' = a (c - running_mean) + beta.
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded = copy.deepcopy(conv)
        with torch.no_grad():
            folded.weight.copy_(conv.weight * a.reshape(-1, 1, 1, 1))
            folded.bias = nn.Parameter(a * (bias - bn.running_mean) + bn.bias)
        return folded.eval()

    def fold_all(model: nn.Sequential, fold: Callable) -> nn.Sequential:
        layers, out, i = list(model), [], 0
        while i < len(layers):
            if (
                i + 1 < len(layers)
                and isinstance(layers[i], nn.Conv2d)
                and isinstance(layers[i + 1], nn.BatchNorm2d)
            ):
                out.append(fold(layers[i], layers[i + 1]))
                i += 2
            else:
                out.append(layers[i])
                i += 1
        return nn.Sequential(*out).eval()

    def block() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )

    torch.manual_seed(args.seed)  # the layers' own initialization
    cases = [
        ("digits CNN of the chapter", nbutils.make_cnn(1, (16, 32), 10, norm="bn"), (64, 1, 8, 8)),
        ("Conv-BN-ReLU block, 8 x 8 maps", block(), (16, 32, 8, 8)),
        ("Conv-BN-ReLU block, 32 x 32 maps", block(), (16, 32, 32, 32)),
        ("Conv-BN-ReLU block, 64 x 64 maps", block(), (16, 32, 64, 64)),
    ]

    # Correctness first: the hand fold equals the library's, and folding keeps the output.
    worst = 0.0
    for _, model, shape in cases:
        trained_like(model)
        for conv, bn in zip(model, list(model)[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                w_lib, b_lib = fuse_conv_bn_weights(
                    conv.weight,
                    conv.bias,
                    bn.running_mean,
                    bn.running_var,
                    bn.eps,
                    bn.weight,
                    bn.bias,
                )
                mine = fold_by_hand(conv, bn)
                scale = w_lib.abs().max().item()
                worst = max(
                    worst,
                    (mine.weight - w_lib).abs().max().item() / scale,
                    (mine.bias - b_lib).abs().max().item() / b_lib.abs().max().item(),
                )
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            ref = model(x)
            out = fold_all(model, fuse_conv_bn_eval)(x)
        worst = max(worst, (out - ref).abs().max().item() / ref.abs().max().item())
    if not worst < 1e-5:
        print(f"folding changed the result: max relative difference {worst:.2e}", file=sys.stderr)
        return 1

    def runner(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return run

    print(
        f"BN folding benchmark: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"threads: {torch.get_num_threads()}; clock: {args.clock} time; allocator: "
        + ", ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
        + f"; {args.rounds} interleaved rounds of blocked_autorange(min_run_time="
        f"{args.min_run_time:g}) per candidate; 95% t-intervals of the per-round ratios"
    )
    print(
        f"correctness: max relative difference, hand fold vs fuse_conv_bn_weights and folded vs "
        f"unfused output: {nbutils.fmt_err(worst, 1e-6)}"
    )
    print()
    print(
        "| model | input | unfused (ms, median) | folded (ms, median) "
        "| speed-up unfused / folded | 95% interval | verdict |"
    )
    print("|---|---|---:|---:|---:|---|---|")
    control = None
    for name, model, shape in cases:
        x = torch.randn(shape, generator=gen)
        candidates = {
            "unfused": runner(model, x),
            "folded": runner(fold_all(model, fuse_conv_bn_eval), x),
        }
        if "32 x 32" in name:
            candidates["by hand"] = runner(fold_all(model, fold_by_hand), x)
        med = interleaved_medians(
            candidates, rounds=args.rounds, min_run_time=args.min_run_time, clock=args.clock
        )
        r = time_ratio(med["unfused"], med["folded"])
        verdict = (
            "speed-up resolved"
            if r.above(1)
            else "slow-down resolved"
            if r.below(1)
            else ("within noise")
        )
        print(
            f"| {name} | {tuple(shape)} | {1e3 * float(np.median(med['unfused'])):.3f} "
            f"| {1e3 * float(np.median(med['folded'])):.3f} | {r.ratio:.3f} "
            f"| {r.lo:.3f} to {r.hi:.3f} | {verdict} |",
            flush=True,
        )
        if "by hand" in med:
            control = (name, time_ratio(med["by hand"], med["folded"]))
    if control is not None:
        name, r = control
        verdict = "within noise (as expected)" if r.covers(1) else "resolved (unexpected)"
        print()
        print(
            f"control, {name}: time of the fold by hand / fuse_conv_bn_eval = {r.ratio:.3f} "
            f"(95% interval {r.lo:.3f} to {r.hi:.3f}): {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
