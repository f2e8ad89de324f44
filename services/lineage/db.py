"""Where the lineage store lives, and one connection to it: SQLite or PostgreSQL.

``parse_location`` reads LADDER_LINEAGE_DB / ``--db``:

| value                                         | store                                  |
|-----------------------------------------------|----------------------------------------|
| a path: ``state/lineage.sqlite3``             | SQLite file (embedded default)         |
| ``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``sqlite:///:memory:`` | SQLite |
| ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]`` (or ``postgres://``) | PostgreSQL |

Any other ``scheme:`` is refused with ``LocationError`` naming these forms, so a mistyped
URL stops the service at start-up instead of becoming a file in a folder named after it.

``Database`` is one connection with what the store and its queries need, the same on
both engines. SQL is written once, in the subset both accept: ``?`` placeholders
(PostgreSQL gets ``%s``), ``INSERT ... ON CONFLICT`` for idempotent inserts and
upserts, ``CASE`` instead of two-argument ``MAX``. The schema is written in SQLite's
words and ``ddl`` renders it for PostgreSQL (``_PG_TYPES``): 64-bit integers, double
precision reals, ``bytea`` blobs, byte-order (``"C"``) text so ordering by id is the
same as in SQLite, and an identity column for the surrogate ``id``.

Transactions: ``write()`` is one write transaction, serialized against any other
writer of the same database (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level
advisory lock), so the store's read-check-write of its offsets stays atomic.
``snapshot()`` is one consistent read (SQLite WAL snapshot; PostgreSQL REPEATABLE READ,
READ ONLY). A PostgreSQL connection that broke (server restarted, network) is opened
again by the next transaction; the failed one raised one of ``TRANSIENT`` and its
caller retries it. Schemas in one PostgreSQL database share the writer lock.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

ACCEPTED_FORMS = (
    "a file path or sqlite:///PATH (SQLite), or "
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (PostgreSQL)"
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
# Any constant: every lineage writer of one PostgreSQL database takes this lock.
_PG_WRITER_LOCK = 0x1ADDE5
# How long a PostgreSQL connection attempt may take (unless the URL says otherwise).
PG_CONNECT_TIMEOUT_S = 10


# Errors of a store that cannot be reached or is busy (SQLite locked or I/O; PostgreSQL
# down, restarted, a serialization failure): worth retrying. Each engine raises its own.
TRANSIENT: tuple[type[Exception], ...] = (sqlite3.OperationalError, psycopg.OperationalError)


class LocationError(ValueError):
    """LADDER_LINEAGE_DB / --db names no store this service can open."""


@dataclass(frozen=True)
class Location:
    """A store: ``engine`` is SQLITE (``target`` a path or ``:memory:``) or POSTGRESQL
    (``target`` a libpq URL)."""

    engine: str
    target: str

    def __str__(self) -> str:
        """For logs: a PostgreSQL URL without its password."""
        if self.engine == SQLITE:
            return self.target
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def parse_location(value: str | Path) -> Location:
    """The store ``value`` names; LocationError for anything else (see the module doc)."""
    text = str(value).strip()
    if not text:
        raise LocationError(f"no lineage store given: use {ACCEPTED_FORMS}")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return Location(SQLITE, text)
    name = scheme.group(1).lower()
    if name in _POSTGRES_SCHEMES and text[len(name):].startswith("://"):
        try:
            conninfo_to_dict(text)
        except psycopg.ProgrammingError as exc:
            raise LocationError(
                f"malformed PostgreSQL URL {text!r} ({exc}): use {ACCEPTED_FORMS}"
            ) from None
        return Location(POSTGRESQL, text)
    if name == "sqlite" and text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return Location(SQLITE, text[len("sqlite:///"):])
    raise LocationError(f"unsupported lineage store {text!r}: use {ACCEPTED_FORMS}")


class Row(Protocol):
    """A result row: by position or by column name (sqlite3.Row and ``_PgRow``)."""

    def __getitem__(self, key: int | str) -> Any: ...


class _PgRow:
    """A PostgreSQL row that reads like ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _pg_rows(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], _PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return functools.partial(_PgRow, index)


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # The store's SQL has no literal '?' or '%'.
    return sql.replace("?", "%s")


