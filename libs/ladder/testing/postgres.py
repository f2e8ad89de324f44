"""A throwaway PostgreSQL server for tests: ``initdb`` in a fresh temporary folder,
started by ``pg_ctl`` on loopback (TCP on a free port, its Unix socket in that folder),
stopped and removed on exit.

The binaries are found on PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin``
(the newest version); ``PostgresMissing`` says how to install them when neither has
them. PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (Debian's package creates it) and its folder belongs to that user.

Each test gets an empty database cheaply as a schema of its own (``fresh_url``): a
URL whose ``search_path`` is that schema, so every unqualified table lands there.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ladder.stack.ports import LOOPBACK, free_port

INSTALL_HINT = "install PostgreSQL's server (Debian: apt-get install postgresql)"
_DEBIAN_BIN = Path("/usr/lib/postgresql")
_BINARIES = ("initdb", "pg_ctl")
_SUPERUSER = "ladder"
# Throwaway data: durability off, so a test pays no fsync.
_SERVER_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries (or no user to run them as) on this machine."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    candidates = sorted(
        (d for d in _DEBIAN_BIN.glob("*/bin") if all((d / n).exists() for n in _BINARIES)),
        key=_version_key,
    )
    if candidates:
        return candidates[-1]
    raise PostgresMissing(
        f"no initdb / pg_ctl on PATH nor under {_DEBIAN_BIN}/*/bin: {INSTALL_HINT}"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing(
            f"running as root and there is no 'postgres' user to run the server: {INSTALL_HINT}"
        ) from None


def check_available() -> None:
    """Raise PostgresMissing, saying what to install, if no server can be started here."""
    find_bin_dir()
    _run_as()


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str = _SUPERUSER
    database: str = "postgres"

    def url(self, schema: str = "") -> str:
        """A libpq URL of the server's database; with ``schema``, its search_path."""
        url = f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"
        return f"{url}?options={quote(f'-csearch_path={schema}')}" if schema else url

    def fresh_url(self, prefix: str = "t") -> str:
        """The URL of a new, empty schema: an empty database for one test."""
        import psycopg  # only the tests that start a server need the driver

        schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return self.url(schema)


def _command(argv: list[str], owner: pwd.struct_passwd | None, cwd: Path) -> None:
    done = subprocess.run(
        argv,
        cwd=cwd,
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
        env={**os.environ, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


@contextmanager
def postgres_server(attempts: int = 3) -> Iterator[PostgresServer]:
    """A fresh server on a free loopback port, stopped and removed on exit."""
    bin_dir, owner = find_bin_dir(), _run_as()
    folder = Path(tempfile.mkdtemp(prefix="ladder-pg-"))
    try:
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        data, log = folder / "data", folder / "server.log"
        _command(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", _SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            owner, folder,
        )
        for attempt in range(1, attempts + 1):
            port = free_port()
            options = f"-k {folder} -p {port} -h {LOOPBACK} " + " ".join(
                f"-c {setting}" for setting in _SERVER_SETTINGS
            )
            try:
                _command(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                     "-w", "-t", "60", "start"],
                    owner, folder,
                )
                break
            except RuntimeError:
                # Most likely the port was taken in the meantime: another one.
                if attempt == attempts:
                    raise RuntimeError(
                        f"PostgreSQL did not start:\n{log.read_text(errors='replace')}"
                    ) from None
        try:
            yield PostgresServer(LOOPBACK, port)
        finally:
            _command(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                owner, folder,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
