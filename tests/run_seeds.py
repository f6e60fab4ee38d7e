"""Run every chapter with papermill at other seeds: every assert must hold for any SEED.

    python tests/run_seeds.py                    # SEED = 1 and 2, every notebook
    python tests/run_seeds.py --seeds 7 11 --only 08-variance
    python tests/run_seeds.py --jobs 1           # one notebook at a time

Each notebook's ``parameters`` cell defines ``SEED``; papermill injects ``SEED = k`` after it and
runs the notebook top to bottom in a fresh kernel. The executed copies go to a temporary folder
(``--keep DIR`` keeps them); the stored notebooks are never touched. Runs go ``--jobs`` at a time
(default 2, one per core: the notebooks use one thread each). Exit status 1 if any run failed,
with the failing cell's error printed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks(pattern: str | None = None) -> list[Path]:
    paths = sorted(
        p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    return [p for p in paths if pattern is None or re.search(pattern, str(p))]


def run_one(path: Path, seed: int, out_dir: Path) -> tuple[str, int, float, str | None]:
    import papermill

    out = out_dir / f"{path.stem}-seed{seed}.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters={"SEED": seed},
            cwd=str(path.parent),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
        )
        error = None
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(exc).__name__}: {exc}"
    return str(path.relative_to(ROOT)), seed, time.perf_counter() - start, error


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="values of SEED")
    parser.add_argument("--only", help="regular expression: run only matching notebooks")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2)")
    parser.add_argument("--keep", type=Path, help="folder to keep the executed notebooks in")
    args = parser.parse_args()
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds must be ints >= 0, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    paths = notebooks(args.only)
    if not paths:
        print("no notebook matched", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(p, s) for s in args.seeds for p in paths]
        failures = []
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, p, s, out_dir) for p, s in jobs]
            for future in futures:
                name, seed, seconds, error = future.result()
                status = "ok" if error is None else "FAILED"
                print(f"{seconds:7.1f} s  SEED={seed:<4d} {status:6s} {name}", flush=True)
                if error is not None:
                    failures.append((name, seed, error))
    for name, seed, error in failures:
        print(f"\n== {name} with SEED={seed}\n{error}", file=sys.stderr)
    print(f"\n{len(jobs) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
