"""Open every page of the built book in headless Chromium, from disk, with no network.

For each page: the math is typeset by the local copy of MathJax without errors, every image
loaded, the page requested nothing from outside the built site, and the browser console shows no
error (level SEVERE: an uncaught exception, a script's console.error, a resource that failed to
load). Each page is opened as on a first visit: the page's local storage is cleared after each one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

INSTALL_HINT = (
    "Install Debian's Chromium and its driver: `apt-get install chromium chromium-driver` "
    "(Debian/Ubuntu), or run .ci/run."
)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1280,1600",
    # No host name resolves: a request that escapes the site fails (and the log still shows it).
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
#: URL schemes that never leave the page.
LOCAL_SCHEMES = ("data:", "blob:", "about:")
#: The folder of the built site holding the local copy of MathJax (see _ext/local_mathjax.py).
MATHJAX_DIR = "_mathjax"
TIMEOUT_S = 60

# Waits for the initial typesetting of MathJax 3 (the `startup.promise`) and reports what it found.
MATHJAX_JS = """
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
const script = [...document.scripts].find((s) => /mathjax/i.test(s.src));
const base = {script: script ? script.src : null};
if (!(mj && mj.startup && mj.startup.promise)) {
    done({...base, loaded: false});
    return;
}
mj.startup.promise.then(
    () => done({...base, loaded: true, version: mj.version}),
    (err) => done({...base, loaded: true, version: mj.version, error: String(err)}),
);
"""
# Sphinx wraps inline math in span.math and display math in div.math; MathJax puts an
# mjx-container in each. A TeX error becomes an merror node (data-mjx-error holds the message).
MATH_JS = """
const snippet = (el) => el.textContent.trim().replace(/\\s+/g, " ").slice(0, 100);
const math = [...document.querySelectorAll("span.math, div.math")];
const errors = [...document.querySelectorAll("mjx-container")].flatMap((box) => {
    const error = box.querySelector("[data-mjx-error], mjx-merror, merror");
    if (!error) return [];
    const source = box.querySelector("mjx-assistive-mml merror") || error;
    return [`${error.getAttribute("data-mjx-error") || "error"} in ${snippet(source)}`];
});
return {
    count: math.length,
    untypeset: math.filter((el) => !el.querySelector("mjx-container")).map(snippet),
    errors: errors,
};
"""
# Loads lazy images too, waits until every image has loaded or failed, and lists broken ones.
IMAGES_JS = """
const done = arguments[arguments.length - 1];
const images = [...document.images];
images.forEach((img) => { img.loading = "eager"; });
Promise.all(images.map((img) => img.complete ? null : new Promise((resolve) => {
    img.addEventListener("load", resolve);
    img.addEventListener("error", resolve);
}))).then(() => done({
    count: images.length,
    broken: images.filter((img) => !(img.complete && img.naturalWidth > 0))
        .map((img) => img.currentSrc || img.src || img.outerHTML.slice(0, 120)),
}));
"""


def _executable(name: str) -> str | None:
    """Return the path of `name`: $CHROMIUM / $CHROMEDRIVER if set, else from PATH or /usr/bin."""
    override = os.environ.get(name.upper())
    if override:
        return shutil.which(override)
    return shutil.which(name) or shutil.which(name, path="/usr/bin")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, logging every network request of the pages it opens."""
    chromium, chromedriver = _executable("chromium"), _executable("chromedriver")
    if chromium is None or chromedriver is None:
        missing = " and ".join(
            name
            for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
            if path is None
        )
        message = f"{missing} not found. {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the browser test may not be skipped: {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # "performance": the DevTools network events; "browser": the console.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path: Selenium Manager (which may download drivers) is never used.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_script_timeout(TIMEOUT_S)
    driver.set_page_load_timeout(TIMEOUT_S)
    # Leave Chromium's start page (its new-tab page tries to reach the internet) before any test.
    driver.get("about:blank")
    _network_events(driver)
    _console_errors(driver)
    try:
        yield driver
    finally:
        driver.quit()


