"""Redis ACL users: one per service and one for the operator, each allowed only the key
families (``ladder.state.keys.Keys``) and the commands it needs. The one source of the
rules: the embedded stack writes them into its Redis's configuration, ``ladder
redis-acl`` prints them as an ACL file (or ``ACL SETUSER`` commands) for a managed Redis,
and docs/bus-security.md shows them.

| user      | who                                   | keys                                   |
|-----------|---------------------------------------|----------------------------------------|
| suggest   | the suggest service (and replicas)    | studies, trials, partition state       |
| evaluate  | the evaluate service (and replicas)   | trials, leases, outbox, its offsets    |
| earlystop | the early-stop stream processor       | trial hashes, read-only (trial check)  |
| lineage   | the lineage service                   | tokens, tenants, study / trial owners, |
|           |                                       | read-only                              |
| admin     | ``ladder tenant``, ``ladder status``, | every stack's keys (``ladder:*``)      |
|           | ``ladder up`` (the default tenant)    |                                        |

The dashboard reads lineage's query API only: it gets no Redis user. The ``default``
user (a client that sends no user name) is off: nobody can log in as it (its rights
are kept whole for the server's own replay of its AOF, see ``acl_lines``).

Key rights are Redis's ``~`` (read and write) and ``%R~`` (read only); a pattern is a
``Keys`` builder called with ``*`` for each of its arguments, so a key family renamed
in ``Keys`` is renamed here too. Commands: reads, writes, MULTI/EXEC, the scripts
(EVALSHA, and SCRIPT LOAD for redis-py to load them; every command a script runs is
checked against the same rules, its undeclared keys included) and TIME (the scripts'
clock); never what the ``@dangerous`` and ``@admin`` categories hold (FLUSHALL, CONFIG,
DEBUG, ACL, KEYS, ...), nor FUNCTION, SCAN or RANDOMKEY (no service lists keys).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from ladder import signing
from ladder.state.keys import Keys

READ = "R"
READ_WRITE = "RW"

_NEVER = ("-@dangerous", "-@admin", "-function", "-scan", "-randomkey")
# What every user may run besides its keys' commands: connecting (AUTH, HELLO, PING,
# SELECT, CLIENT SETNAME), MULTI/EXEC/WATCH.
_CONNECT = ("+@connection", "+@transaction")
READER = ("-@all", "+@read", *_CONNECT, *_NEVER)
WRITER = ("-@all", "+@read", "+@write", *_CONNECT, "+evalsha", "+eval", "+script|load",
          "+script|exists", "+time", *_NEVER)


@dataclass(frozen=True)
class AclUser:
    """A Redis user: its name, its rights on each ``Keys`` family (builder name ->
    READ or READ_WRITE), its command rules (Redis ACL syntax) and whether its key
    patterns span every key root (the operator's: any topic prefix) or one stack's."""

    name: str
    keys: Mapping[str, str]
    commands: tuple[str, ...]
    every_root: bool = False
    extra: tuple[str, ...] = ()  # command rules after ``commands``


_TRIAL_LIFECYCLE = {
    "study": READ_WRITE, "pending": READ_WRITE, "resumable": READ_WRITE,
    "paused": READ_WRITE, "trial": READ_WRITE, "attempts": READ_WRITE,
    "decision": READ_WRITE, "trial_outbox": READ_WRITE, "leases": READ_WRITE,
    "deadlines": READ_WRITE, "outbox": READ_WRITE,
}
_AUTH = {"tenants": READ, "tokens": READ}
# RequestWork's resource holds (ladder.state.holds): placed by suggest, released by the
# transitions that end a trial (either service).
_HOLDS = {"sched_tenant": READ_WRITE, "sched_node": READ_WRITE,
          "sched_node_trials": READ_WRITE, "sched_nodes": READ_WRITE}

USERS: tuple[AclUser, ...] = (
    AclUser("suggest", {
        **_TRIAL_LIFECYCLE, **_AUTH, **_HOLDS, "studies": READ_WRITE, "tenant_studies": READ_WRITE,
        "draws": READ_WRITE, "suggest_members": READ_WRITE, "partition_lease": READ_WRITE,
        "partition_fence": READ_WRITE, "partition_ready": READ_WRITE,
        "partition_taken": READ_WRITE,
        "sched_reserved": READ_WRITE,  # RequestWork's node reservations (suggest only)
    }, WRITER),
    AclUser("evaluate", {
        **_TRIAL_LIFECYCLE, **_AUTH, **_HOLDS, "tenant_studies": READ, "last_sweep": READ_WRITE,
        "offsets": READ_WRITE,
    }, WRITER),
    AclUser("earlystop", {"trial": READ}, READER),
    AclUser("lineage", {**_AUTH, "study": READ, "trial": READ}, READER),
    AclUser("admin", {}, WRITER, every_root=True, extra=("+acl|log", "+acl|whoami")),
)
USER_NAMES = tuple(user.name for user in USERS)
SERVICE_USERS = tuple(name for name in USER_NAMES if name != "admin")
ADMIN = "admin"


def user(name: str) -> AclUser:
    found = next((u for u in USERS if u.name == name), None)
    if found is None:
        raise KeyError(f"no Redis user {name!r} (users: {', '.join(USER_NAMES)})")
    return found


def builders() -> tuple[str, ...]:
    """Every key family ``Keys`` builds (its public properties and methods)."""
    return tuple(
        name for name, member in vars(Keys).items()
        if not name.startswith("_") and name not in ("root", "for_prefix")
        and (isinstance(member, property) or inspect.isfunction(member))
    )


def key_pattern(keys: Keys, builder: str) -> str:
    """The glob of family ``builder``: the builder called with ``*`` for every argument."""
    member = getattr(type(keys), builder)
    if isinstance(member, property):
        return str(getattr(keys, builder))
    arity = len(inspect.signature(member).parameters) - 1  # less self
    return str(getattr(keys, builder)(*["*"] * arity))


def key_rules(acl: AclUser, keys: Keys) -> list[str]:
    """``acl``'s key rules: ``~pattern`` (read and write) or ``%R~pattern`` (read), a
    pattern another of the same or wider right already covers left out."""
    if acl.every_root:
        return [f"~{Keys.for_prefix('').root}*"]
    grants: dict[str, str] = {}
    for builder, right in acl.keys.items():
        pattern = key_pattern(keys, builder)
        if grants.get(pattern) != READ_WRITE:
            grants[pattern] = right
    kept = [
        (pattern, right) for pattern, right in grants.items()
        if not any(other != pattern and fnmatchcase(pattern, other)
                   and (right == READ or grants[other] == READ_WRITE)
                   for other in grants)
    ]
    return [f"~{p}" if right == READ_WRITE else f"%R~{p}" for p, right in sorted(kept)]


def rules(acl: AclUser, keys: Keys) -> list[str]:
    """Everything after ``user <name> on <password>``: keys, no channels, commands."""
    return [*key_rules(acl, keys), "resetchannels", *acl.commands, *acl.extra]


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_lines(keys: Keys, passwords: Mapping[str, str] | None = None) -> list[str]:
    """The users as ACL file lines, passwords as SHA-256 (``#<hex>``; with no
    ``passwords``, a placeholder naming whose hash goes there), the default user off."""
    # Off: no client can log in as ``default``. Its rights stay whole: Redis 7.0 replays
    # the AOF's MULTI/EXEC blocks (what every script wrote) as ``default`` and drops
    # each command it may not run, so a restart would lose every scripted write.
    lines = ["user default off resetchannels ~* &* +@all"]
    for acl in USERS:
        secret = (f"#{password_hash(passwords[acl.name])}" if passwords
                  else f"#<sha256-of-{acl.name}-password>")
        lines.append(" ".join(["user", acl.name, "reset", "on", secret, *rules(acl, keys)]))
    return lines


def setuser_commands(keys: Keys, passwords: Mapping[str, str] | None = None) -> list[str]:
    """The same users as ``ACL SETUSER`` commands (for a Redis whose ACL file cannot be
    edited: run them as its administrator, then ``ACL SAVE`` where there is a file)."""
    default, *users = acl_lines(keys, passwords)
    # ``default`` last: the administrator running them may be logged in as it.
    return [line.replace("user ", "ACL SETUSER ", 1) for line in (*users, default)]


def new_password() -> str:
    """A fresh password: 192 random bits as hex (safe in a URL unquoted)."""
    import secrets

    return secrets.token_hex(24)


def ensure_passwords(folder: Path) -> dict[str, str]:
    """Each user's password, one owner-only file per user in ``folder`` (made with a
    fresh 192-bit secret the first time it is asked for)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        name: signing.ensure_secret_file(folder / name, lambda: new_password() + "\n")
        for name in USER_NAMES
    }


