"""Write each inline ``<script>`` of an extension once per page, not twice (a Sphinx 7.x bug).

An extension adds an inline script with ``app.add_js_file(None, body="...")``. Sphinx records it
twice: in its registry, and, if the HTML builder already exists, directly in the builder under the
file name ``None``. Before writing the pages, ``StandaloneHTMLBuilder.prepare_writing()`` adds
every registry entry to the builder again, but under the file name ``''`` (``filename or ''``).
The builder skips an asset that it already holds, but ``_JavaScript(None, ...)`` and
``_JavaScript('', ...)`` are not equal, so every inline script added after the builder started
is written into every page twice.

That is harmless for ``var`` (sphinx-togglebutton's ``var togglebuttonSelector``), but
sphinx-thebe (which jupyter-book always loads) declares ``const THEBE_JS_URL`` this way. The
second declaration throws ``Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been
declared`` on every page, and that whole script is skipped.

Sphinx fixed this upstream (sphinx-doc/sphinx#13402, in Sphinx 8.2) by passing ``filename or ''``
to the builder in ``Sphinx.add_js_file()`` too. jupyter-book 1.x requires Sphinx 7, so this
extension does the same: when the builder starts, before any other extension adds its scripts, it
wraps the HTML builder's ``add_js_file`` so that a missing file name is always ``''``. Both
records of an inline script are then equal, and the builder keeps one. On a Sphinx that already
has the fix the wrapper changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from sphinx.application import Sphinx
from sphinx.builders.html import StandaloneHTMLBuilder


def normalize_inline_scripts(app: Sphinx) -> None:
    """Make the HTML builder record an inline script (no file name) under the name ``''``."""
    builder = app.builder
    if not isinstance(builder, StandaloneHTMLBuilder):
        return
    add_js_file = builder.add_js_file

    @functools.wraps(add_js_file)
    def add_js_file_once(filename: str | None, **kwargs: Any) -> None:
        add_js_file(filename or "", **kwargs)

    builder.add_js_file = add_js_file_once  # type: ignore[method-assign]


def setup(app: Sphinx) -> dict[str, Any]:
    # Priority 0: run before every other builder-inited handler (the default is 500), so that no
    # extension adds an inline script to the builder before the wrapper is in place.
    app.connect("builder-inited", normalize_inline_scripts, priority=0)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
