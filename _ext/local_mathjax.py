"""Serve MathJax 3 from a local copy instead of a CDN, so the built book works offline.

The copy comes from the installed ``mathjax`` package (PyPI: ``django-static-mathjax``, which ships
the official MathJax 3 build). One self-contained combined component (by default
``es5/tex-svg-full.js``: TeX input with every extension, SVG output, no font files to load) and
MathJax's LICENSE are copied to ``<outdir>/_mathjax/``. That folder is deliberately *not* under
``_static/``: jupyter-book links every ``.js`` file it finds in ``_static`` into every page.

``mathjax_path`` is set to ``../_mathjax/<file>``. Sphinx joins a relative ``mathjax_path`` to
``_static/`` and then makes it relative to each page, so a page in a subfolder gets, e.g.,
``../../_static/../_mathjax/tex-svg-full.js``, which the browser resolves to ``_mathjax/`` at the
root of the site. Because the file is copied when the builder starts, before any page is written,
Sphinx also appends its usual ``?v=<checksum>`` for cache busting.

Whatever ``mathjax3_config`` myst-parser/myst-nb set (e.g. ``options.processHtmlClass`` for dollar
math) is left alone; Sphinx writes it as ``window.MathJax = {...}`` before loading the script.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError, ExtensionError
from sphinx.ext.mathjax import MATHJAX_URL
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Folder of the built site, next to ``_static/``, that receives the copy.
OUT_DIR = "_mathjax"
#: Where the installed ``mathjax`` package keeps the MathJax distribution.
DIST_DIR = Path("static", "mathjax")
INSTALL_HINT = (
    "The local_mathjax extension (_ext/local_mathjax.py) serves MathJax from the Python package "
    "'mathjax', which is provided by django-static-mathjax: run "
    "`pip install django-static-mathjax` (or `pip install -r requirements.txt`)."
)


def mathjax_dist() -> Path:
    """Return the folder of the MathJax distribution installed as the ``mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError(f"The Python package 'mathjax' is not installed. {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        dist = Path(location) / DIST_DIR
        if (dist / "package.json").is_file():
            return dist
    raise ExtensionError(
        f"The installed package 'mathjax' ({list(spec.submodule_search_locations)}) does not "
        f"contain a MathJax distribution under {DIST_DIR}/. {INSTALL_HINT}"
    )


def source_files(config: Config) -> tuple[Path, Path, str]:
    """Return the MathJax component to copy, MathJax's LICENSE, and MathJax's version."""
    dist = mathjax_dist()
    component = dist / "es5" / config.local_mathjax_component
    if not component.is_file():
        raise ConfigError(
            f"local_mathjax_component = {config.local_mathjax_component!r}: no such file "
            f"{component}. Choose a combined component from {dist / 'es5'}, e.g. tex-svg-full.js."
        )
    version = str(json.loads((dist / "package.json").read_text(encoding="utf-8"))["version"])
    if not version.startswith("3."):
        raise ExtensionError(f"MathJax 3 is needed, found {version} in {dist}. {INSTALL_HINT}")
    return component, dist / "LICENSE", version


def local_path(component: Path) -> str:
    """Return the ``mathjax_path`` of the copy (Sphinx joins a relative one to ``_static/``)."""
    return f"../{OUT_DIR}/{component.name}"


def set_mathjax_path(app: Sphinx, config: Config) -> None:
    """Point ``mathjax_path`` at the local copy (checking the package is there first)."""
    component, _, version = source_files(config)  # fails the build early if missing
    if config.mathjax_path != MATHJAX_URL:
        # Someone set mathjax_path explicitly: respect it, but say loudly that the local copy
        # is not used (a warning, so `jupyter-book build -W` fails).
        logger.warning(
            "local_mathjax: mathjax_path is set explicitly to %r, so the local copy of MathJax "
            "is not used; remove mathjax_path from _config.yml to serve MathJax with the site.",
            config.mathjax_path,
        )
        return
    config.mathjax_path = local_path(component)
    logger.info("local_mathjax: serving MathJax %s from %s/%s", version, OUT_DIR, component.name)


def copy_mathjax(app: Sphinx) -> None:
    """Copy the component and the LICENSE into ``<outdir>/_mathjax/`` before pages are written."""
    component, license_file, _ = source_files(app.config)
    if app.builder.format != "html" or app.config.mathjax_path != local_path(component):
        return
    target = Path(app.outdir) / OUT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for src in (component, license_file):
        shutil.copyfile(src, target / src.name)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.mathjax")  # defines mathjax_path and friends
    app.add_config_value("local_mathjax_component", "tex-svg-full.js", "html", [str])
    # Run after other config-inited handlers (priority > 500) so nothing resets mathjax_path.
    app.connect("config-inited", set_mathjax_path, priority=900)
    app.connect("builder-inited", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
