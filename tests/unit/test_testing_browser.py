"""ladder.testing.browser finds the machine's Chromium, or says what to install."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ladder.testing.browser import CHROMIUM_ENV, ChromiumMissing, chromium_path


def _executable(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\necho Chromium 1.2.3\n")
    path.chmod(0o755)
    return path


def test_chromium_on_the_path_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _executable(tmp_path, "chromium")
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert chromium_path() == str(found)


def test_the_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(tmp_path, "chromium")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chosen = _executable(elsewhere, "my-chrome")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(CHROMIUM_ENV, str(chosen))
    assert chromium_path() == str(chosen)


def test_no_chromium_names_the_packages_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder
    with pytest.raises(ChromiumMissing, match="chromium and chromium-driver"):
        chromium_path()


def test_a_variable_naming_no_executable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "not-a-browser"
    text.write_text("")
    assert not os.access(text, os.X_OK)
    monkeypatch.setenv(CHROMIUM_ENV, str(text))
    with pytest.raises(ChromiumMissing, match=f"{CHROMIUM_ENV}=.*not an executable"):
        chromium_path()
