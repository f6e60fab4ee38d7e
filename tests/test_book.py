"""The book builds from the stored notebook outputs without a single warning, and _toc.yml agrees
with the files in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, SOURCE_SUFFIXES, BookBuild


def test_build_succeeds_without_warnings(book_build: BookBuild) -> None:
    warnings = book_build.warnings
    if book_build.returncode == 0 and not warnings:
        return
    details = "\n".join(warnings) or "\n".join(book_build.log.splitlines()[-60:])
    pytest.fail(
        f"`jupyter-book build -n -W --keep-going` exited {book_build.returncode} with "
        f"{len(warnings)} warning(s):\n{details}",
        pytrace=False,
    )


def test_every_toc_file_has_a_page(book_html: Path, toc_pages: list[str]) -> None:
    missing = [f"{page}.html" for page in toc_pages if not (book_html / f"{page}.html").is_file()]
    assert not missing, f"no HTML page was built for these _toc.yml entries: {missing}"


def test_index_html_leads_to_a_page(book_html: Path) -> None:
    index = book_html / "index.html"
    assert index.is_file(), f"{index} is missing"
    # jupyter-book writes index.html as a redirect to the root document when the root is not
    # called "index"; the redirect must point at a page that exists.
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', index.read_text("utf-8"))
    if redirect:
        target = redirect[1]
        assert (book_html / target).is_file(), f"index.html redirects to a missing {target}"


def test_no_page_outside_the_toc(book_html: Path, site_pages: list[str]) -> None:
    # The browser test opens site_pages; a page not in that list would escape its checks.
    built = {
        page.relative_to(book_html).with_suffix("").as_posix()
        for page in book_html.rglob("*.html")
        if not page.relative_to(book_html).parts[0].startswith("_")  # _static/, _sources/, ...
    }
    unexpected = sorted(built - {*site_pages, "index"})
    assert not unexpected, f"pages built that are not in _toc.yml: {unexpected}"


def test_toc_lists_only_existing_files(toc_pages: list[str]) -> None:
    missing, ambiguous = [], []
    for page in toc_pages:
        sources = [REPO / f"{page}{suffix}" for suffix in SOURCE_SUFFIXES]
        found = [source for source in sources if source.is_file()]
        if not found:
            missing.append(page)
        elif len(found) > 1:
            ambiguous.append([str(source.relative_to(REPO)) for source in found])
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    assert not ambiguous, f"_toc.yml entries match several files: {ambiguous}"
    duplicates = sorted({page for page in toc_pages if toc_pages.count(page) > 1})
    assert not duplicates, f"_toc.yml lists these files more than once: {duplicates}"


def test_every_notebook_is_in_the_toc(toc_pages: list[str]) -> None:
    notebooks = sorted(
        notebook.relative_to(REPO).with_suffix("").as_posix()
        for notebook in (REPO / "chapters").rglob("*.ipynb")
        if ".ipynb_checkpoints" not in notebook.parts
    )
    assert notebooks, "no notebook found under chapters/"
    missing = [f"{notebook}.ipynb" for notebook in notebooks if notebook not in toc_pages]
    assert not missing, f"notebooks under chapters/ that _toc.yml does not list: {missing}"