def _network_events(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Return (and drain) the DevTools Network.* events logged since the last call."""
    events = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"].startswith("Network."):
            events.append(message)
    return events


def _console_errors(driver: webdriver.Chrome) -> list[str]:
    """Return (and drain) the console errors (level SEVERE) logged since the last call."""
    return [
        f"{entry['message']} [{entry.get('source', 'console')}]"
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
    ]


def _clear_storage(driver: webdriver.Chrome) -> None:
    """Forget what the open page stored, so that the next page is opened as on a first visit."""
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")


def _outside_site(url: str, site: Path) -> str | None:
    """Why `url` is not a request for a file inside the built site, or None if it is."""
    if url.startswith(LOCAL_SCHEMES):
        return None
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return "outside the site"
    path = Path(unquote(parsed.path)).resolve()
    if not path.is_relative_to(site):
        return "a file outside the built site"
    if not path.is_file():
        return "a missing file"
    return None


# Code blocks and printed outputs wider than their box, with the first line that does not fit.
WIDE_JS = """
const chars = (pre) => {
  const probe = document.createElement("span");
  probe.textContent = "x".repeat(100);
  pre.appendChild(probe);
  const width = probe.getBoundingClientRect().width / 100;
  probe.remove();
  return width;
};
return [...document.querySelectorAll("div.highlight pre, div.cell_output pre")]
  .filter((pre) => pre.scrollWidth > pre.clientWidth + 1)
  .map((pre) => {
    const fit = Math.floor((pre.clientWidth - 32) / chars(pre));
    const line = pre.textContent.split("\\n").find((l) => l.length > fit) || "";
    return `${pre.scrollWidth - pre.clientWidth}px (${fit} characters fit): ${line.slice(0, 100)}`;
  });
"""


# Tables wider than their box (the theme wraps each table in a box that scrolls sideways).
WIDE_TABLE_JS = """
return [...document.querySelectorAll("table")]
  .filter((table) => table.parentElement.scrollWidth > table.parentElement.clientWidth + 1)
  .map((table) => {
    const box = table.parentElement;
    const head = table.textContent.trim().replace(/\\s+/g, " ").slice(0, 60);
    return `${box.scrollWidth - box.clientWidth}px: ${head}`;
  });
"""


# Displayed equations (typeset by then: MATHJAX_JS waits for MathJax) wider than their box.
WIDE_MATH_JS = """
return [...document.querySelectorAll('mjx-container[display="true"]')]
  .filter((eq) => eq.scrollWidth > eq.clientWidth + 1)
  .map((eq) => `${eq.scrollWidth - eq.clientWidth}px: ${(eq.closest("[id]") || {}).id}`);
"""


def test_page_renders_offline(browser: webdriver.Chrome, book_html: Path, book_page: str) -> None:
    site = book_html.resolve()
    page = site / f"{book_page}.html"
    assert page.is_file(), f"{book_page}: {page} was not built"
    _network_events(browser)  # drop whatever the previous page left in the logs
    _console_errors(browser)

    browser.get(page.as_uri())
    try:
        mathjax = browser.execute_async_script(MATHJAX_JS)
        math = browser.execute_script(MATH_JS)
        images = browser.execute_async_script(IMAGES_JS)
        wide = browser.execute_script(WIDE_JS)
        wide_math = browser.execute_script(WIDE_MATH_JS)
        wide_tables = browser.execute_script(WIDE_TABLE_JS)
    finally:
        _clear_storage(browser)
    browser.get("about:blank")  # stop the page, so all of its requests are in the log
    events = _network_events(browser)
    console = _console_errors(browser)

    problems: list[str] = []
    # (a) Math: MathJax loaded from the local copy and typeset every formula without error.
    if math["count"]:
        local_mathjax = (site / MATHJAX_DIR).as_uri() + "/"
        if not mathjax["loaded"]:
            problems.append(f"MathJax did not load (script {mathjax['script']})")
        elif not (mathjax["script"] or "").startswith(local_mathjax):
            problems.append(f"MathJax was loaded from {mathjax['script']}, not {local_mathjax}")
        elif not str(mathjax.get("version", "")).startswith("3."):
            problems.append(f"MathJax {mathjax.get('version')} is not MathJax 3")
        if mathjax.get("error"):
            problems.append(f"MathJax typesetting failed: {mathjax['error']}")
        problems += [f"math not typeset: {tex}" for tex in math["untypeset"]]
    problems += [f"TeX error: {error}" for error in math["errors"]]
    # (b) Images: every <img> loaded.
    problems += [f"image did not load: {src}" for src in images["broken"]]
    # (c) Network: only files of the built site were requested, and all of them exist.
    urls: dict[str, str] = {}  # request id -> URL
    reported: set[str] = set()
    for event in events:
        params = event["params"]
        if event["method"] == "Network.requestWillBeSent":
            url = urls[params["requestId"]] = params["request"]["url"]
            if why := _outside_site(url, site):
                problems.append(f"requested {why}: {url}")
                reported.add(url)
        elif event["method"] == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], f"request {params['requestId']}")
            if url not in reported:
                problems.append(f"failed to load ({params.get('errorText')}): {url}")
    # (d) Console: no error, whatever its source.
    problems += [f"console error: {message}" for message in console]
    # (e) Width: no code block or printed output scrolls sideways in the 1280-pixel window,
    # and no displayed equation is wider than the column (its end would hide under the number).
    problems += [f"scrolls sideways by {line}" for line in wide]
    problems += [f"equation wider than the column by {eq}" for eq in wide_math]
    problems += [f"table scrolls sideways by {table}" for table in wide_tables]

    if problems:
        report = "\n  ".join(problems)
        pytest.fail(f"{book_page}.html ({page.as_uri()}):\n  {report}", pytrace=False)


# The console check is not vacuous: each of these pages, opened from disk like the book, makes it
# report an error (an uncaught exception, the redeclared `const` that a script written twice into
# a page throws, and an explicit console.error).
BROKEN_SCRIPTS = {
    "uncaught exception": ('throw new Error("canary: uncaught");', "canary: uncaught"),
    "const declared twice": (
        "const CANARY = 1;</script><script>const CANARY = 2;",
        "Identifier 'CANARY' has already been declared",
    ),
    "console.error": ('console.error("canary: console.error");', "canary: console.error"),
}


@pytest.mark.parametrize("case", BROKEN_SCRIPTS)
def test_console_error_is_reported(browser: webdriver.Chrome, tmp_path: Path, case: str) -> None:
    script, expected = BROKEN_SCRIPTS[case]
    page = tmp_path / "broken.html"
    page.write_text(
        f"<!DOCTYPE html><html><head><title>canary</title></head><body><p>canary</p>"
        f"<script>{script}</script></body></html>",
        encoding="utf-8",
    )
    _console_errors(browser)
    browser.get(page.as_uri())
    browser.get("about:blank")
    errors = _console_errors(browser)
    assert any(expected in error for error in errors), f"{case}: not reported in {errors}"


# The width checks are not vacuous: in a box of 300 pixels, an element holding content 600 pixels
# wide is reported and one holding 100 pixels is not. Each template puts its name in the element,
# so the report says which one it found.
WIDE_CANARIES = {
    "code": (
        WIDE_JS,
        '<div class="highlight"><pre style="width: 300px; overflow-x: auto">'
        "{name}{filler}</pre></div>",
    ),
    "equation": (
        WIDE_MATH_JS,
        '<div id="eq-{name}"><mjx-container display="true" style="display: block; '
        'width: 300px; overflow-x: auto"><span style="display: inline-block; '
        'width: {width}px">x</span></mjx-container></div>',
    ),
    "table": (
        WIDE_TABLE_JS,
        '<div style="width: 300px; overflow-x: auto"><table><tr><td>{name}</td>'
        '<td><div style="width: {width}px">x</div></td></tr></table></div>',
    ),
}


@pytest.mark.parametrize("case", WIDE_CANARIES)
def test_wide_element_is_reported(browser: webdriver.Chrome, tmp_path: Path, case: str) -> None:
    script, template = WIDE_CANARIES[case]
    body = "".join(
        template.format(name=name, width=width, filler="w" * (width // 5))
        for name, width in (("wide", 600), ("narrow", 100))
    )
    page = tmp_path / f"{case}.html"
    page.write_text(f"<!DOCTYPE html><html><body>{body}</body></html>", encoding="utf-8")
    browser.get(page.as_uri())
    reported = browser.execute_script(script)
    browser.get("about:blank")
    assert len(reported) == 1 and "wide" in reported[0], f"{case}: {reported}"
