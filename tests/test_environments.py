"""The two ways of running a chapter away from a clone: Binder and Colab, each rebuilt here.

Neither service runs here, so each test builds the next best thing, a fresh virtual environment
made the way the service makes it, and executes a whole chapter in it:

- **Binder.** repo2docker reads only `binder/` when that folder exists: `runtime.txt` picks the
  Python version, and `pip install --no-cache-dir -r binder/requirements.txt` runs from the
  repository root after the repository is copied in. The test does exactly that in a copy of the
  working tree, with an interpreter of the declared version, then checks that every pin of
  requirements.txt is installed at its version (torch as the CPU build), that `pip check` is clean,
  and that a chapter runs end to end.
- **Colab.** Colab ships torch, numpy, matplotlib, scikit-learn and ipykernel, and nothing of the
  course. The test installs only those five (at the versions of requirements.txt), checks that
  `import nbutils` fails, runs the install line that the chapter itself shows readers, with the
  public URL replaced by a `git+file://` URL of a local clone, and then executes the chapter in a
  new kernel (the restart the line asks for), checking that `nbutils` came from that install.

The install line is the plain `git+URL` form: pip 23 (the pip of Python 3.11) rejects the form
`nbutils @ git+file:///path`, so a test of that form could not run the line that readers run.

Both tests need the package index, as the README's set-up does. Each takes one to three minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BINDER_CHAPTER = "chapters/part5-bn-in-the-wild/11-bn-across-processes-and-domains.ipynb"
COLAB_CHAPTER = "chapters/part2-batchnorm/06-bn-in-pytorch.ipynb"
#: What Colab ships that the course uses (Colab ships much more, none of which the course needs).
COLAB_PACKAGES = ("torch", "numpy", "matplotlib", "scikit-learn", "ipykernel")
#: The download index of PyTorch's CPU builds cannot be reached from the test machines; without
#: retries pip notes each failed lookup at once and goes on with the other indexes, instead of
#: spending about eight seconds on each of some 150 packages. It changes nothing that is installed.
PIP_ENV = {"PIP_RETRIES": "0", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 1200) -> str:
    """Run a command; on failure, fail the test with the end of its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env={**env, **PIP_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{out[-4000:]}")
    return out


def copy_working_tree(dest: Path) -> Path:
    """Copy the files git would commit (tracked or new, not ignored) as they are now."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("these tests copy the repository with git: run them in a git clone")
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def make_clone(dest: Path) -> Path:
    """A git repository holding the working tree in one commit: what `git clone` would give."""
    copy_working_tree(dest)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    ident = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", *ident, "commit", "-q", "-m", "working tree"], dest)
    return dest


def pins() -> dict[str, str]:
    """The exact pins of requirements.txt, by normalized project name."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            found[normalize(m.group(1))] = m.group(2)
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(python: Path) -> dict[str, str]:
    """Project name -> version of every distribution in the environment of `python`."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    return {normalize(k): v for k, v in json.loads(run([str(python), "-c", code])).items()}


def fresh_venv(where: Path, interpreter: str = sys.executable) -> Path:
    run([interpreter, "-m", "venv", str(where)])
    return where / "bin" / "python"


def kernel(python: Path, where: Path) -> KernelManager:
    """A kernel manager for an ipykernel running under `python` (the environment under test)."""
    spec = where / "kernels" / "under-test"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "under test", "language": "python"})
    )
    ksm = KernelSpecManager(kernel_dirs=[str(where / "kernels")])
    return KernelManager(kernel_name="under-test", kernel_spec_manager=ksm)


def execute(nb: nbformat.NotebookNode, python: Path, where: Path, cwd: Path):
    """Execute `nb` top to bottom in a new kernel of `python`; a cell error fails the test."""
    client = NotebookClient(
        nb,
        km=kernel(python, where / f"k{len(list(where.glob('k*')))}"),
        timeout=600,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def cell_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def python_of_runtime() -> str:
    """An interpreter of the version binder/runtime.txt declares (e.g. python-3.11)."""
    runtime = (ROOT / "binder" / "runtime.txt").read_text(encoding="utf-8").strip()
    m = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert m, f"binder/runtime.txt must read python-3.X, not {runtime!r}"
    version = m.group(1)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.fail(f"binder/runtime.txt asks for Python {version}; no python{version} here")
    return found


def test_binder_files_declare_python_and_the_pins():
    # The declared version is the one the pins were made with (requirements.txt's header says
    # so), and the Binder requirements are those pins, not a list of their own that could drift.
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    assert "Python 3.11" in (ROOT / "requirements.txt").read_text().splitlines()[0]
    lines = [
        ln.strip()
        for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "-r ../requirements.txt",
    ]
    assert (ROOT / "requirements.txt").read_text().rstrip().endswith("-e .")


def test_binder_environment_runs_a_chapter(tmp_path):
    repo = copy_working_tree(tmp_path / "repo")
    python = fresh_venv(tmp_path / "venv", python_of_runtime())
    # repo2docker's command, from the repository root.
    run(
        [str(python), "-m", "pip", "install", "--no-cache-dir", "-r", "binder/requirements.txt"],
        repo,
    )

    have = installed(python)
    wrong = {
        name: (want, have.get(name))
        for name, want in pins().items()
        if have.get(name, "").split("+")[0] != want
    }
    assert not wrong, f"pinned version -> installed version: {wrong}"
    assert have["torch"] == "2.13.0+cpu", f"torch {have['torch']}: not the CPU build"
    assert have["nbutils"], "nbutils is not installed"
    run([str(python), "-m", "pip", "check"])

    path = repo / BINDER_CHAPTER
    nb = execute(nbformat.read(path, as_version=4), python, tmp_path, path.parent)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors


def colab_install_line(path: Path) -> str:
    """The `%pip install` line a chapter shows readers, exactly as written."""
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    lines = re.findall(r"^%pip install .*$", text, flags=re.M)
    assert len(lines) == 1, f"{path.name}: expected one %pip install line, found {lines}"
    return lines[0]


def test_colab_install_line_names_the_public_repository():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    line = colab_install_line(ROOT / COLAB_CHAPTER)
    assert line == f'%pip install "git+{url}"', line


def test_colab_environment_runs_a_chapter(tmp_path):
    clone = make_clone(tmp_path / "clone")
    python = fresh_venv(tmp_path / "venv")
    versions = pins()
    wanted = [f"{name}=={versions[normalize(name)]}" for name in COLAB_PACKAGES]
    run([str(python), "-m", "pip", "install", *wanted])

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    line = colab_install_line(ROOT / COLAB_CHAPTER)
    local_line = line.replace(url, f"file://{clone}")
    assert local_line != line and "git+file://" in local_line

    # Before the install line, the chapter's first import fails; the line installs nbutils.
    first = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "try:\n    import nbutils\n"
                "except ModuleNotFoundError as e:\n    print('missing:', e.name)"
            ),
            nbformat.v4.new_code_cell(local_line),
        ]
    )
    execute(first, python, tmp_path, tmp_path)
    assert cell_text(first.cells[0]).strip() == "missing: nbutils"
    assert "Successfully installed" in cell_text(first.cells[1]), cell_text(first.cells[1])[-2000:]

    # A new kernel (the restart the chapter asks for) runs the chapter, from a copy of it away
    # from the repository, so only the installed nbutils can be imported.
    chapter = tmp_path / "chapter"
    chapter.mkdir()
    nb = nbformat.read(ROOT / COLAB_CHAPTER, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print(nbutils.__file__)"))
    execute(nb, python, tmp_path, chapter)
    origin = cell_text(nb.cells[-1]).strip()
    assert origin.startswith(str(tmp_path / "venv")), f"nbutils imported from {origin}"
