"""The repository's own consistency: the public URL is set once, notebooks follow the template."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no chapter notebooks found under chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_line_points_at_the_configured_repository(path):
    # Every chapter tells readers outside the repository how to install nbutils; the URL it
    # gives must be the one in _config.yml (change both with a search-and-replace).
    urls = set(re.findall(r"git\+(https://[^\s\"`]+)", "".join(source(c) for c in cells(path))))
    assert urls == {repository_url()}, f"{path.name}: install URLs {urls} != {repository_url()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_template(path):
    nb_cells = cells(path)
    assert nb_cells[0]["cell_type"] == "markdown" and source(nb_cells[0]).startswith("# ")
    code = [c for c in nb_cells if c["cell_type"] == "code"]
    assert "nbutils.setup(" in source(code[0]), "the first code cell must be the setup cell"
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), (
        "second code cell: parameters"
    )
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "stored outputs must come from one clean run"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], "a stored output is an error"
    markdown = "".join(source(c) for c in nb_cells if c["cell_type"] == "markdown")
    for needle in ("{exercise}", "{solution}", "{cite", "{glue:text}"):
        assert needle in markdown, f"{path.name}: no {needle} in the text"
    code_text = "".join(source(c) for c in code)
    assert "assert " in code_text and "glue(" in code_text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_random_stream_derives_from_seed(path):
    # The parameters cell defines SEED (papermill can override it), the notebook re-seeds from it
    # right after, and no code cell but the setup cell seeds from a literal number.
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    params = source(code[1])
    assert re.search(r"^SEED\s*=\s*\d+\b", params, re.M), "the parameters cell must define SEED"
    later = "".join(source(c) for c in code[2:])
    assert "seed_everything(SEED)" in later, "re-seed with nbutils.seed_everything(SEED)"
    literal = re.compile(r"(manual_seed\(\s*\d+\s*\)|\bseed\s*=\s*\d+\b|default_rng\(\s*\d+\s*\))")
    offenders = [m.group(0) for c in code[1:] for m in literal.finditer(source(c))]
    assert not offenders, f"{path.name}: seeds from literals {offenders}; derive them from SEED"


# Links to the repository on the landing page and in the README, in the three forms they take.
REPOSITORY_LINKS = (
    r"https://github\.com/([\w.-]+/[\w.-]+)",
    r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/",
    r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/",
)


@pytest.mark.parametrize("name", ["intro.md", "README.md"])
def test_links_to_the_repository_name_the_configured_one(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    found = {m.removesuffix(".git") for rx in REPOSITORY_LINKS for m in re.findall(rx, text)}
    expected = repository_url().removeprefix("https://github.com/")
    # intro.md shows all three (clone, Binder, Colab); neither file may name another repository.
    assert found == {expected}, f"{name}: links name {found}, _config.yml names {expected}"
    if name == "intro.md":
        for rx in REPOSITORY_LINKS:
            assert re.search(rx, text), f"intro.md has no link of the form {rx}"
