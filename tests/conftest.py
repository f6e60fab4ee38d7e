"""Shared fixtures: the book, built once per test session from the stored notebook outputs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sphinx_external_toc.parsing import parse_toc_yaml

REPO = Path(__file__).resolve().parents[1]
TOC = REPO / "_toc.yml"
#: Suffixes of the source files a _toc.yml entry may point at.
SOURCE_SUFFIXES = (".md", ".ipynb", ".rst")
#: Pages Sphinx writes besides those listed in _toc.yml (index.html is only a redirect).
EXTRA_PAGES = ("genindex", "search")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Sphinx prints problems as "<location>: WARNING: <message>" (or ERROR/CRITICAL/SEVERE).
_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|SEVERE)\b[:\]]")


@dataclass(frozen=True)
class BookBuild:
    """The result of one `jupyter-book build`."""

    returncode: int
    log: str
    html_dir: Path
    seconds: float

    @property
    def warnings(self) -> list[str]:
        """The warning and error lines of the build log."""
        return [line for line in self.log.splitlines() if _PROBLEM.search(line)]


def toc_docnames() -> list[str]:
    """Return the documents of _toc.yml (paths relative to the repository, no suffix)."""
    names = []
    for entry in parse_toc_yaml(TOC):  # an entry may be given with its suffix or without
        suffix = Path(entry).suffix
        names.append(entry.removesuffix(suffix) if suffix in SOURCE_SUFFIXES else entry)
    return names


def _jupyter_book() -> str:
    """Return the jupyter-book executable of the Python environment running the tests."""
    sibling = Path(sys.executable).with_name("jupyter-book")
    found = str(sibling) if sibling.is_file() else shutil.which("jupyter-book")
    if found is None:
        pytest.fail("jupyter-book is not installed: run `pip install -r requirements.txt`.")
    return found


@pytest.fixture(scope="session")
def book_build(tmp_path_factory: pytest.TempPathFactory) -> BookBuild:
    """Build the book into a fresh folder, so no warning can hide in an incremental build.

    `-n -W --keep-going`: missing references are warnings, warnings are errors, and every
    warning is reported rather than only the first.
    """
    out = tmp_path_factory.mktemp("book")
    cmd = [_jupyter_book(), "build", str(REPO), "--path-output", str(out), "-n", "-W"]
    cmd.append("--keep-going")
    env = {**os.environ, "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    seconds = time.perf_counter() - start
    log = _ANSI.sub("", proc.stdout + proc.stderr)
    (out / "build.log").write_text(log, encoding="utf-8")
    print(f"\njupyter-book build: {seconds:.1f} s, exit {proc.returncode}, log {out / 'build.log'}")
    return BookBuild(proc.returncode, log, out / "_build" / "html", seconds)


@pytest.fixture(scope="session")
def book_html(book_build: BookBuild) -> Iterator[Path]:
    """The folder of the built HTML site (the build may have warnings; test_book checks that)."""
    if not (book_build.html_dir / "index.html").is_file():
        tail = "\n".join(book_build.log.splitlines()[-40:])
        pytest.fail(f"the book build produced no {book_build.html_dir}/index.html:\n{tail}")
    yield book_build.html_dir


@pytest.fixture(scope="session")
def toc_pages() -> list[str]:
    """The documents listed in _toc.yml, e.g. "chapters/part1-regularization/01-bias-variance"."""
    return toc_docnames()


@pytest.fixture(scope="session")
def site_pages() -> list[str]:
    """Every page of the built site: the documents of _toc.yml plus Sphinx's own pages."""
    return [*toc_docnames(), *EXTRA_PAGES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test taking `book_page` once for every page of the site (docname, no suffix)."""
    if "book_page" in metafunc.fixturenames:
        metafunc.parametrize("book_page", [*toc_docnames(), *EXTRA_PAGES])