# SQLite type words -> PostgreSQL (whole upper-case words of the schema's DDL).
_PG_TYPES = {
    "INTEGER PRIMARY KEY": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "INTEGER": "BIGINT",
    "REAL": "DOUBLE PRECISION",
    "BLOB": "BYTEA",
    "TEXT": 'TEXT COLLATE "C"',
}
_PG_TYPE_WORDS = re.compile(r"\b(?:" + "|".join(map(re.escape, _PG_TYPES)) + r")\b")


def render_ddl(statement: str, engine: str) -> str:
    """A schema statement written in SQLite's words, for ``engine``."""
    if engine == SQLITE:
        return statement
    return _PG_TYPE_WORDS.sub(lambda m: _PG_TYPES[m.group(0)], statement)


class Database:
    """One connection to the store. Not thread-safe: one thread uses it at a time."""

    def __init__(self, location: Location, readonly: bool = False) -> None:
        self.location = location
        self.readonly = readonly
        self.engine = location.engine
        self._conn: Any = None
        self._open()

    # -- connections ---------------------------------------------------------

    def _open(self) -> None:
        if self.engine == SQLITE:
            self._conn = _sqlite_connect(self.location.target, self.readonly)
            # Bound once: the SQLite ingest path pays no wrapper per statement.
            self.execute = self._conn.execute
            self.executemany = self._sqlite_executemany
        else:
            self._conn = _pg_connect(self.location.target, self.readonly)

    def _reopen_if_broken(self) -> None:
        if self.engine == POSTGRESQL and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._open()

    def close(self) -> None:
        self._conn.close()

    # -- statements ----------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor (rowcount, fetchone, fetchall, iteration)."""
        return self._conn.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; returns how many rows they changed (an insert that
        ON CONFLICT DO NOTHING skipped changed none)."""
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), list(rows))
            return cursor.rowcount

    def _sqlite_executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, rows).rowcount

    def ddl(self, statement: str) -> str:
        """A schema statement written in SQLite's words, for this engine."""
        return render_ddl(statement, self.engine)

    # -- transactions --------------------------------------------------------

    def write(self) -> AbstractContextManager[Database]:
        """One write transaction, serialized against other writers; rolled back on error."""
        if self.engine == SQLITE:
            return self._transaction(("BEGIN IMMEDIATE", ()))
        return self._transaction(
            ("BEGIN", ()), ("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITER_LOCK,))
        )

    def snapshot(self) -> AbstractContextManager[Database]:
        """One consistent read of several statements."""
        if self.engine == SQLITE:
            return self._transaction(("BEGIN", ()))
        return self._transaction(("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", ()))

    @contextmanager
    def _transaction(self, *begin: tuple[str, tuple[Any, ...]]) -> Iterator[Database]:
        self._reopen_if_broken()
        try:
            for statement, params in begin:
                self._conn.execute(statement, params)
            yield self
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """End a failed transaction, if one is open; the caller raises what failed."""
        if self.engine == SQLITE:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            return
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone, and its transaction with it: reopened next time


def _sqlite_connect(path: str, readonly: bool) -> sqlite3.Connection:
    """Autocommit mode (the store opens transactions itself). ``:memory:`` is a
    private in-memory database (tests)."""
    if path == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    else:
        mode = "ro" if readonly else "rwc"
        uri = f"{Path(path).resolve().as_uri()}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives a process crash; only an OS crash
            # can lose the last commits, and then their offsets go with them.
            conn.execute("PRAGMA synchronous = NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def _pg_connect(url: str, readonly: bool) -> psycopg.Connection[Any]:
    options: dict[str, Any] = {"application_name": "ladder-lineage"}
    if "connect_timeout" not in conninfo_to_dict(url):
        options["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    conn = psycopg.connect(url, autocommit=True, row_factory=_pg_rows, **options)
    if readonly:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    return conn


def open_database(location: Location | str | Path, readonly: bool = False) -> Database:
    """Connect to the store ``location`` names (see ``parse_location``). A SQLite
    file's folder is created when missing (unless read-only)."""
    if not isinstance(location, Location):
        location = parse_location(location)
    if location.engine == SQLITE and location.target != ":memory:" and not readonly:
        Path(location.target).parent.mkdir(parents=True, exist_ok=True)
    return Database(location, readonly)
