"""The book builds from the stored notebook outputs without a single warning, and _toc.yml agrees
with the files in the repository."""

from __future__ import annotations

import re
from html.parser import HTMLParser
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


# Attributes through which a page loads something by itself (links a reader clicks are fine).
RESOURCE_ATTRS = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "audio": ("src",),
    "video": ("src", "poster"),
    "input": ("src",),
}
LINK_RESOURCE_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest"}
REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)|@import\s+(['"])(.*?)\3""", re.IGNORECASE)


class _ResourceFinder(HTMLParser):
    """Collect the URLs a page loads by itself: scripts, styles, images, frames, inline CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        names = RESOURCE_ATTRS.get(tag, ())
        if tag == "link" and LINK_RESOURCE_RELS & set(values.get("rel", "").lower().split()):
            names = ("href",)
        for name in names:
            if name == "srcset":  # "url 1x, url 2x"
                self.urls += [part.split()[0] for part in values.get(name, "").split(",") if part]
            elif values.get(name):
                self.urls.append(values[name])
        self.urls += _css_urls(values.get("style", ""))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += _css_urls(data)


def _css_urls(css: str) -> list[str]:
    return [match[2] or match[4] for match in CSS_URL.finditer(css)]


def test_no_remote_resources(book_html: Path) -> None:
    # The browser test sees what a page requests; this also covers what it would request only
    # later or elsewhere (lazy images, other browsers), in every HTML and CSS file of the site.
    remote = []
    for file in sorted(book_html.rglob("*")):
        if file.suffix == ".html":
            finder = _ResourceFinder()
            finder.feed(file.read_text("utf-8"))
            urls = finder.urls
        elif file.suffix == ".css":
            urls = _css_urls(file.read_text("utf-8"))
        else:
            continue
        remote += [f"{file.relative_to(book_html)}: {url}" for url in urls if REMOTE.match(url)]
    if remote:
        pytest.fail("the site loads resources from outside:\n" + "\n".join(remote), pytrace=False)


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
