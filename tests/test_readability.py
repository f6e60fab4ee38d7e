"""The house rules that keep a chapter readable, checked on every notebook.

- a visible code cell teaches one step: at most 40 lines, at most 80 characters a line;
- `glue` calls live in hidden cells, never in a cell the reader sees;
- every figure is numbered: its cell names it and gives a caption and alt text, and the text
  refers to it by {numref};
- the chapter opens with a box of what the reader will be able to do and the key results, with
  computed (glued) numbers;
- chapters are referred to by cross-reference, never by a typed number ("chapter 4"), so that
  inserting a chapter renumbers the book.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
HIDDEN = {"remove-cell", "remove-input", "hide-input", "hide-cell"}
MAX_LINES, MAX_WIDTH = 40, 80
TYPED_CHAPTER = re.compile(r"\b(?:[Cc]hapters?|[Cc]h\.)\s+\d+")
KEY_RESULTS = re.compile(r":{3,}\{admonition\}[^\n]*key results", re.IGNORECASE)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def visible_code(path: Path) -> list[tuple[int, dict]]:
    return [
        (i, c)
        for i, c in enumerate(cells(path))
        if c["cell_type"] == "code" and not tags(c) & HIDDEN
    ]


def markdown(path: Path) -> str:
    return "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")


def has_image(cell: dict) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_cells_are_short_and_narrow(path):
    offenders = []
    for i, cell in visible_code(path):
        lines = source(cell).splitlines()
        width = max((len(line) for line in lines), default=0)
        if len(lines) > MAX_LINES or width > MAX_WIDTH:
            offenders.append(f"cell {i}: {len(lines)} lines, widest {width}")
    assert not offenders, f"{path.name}: {offenders}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_glue_in_visible_cells(path):
    offenders = [i for i, c in visible_code(path) if re.search(r"\bglue\(", source(c))]
    assert not offenders, f"{path.name}: glue calls in visible cells {offenders}; hide them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_numbered_captioned_described_and_referenced(path):
    text = markdown(path)
    problems = []
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] != "code" or not has_image(cell) or tags(cell) & HIDDEN:
            continue
        meta = cell.get("metadata", {}).get("mystnb", {})
        figure, image = meta.get("figure", {}), meta.get("image", {})
        name, caption, alt = figure.get("name"), figure.get("caption"), image.get("alt")
        if not (name and caption and alt):
            problems.append(f"cell {i}: figure name/caption/alt missing")
        elif f"{{numref}}`{name}`" not in text and not re.search(
            rf"\{{numref\}}`[^`]*<{re.escape(name)}>`", text
        ):
            problems.append(f"cell {i}: {name} is never referred to with {{numref}}")
    assert not problems, f"{path.name}: {problems}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_the_key_results(path):
    opening = "\n".join(source(c) for c in cells(path)[:3] if c["cell_type"] == "markdown")
    match = KEY_RESULTS.search(opening)
    assert match, f"{path.name}: no 'key results' admonition at the top"
    box = opening[match.start() :]
    assert "{glue:text}" in box, f"{path.name}: the key results quote no computed number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_typed_chapter_numbers(path):
    typed = TYPED_CHAPTER.findall(markdown(path))
    assert not typed, f"{path.name}: typed chapter numbers {typed}; use {{doc}} or {{ref}}"


def test_rules_catch_offenders(tmp_path):
    # The checks above must be able to fail: feed them a notebook that breaks every rule.
    long_cell = {"cell_type": "code", "metadata": {}, "outputs": [], "source": ["x = 1\n"] * 41}
    figure = {
        "cell_type": "code",
        "metadata": {},
        "outputs": [{"output_type": "display_data", "data": {"image/png": ""}}],
        "source": ["glue('a', 1)\n"],
    }
    text = {"cell_type": "markdown", "metadata": {}, "source": ["# T\n\nAs chapter 4 shows."]}
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"cells": [text, long_cell, figure]}), encoding="utf-8")
    for check in (
        test_visible_cells_are_short_and_narrow,
        test_no_glue_in_visible_cells,
        test_every_figure_is_numbered_captioned_described_and_referenced,
        test_opens_with_the_key_results,
        test_no_typed_chapter_numbers,
    ):
        with pytest.raises(AssertionError):
            check(bad)


# A bare {ref} to a heading shows the heading as the link text, and Sphinx writes the heading's
# math there as raw TeX ("The noise of \mu_B and \sigma_B"): such links need text of their own.
MATH_HEADING = re.compile(r"^\(([\w-]+)\)=\s*\n#+ .*\$", re.M)
BARE_REF = re.compile(r"\{ref\}`([\w-]+)`")


def book_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): markdown(p) for p in NOTEBOOKS}
    for page in [ROOT / "intro.md", *sorted((ROOT / "appendices").glob("*.md"))]:
        texts[str(page.relative_to(ROOT))] = page.read_text(encoding="utf-8")
    return texts


def bare_refs_to_math_headings(texts: dict[str, str]) -> list[str]:
    labels = {m.group(1) for text in texts.values() for m in MATH_HEADING.finditer(text)}
    return [
        f"{name}: {{ref}}`{m.group(1)}`"
        for name, text in texts.items()
        for m in BARE_REF.finditer(text)
        if m.group(1) in labels
    ]


def test_links_to_headings_with_math_have_their_own_text():
    texts = book_texts()
    assert any(MATH_HEADING.search(t) for t in texts.values()), "no heading with math found"
    assert not bare_refs_to_math_headings(texts)
    # The check finds such a link when there is one.
    texts["probe.md"] = "{ref}`nbs-spread` and {ref}`the noise <nbs-spread>`"
    assert bare_refs_to_math_headings(texts) == ["probe.md: {ref}`nbs-spread`"]
