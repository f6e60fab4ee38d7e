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
