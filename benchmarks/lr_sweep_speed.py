"""CPU time of a learning-rate sweep: a Python loop over small networks vs one stacked sweep.

    python benchmarks/lr_sweep_speed.py                  # 32 seeds, 12 epochs, one rate
    python benchmarks/lr_sweep_speed.py --seeds 64 --lrs 0.03 0.3 1 3

The workload is the digits experiment of chapter "Why normalize": the MLP
``make_mlp(64, [64, 64], 10, norm="bn")`` trained with plain SGD, batch size 64, one run per
(learning rate, seed), validation accuracy after every epoch. The loop trains the runs one after
the other with ``nbutils.train``; the stack trains all of them at once with
``nbutils.lr_sweep.sgd_sweep`` (which also records the drift of the last layer's input, work the
loop does not do). Both run on one thread; the script reports CPU seconds of this process, which
other work on the machine does not inflate, and their ratio. It re-executes itself with the
allocator settings of STYLE.md ("Timing") so that small-tensor timings do not flip between modes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

import nbutils
from nbutils.lr_sweep import sgd_sweep

ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def build(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return nbutils.make_mlp(64, [64, 64], 10, norm="bn")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=32, help="runs per learning rate")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.3], help="learning rates")
    args = parser.parse_args()
    if args.seeds < 2 or args.epochs < 1 or any(lr <= 0 for lr in args.lrs):
        parser.error("need --seeds >= 2, --epochs >= 1 and learning rates > 0")
    if any(os.environ.get(k) != v for k, v in ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ENV})

    nbutils.setup(seed=0, threads=1, style=False)
    digits = nbutils.load_digits_tensors(seed=0)
    train = (digits.x_train.flatten(1), digits.y_train)
    val = (digits.x_val.flatten(1), digits.y_val)
    seeds = list(range(args.seeds))

    def loop() -> None:
        for lr in args.lrs:
            for s in seeds:
                model = build(s)
                nbutils.train(
                    model,
                    nbutils.make_loader(*train, 64, shuffle=True, seed=s),
                    optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                    loss_fn=F.cross_entropy,
                    epochs=args.epochs,
                    eval_data={"val": val},
                )

    def stack() -> None:
        sgd_sweep(
            build,
            lrs=args.lrs,
            seeds=seeds,
            train=train,
            val=val,
            batch_size=64,
            epochs=args.epochs,
        )

    # warm-up: the first stacked call pays one-time costs of torch.func
    sgd_sweep(
        build, lrs=args.lrs[:1], seeds=seeds[:2], train=train, val=val, batch_size=64, epochs=1
    )
    seconds = {}
    for name, fn in (("loop", loop), ("stack", stack)):
        start = time.process_time()
        fn()
        seconds[name] = time.process_time() - start
    runs = len(args.lrs) * args.seeds
    print(f"threads: 1; {runs} runs of {args.epochs} epochs (plain SGD, batch 64)")
    print(f"Python loop over the runs: {seconds['loop']:.2f} CPU s")
    print(f"one stacked sweep:         {seconds['stack']:.2f} CPU s")
    print(f"speed-up of the stack:     {seconds['loop'] / seconds['stack']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
