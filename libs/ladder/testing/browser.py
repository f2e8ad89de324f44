"""The dashboard in a real browser, for its browser tests, screenshots and render
benchmark: the machine's own headless Chromium (Debian's ``chromium`` package, never a
browser Playwright would download) driven by Playwright, the dashboard as a process,
and what a page logs as errors.

A page is drawn when ``<body data-ready="true">`` (services/dashboard/static/
dashboard.js sets it once every plot's ``Plotly.react`` promise resolved and the trial
table was rendered), and shown when ``<body data-shown="true">``: the plots on the first
screen are drawn (the rest follow). ``READY_AT`` records both moments in the page's own
clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladder.stack.ports import free_port
from ladder.testing.processes import ServiceProcess
from ladder.testing.waiting import wait_for

CHROMIUM_ENV = "LADDER_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Chromium's own defaults: headless, it draws WebGL (plotly's scattergl) with SwiftShader
# over Vulkan without being told; forcing ANGLE's GL SwiftShader made every plot
# (SVG ones too) draw about twice as slowly.
CHROMIUM_ARGS: tuple[str, ...] = ()
READY = 'body[data-ready="true"]'
# Runs before the page's scripts: window.__ladderShownAt and __ladderReadyAt are
# performance.now() (ms since the navigation started) when <body> first got
# data-shown="true" and data-ready="true"; __ladderShownPlots the ids of the plots drawn
# by the first.
READY_AT = """
new MutationObserver((changes, observer) => {
  const marks = document.body ? document.body.dataset : {};
  if (marks.shown === "true" && window.__ladderShownAt === undefined) {
    window.__ladderShownAt = performance.now();
    window.__ladderShownPlots = [...document.querySelectorAll(".plot")]
      .filter(plot => plot.querySelector(".main-svg")).map(plot => plot.id);
  }
  if (marks.ready === "true") {
    window.__ladderReadyAt = performance.now();
    observer.disconnect();
  }
}).observe(document, {attributes: true, subtree: true,
                      attributeFilter: ["data-shown", "data-ready"]});
"""


class ChromiumMissing(RuntimeError):
    """No Chromium on this machine."""


def chromium_path() -> str:
    """The Chromium to drive: ``$LADDER_CHROMIUM``, else ``chromium`` on the PATH."""
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ChromiumMissing(f"{CHROMIUM_ENV}={explicit} is not an executable")
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing(
        "no Chromium on this machine (looked for "
        f"{', '.join(CHROMIUM_NAMES)} on the PATH): install the Debian packages chromium "
        f"and chromium-driver (`make setup` and .ci/run do), or set {CHROMIUM_ENV}"
    )


def chromium_version(path: str | None = None) -> str:
    """``chromium --version``'s answer, e.g. "Chromium 156.0.8078.114 built on ..."."""
    done = subprocess.run([path or chromium_path(), "--version"], capture_output=True,
                          text=True, timeout=30, check=False)
    return done.stdout.strip()


@contextmanager
def chromium(args: Sequence[str] = ()) -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``; its contexts keep nothing on
    disk), closed on exit."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *args])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def chromium_profile(user_data_dir: Path, args: Sequence[str] = (), **options: Any
                     ) -> Iterator[Any]:
    """A headless Chromium with a profile in ``user_data_dir``, as a person's browser
    has one (a Playwright ``BrowserContext``): its HTTP cache and V8's code cache
    persist, so the third load of a big script skips compiling it. ``options``:
    Playwright's context options (``viewport``, ...)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=path, headless=True,
            args=[*CHROMIUM_ARGS, *args], **options)
        try:
            yield context
        finally:
            context.close()


@dataclass
class PageErrors:
    """Console messages of type error and uncaught exceptions of the pages watched."""

    found: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> Any:
        def on_console(message: Any) -> None:
            if message.type == "error":
                where = message.location or {}
                self.found.append(f"console error on {page.url}: {message.text} "
                                  f"({where.get('url', '')}:{where.get('lineNumber', '')})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.found.append(f"page error on {page.url}: {exc}"))
        return page


def wait_drawn(page: Any, timeout: float = 30.0) -> float:
    """Wait until the page is drawn; the page's own time for it (ms since navigation
    start) when ``READY_AT`` was added to its context, else 0."""
    page.wait_for_selector(READY, state="attached", timeout=timeout * 1000)
    return float(page.evaluate("window.__ladderReadyAt || 0"))


def shown_at(page: Any) -> float:
    """When a drawn page was shown (its first screen drawn), ms since navigation start;
    0 without ``READY_AT``."""
    return float(page.evaluate("window.__ladderShownAt || 0"))


# --- the dashboard as a process ------------------------------------------------------


class DashboardProcess(ServiceProcess):
    """The dashboard's process; ``addr`` is its HTTP server's ``host:port``."""

    @property
    def url(self) -> str:
        return f"http://{self.addr}"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_dashboard(lineage_addr: str, log_dir: Path, env: dict[str, str] | None = None,
                    args: Sequence[str] = (), timeout: float = 60.0) -> DashboardProcess:
    """``python -m services.dashboard`` on a free loopback port reading lineage at
    ``lineage_addr``; returned once ``/healthz`` answers 200."""
    port = free_port()
    log_path = log_dir / f"dashboard-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.dashboard", "--host", "127.0.0.1",
             "--port", str(port), "--lineage-addr", lineage_addr, *args],
            env=env if env is not None else dict(os.environ), stdout=log,
            stderr=subprocess.STDOUT,
        )
    dashboard = DashboardProcess("services.dashboard", f"127.0.0.1:{port}", proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode}:\n"
                                 f"{dashboard.log_text()[-4000:]}")
        return _healthy(dashboard.url)

    try:
        wait_for(up, timeout, "the dashboard's /healthz", every=0.2)
    except BaseException:
        dashboard.stop()
        raise
    return dashboard
