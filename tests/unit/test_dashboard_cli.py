"""``ladder dashboard``: where the URL comes from, what it checks before printing it,
and when it opens a browser (never a text browser in this terminal, never failing
for want of one)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ladder import cli, cli_dashboard


class _Dashboard(BaseHTTPRequestHandler):
    """Answers like the dashboard: /healthz, and one study's progress (s1)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        elif self.path == "/api/studies/s1/progress":
            self._send(200, {"study_id": "s1"})
        else:
            self._send(404, {"error": "study 'other' not found", "status": 404})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(cli_dashboard.URL_ENV, raising=False)
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    urls: list[str] = []

    def fake_open(url: str, new: int = 0) -> bool:
        urls.append(url)
        return True

    monkeypatch.setattr("webbrowser.open", fake_open)
    return urls


def record(state: Path, **values: str) -> None:
    (state / "stack.json").write_text(json.dumps(values))


def test_prints_the_study_page_of_the_recorded_dashboard(
    state: Path, served: str, opened: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record(state, dashboard_addr=served)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli.main(["dashboard", "s1"]) == 0
    assert capsys.readouterr().out.strip() == f"http://{served}/studies/s1"
    assert opened == [f"http://{served}/studies/s1"]


def test_without_a_display_it_only_prints(
    state: Path, served: str, opened: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record(state, dashboard_addr=served)
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "CI"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["dashboard"]) == 0
    assert capsys.readouterr().out.strip() == f"http://{served}/studies"
    assert opened == []


def test_a_browser_that_cannot_open_is_no_error(
    state: Path, served: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record(state, dashboard_addr=served)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("CI", raising=False)

    def broken(url: str, new: int = 0) -> bool:
        import webbrowser

        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr("webbrowser.open", broken)
    assert cli.main(["dashboard"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"http://{served}/studies"
    assert "open the URL above yourself" in captured.err


def test_no_browser_flag_and_ci_never_open(opened: list[str]) -> None:
    assert not cli_dashboard.can_open_browser({"CI": "1", "DISPLAY": ":0"}, "linux")
    assert not cli_dashboard.can_open_browser({}, "linux")
    assert cli_dashboard.can_open_browser({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert cli_dashboard.can_open_browser({}, "darwin")


def test_an_unknown_study_exits_2_with_the_dashboards_message(
    state: Path, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record(state, dashboard_addr=served)
    assert cli.main(["dashboard", "other", "--no-browser"]) == 2
    assert "study 'other' not found" in capsys.readouterr().err


def test_no_stack_no_dashboard_or_none_answering_exit_3(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["dashboard", "--no-browser"]) == 3
    assert "run `ladder up`" in capsys.readouterr().err
    record(state, kafka_bootstrap="127.0.0.1:1")  # a stack from before the dashboard
    assert cli.main(["dashboard", "--no-browser"]) == 3
    assert "runs no dashboard" in capsys.readouterr().err
    monkeypatch.setenv(cli_dashboard.URL_ENV, "http://127.0.0.1:9/")
    assert cli.main(["dashboard", "--no-browser"]) == 3
    assert "no dashboard answers at http://127.0.0.1:9" in capsys.readouterr().err
