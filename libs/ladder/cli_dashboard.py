"""``ladder dashboard [STUDY_ID]``: the URL of the stack's dashboard (the studies page,
or one study's page), opened in a web browser when one can be.

The address is LADDER_DASHBOARD_URL, else the one ``ladder up`` recorded in the state
folder's stack.json (``dashboard_addr``). The dashboard is asked first (``GET
/healthz`` within ``PROBE_SECONDS``): exit 3 when none answers; with a STUDY_ID the
study must exist (exit 2 otherwise). The URL is printed either way; a browser is
opened only where a graphical one can be (macOS, Windows, or a desktop session with
DISPLAY / WAYLAND_DISPLAY; not over SSH without one, not in CI) and never with
``--no-browser``. Not finding or starting a browser is no error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ladder import config
from ladder.cli_query import EXIT_ERROR, EXIT_NO_STACK, EXIT_NOT_FOUND, CommandFailed, runs

PROBE_SECONDS = 2.0
URL_ENV = "LADDER_DASHBOARD_URL"


def dashboard_url(state_dir: Path | None) -> str:
    """The dashboard's base URL (no trailing slash); CommandFailed when unknown."""
    given = os.environ.get(URL_ENV)
    if given:
        return given.rstrip("/")
    stack = config.stack_values(state_dir)
    where = config.stack_file(state_dir)
    if not stack:
        raise CommandFailed(f"no Ladder stack in {where.parent}: run `ladder up` (or set "
                            f"{URL_ENV})", EXIT_NO_STACK)
    addr = stack.get("dashboard_addr")
    if not addr:
        raise CommandFailed(f"the stack in {where.parent} runs no dashboard (started before "
                            "it had one, or with --no-services): `ladder down && ladder up`",
                            EXIT_NO_STACK)
    return f"http://{addr}"


def _get(url: str) -> tuple[int, Any]:
    """The status and JSON body of ``GET url``; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None
    except (OSError, ValueError):
        return 0, None


def page_url(base: str, study_id: str | None) -> str:
    """The page to open: one study's, else the studies page; checked with the
    dashboard."""
    status, _ = _get(f"{base}/healthz")
    if status != 200:
        raise CommandFailed(f"no dashboard answers at {base}: run `ladder up` (`ladder "
                            "status` shows its address)", EXIT_NO_STACK)
    if not study_id:
        return f"{base}/studies"
    quoted = quote(study_id, safe="")
    status, body = _get(f"{base}/api/studies/{quoted}/progress")
    if status != 200:
        message = (body or {}).get("error") if isinstance(body, dict) else None
        code = EXIT_NOT_FOUND if status == 404 else EXIT_ERROR
        raise CommandFailed(message or f"the dashboard answered HTTP {status}", code)
    return f"{base}/studies/{quoted}"


def can_open_browser(environ: dict[str, str] | os._Environ[str] = os.environ,
                     platform: str = sys.platform) -> bool:
    """Whether a graphical browser can be opened here. Without a display, Python's
    webbrowser would start a text browser in this terminal (lynx, w3m): never that."""
    if environ.get("CI"):
        return False
    if platform in ("darwin", "win32"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def open_in_browser(url: str) -> bool:
    """Try to open ``url``; False when no browser would."""
    import webbrowser

    try:
        return bool(webbrowser.open(url, new=2))
    except (webbrowser.Error, OSError):
        return False


def dashboard(args: argparse.Namespace) -> None:
    url = page_url(dashboard_url(args.state_dir), args.study_id)
    print(url, flush=True)
    if args.no_browser or not can_open_browser():
        return
    if not open_in_browser(url):
        print("ladder: no web browser could be opened; open the URL above yourself",
              file=sys.stderr)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", nargs="?", default=None,
                        help="open this study's page (default: the studies page)")
    parser.add_argument("--no-browser", action="store_true",
                        help="only print the URL")
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="state folder of the stack (default: LADDER_STATE_DIR or ./.ladder)",
    )


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add ``dashboard`` to the CLI's table."""
    commands["dashboard"] = command_type(
        "print the dashboard's URL (a study's page with STUDY_ID) and open it in a browser",
        _arguments, runs(dashboard),
    )
