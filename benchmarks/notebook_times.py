"""Run every chapter notebook on a fresh kernel and report the seconds each one takes.

    python benchmarks/notebook_times.py                 # print the table
    python benchmarks/notebook_times.py --update-book   # also write it into appendices/run-times.md
    python benchmarks/notebook_times.py --save-outputs  # also store the fresh outputs

``--save-outputs`` is how stored outputs are refreshed after a chapter changes (see
CONTRIBUTING.md): each notebook is executed top to bottom in a new kernel and written back, with no
per-cell timing metadata, so the diff shows only real changes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "appendices" / "run-times.md"
MARK = "<!-- table below is written by benchmarks/notebook_times.py -->"
#: Allocator settings that keep small-tensor timings from flipping between modes (see STYLE).
ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def notebooks(pattern: str | None = None) -> list[Path]:
    paths = sorted(
        p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    return [p for p in paths if pattern is None or re.search(pattern, str(p))]


def run(path: Path, save: bool) -> tuple[float, float]:
    """Execute ``path`` in a fresh kernel from its own folder.

    Returns (wall-clock seconds, CPU seconds of the kernel process). The CPU time, read from the
    finished child process, is what the notebook would take on an idle core (it uses one thread):
    it stays meaningful when other work shares the machine.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if save:
        nbformat.write(nb, path)
    return seconds, cpu


def table(rows: list[tuple[str, float, float]], for_book: bool = False) -> str:
    """A Markdown table of the rows (path, seconds, CPU seconds).

    For the book each notebook is a link to its chapter (the chapter's title, which wraps in a
    narrow column, where a long path in a code span would push the table sideways).
    """
    total, total_cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines = ["| notebook | seconds | CPU seconds |", "| --- | ---: | ---: |"]
    for name, s, c in rows:
        shown = f"{{doc}}`../{name.removesuffix('.ipynb')}`" if for_book else f"`{name}`"
        lines.append(f"| {shown} | {s:.1f} | {c:.1f} |")
    lines.append(f"| **total** | **{total:.1f}** | **{total_cpu:.1f}** |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="regular expression: run only matching notebooks")
    parser.add_argument(
        "--save-outputs", action="store_true", help="write the executed notebooks back"
    )
    parser.add_argument(
        "--update-book",
        action="store_true",
        help="write the table into " + str(PAGE.relative_to(ROOT)),
    )
    args = parser.parse_args()
    os.environ.update(ENV)
    if args.update_book and args.only:
        parser.error("--update-book needs every notebook; do not combine it with --only")

    rows = []
    for path in notebooks(args.only):
        name = str(path.relative_to(ROOT))
        seconds, cpu = run(path, args.save_outputs)
        rows.append((name, seconds, cpu))
        print(f"{seconds:7.1f} s  {cpu:7.1f} CPU s  {name}", flush=True)
    if not rows:
        print("no notebook matched", file=sys.stderr)
        return 1
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    report = table(rows)
    print()
    print(report)
    if args.update_book:
        text = PAGE.read_text(encoding="utf-8")
        head = text.split(MARK)[0]
        intro = f"Measured on {machine}, each notebook in a fresh kernel:"
        book_table = table(rows, for_book=True)
        PAGE.write_text(f"{head}{MARK}\n\n{intro}\n\n{book_table}\n", encoding="utf-8")
        print(f"\nwrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