# What a password handed in by environment may hold: deploy/compose.yaml puts it in a
# URL without quoting it (``redis://suggest:${REDIS_PASSWORD_SUGGEST}@redis:6379/0``).
_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
MIN_PASSWORD_LENGTH = 16


def password_variable(name: str) -> str:
    """The environment variable that holds user ``name``'s password where a deployment
    hands the passwords in by environment (deploy/compose.yaml's ``.env``)."""
    return f"REDIS_PASSWORD_{name.upper()}"


def passwords_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Every user's password from ``password_variable(user)``; ValueError naming each
    variable that is missing, too short or holds a character a URL would need quoted."""
    found = {name: environ.get(password_variable(name), "").strip() for name in USER_NAMES}
    problems = [
        f"{password_variable(name)} is "
        + ("not set" if not value else
           f"shorter than {MIN_PASSWORD_LENGTH} characters" if len(value) < MIN_PASSWORD_LENGTH
           else "not made of letters, digits and -._~ only")
        for name, value in found.items()
        if len(value) < MIN_PASSWORD_LENGTH or not set(value) <= _URL_SAFE
    ]
    if problems:
        raise ValueError("Redis passwords: " + "; ".join(problems))
    return found


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, owner-only from its first byte."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def write_server_config(path: Path, keys: Keys, passwords: Mapping[str, str]) -> None:
    """The Redis configuration file holding the users (``acl_lines``), owner-only; the
    embedded stack writes it at every start of its Redis, so the rules are the code's."""
    write_private(path, "".join(f"{line}\n" for line in acl_lines(keys, passwords)))


def user_url(url: str, name: str, password: str) -> str:
    """``url`` (a redis:// URL) logged in as ``name`` with ``password``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(name)}:{quote(password, safe='')}@{host}"))


def service_url(stack_url: str, service: str, passwords: Mapping[str, str] | None) -> str:
    """The URL process ``service`` is given on the Redis whose operator URL is
    ``stack_url``: its own user's; no user at all for a process that has none (the
    dashboard). ``stack_url`` itself when the Redis has none of these users: an external
    one (``passwords`` None), or one started before it had users (a URL without a user
    name: a stack repaired without restarting its Redis gets them with its next start)."""
    if passwords is None or not urlsplit(stack_url).username:
        return stack_url
    if service not in SERVICE_USERS:
        return anonymous_url(stack_url)
    return user_url(stack_url, service, passwords[service])


def anonymous_url(url: str) -> str:
    """``url`` without user or password (what a process that needs no Redis is given)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
