"""``ladder redis-acl``: the Redis users of every service (``ladder.redisacl``) for a
Redis the embedded stack did not start (a managed one, production's).

It prints an ACL file (``aclfile`` in redis.conf, then ``ACL LOAD``), or with
``--setuser`` the same users as ``ACL SETUSER`` commands. Without ``--passwords`` each
password hash is a placeholder; with ``--passwords DIR`` every user's password is
read from ``DIR/<user>`` (made, owner-only, when missing) and its SHA-256 is printed, and
``--urls redis://HOST:PORT/DB`` prints instead the URL each service's LADDER_REDIS_URL
must hold, as ``redis-url-<user>=<url>`` lines (the keys deploy/k8s reads from the
Secret ladder-redis-urls; passwords included: for a secret store, not a terminal log).

``--passwords-from-env`` reads the passwords from ``REDIS_PASSWORD_<USER>`` instead (how
deploy/compose.yaml's init step gets them from the operator's ``.env``), ``--env``
prints such ``.env`` lines (fresh passwords unless ``--passwords`` names a folder), and
``--output FILE`` writes FILE (owner-only) instead of printing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ladder import redisacl
from ladder.config import Settings
from ladder.state.keys import Keys


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic-prefix", default=None,
                        help="the deployment's LADDER_TOPIC_PREFIX (default: the environment's)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--passwords", type=Path, default=None, metavar="DIR",
                        help="a folder of one password file per user (made when missing)")
    source.add_argument("--passwords-from-env", action="store_true",
                        help="each user's password from REDIS_PASSWORD_<USER>")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--setuser", action="store_true", help="print ACL SETUSER commands")
    shown.add_argument("--urls", metavar="REDIS_URL", default=None,
                       help="print each service's LADDER_REDIS_URL on this Redis "
                            "(needs passwords)")
    shown.add_argument("--env", action="store_true",
                       help="print REDIS_PASSWORD_<USER>=... lines for a .env file "
                            "(fresh passwords unless --passwords DIR)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write FILE (owner-only) instead of printing")


def _run(args: argparse.Namespace) -> int:
    prefix = args.topic_prefix
    if prefix is None:
        prefix = Settings.from_env().topics.prefix
    keys = Keys.for_prefix(prefix)
    passwords = _passwords(args)
    if args.env:
        passwords = passwords or {name: redisacl.new_password() for name in redisacl.USER_NAMES}
        lines = [f"{redisacl.password_variable(n)}={passwords[n]}" for n in redisacl.USER_NAMES]
    elif args.urls:
        if passwords is None:
            raise SystemExit("ladder redis-acl: --urls needs --passwords DIR "
                             "or --passwords-from-env")
        lines = [f"redis-url-{name}={redisacl.user_url(args.urls, name, passwords[name])}"
                 for name in redisacl.USER_NAMES]
    else:
        lines = (redisacl.setuser_commands if args.setuser else redisacl.acl_lines)(
            keys, passwords)
    text = "\n".join(lines) + "\n"
    if args.output:
        redisacl.write_private(args.output, text)
    else:
        print(text, end="")
    return 0


def _passwords(args: argparse.Namespace) -> dict[str, str] | None:
    if args.passwords_from_env:
        try:
            return redisacl.passwords_from_env(os.environ)
        except ValueError as bad:
            raise SystemExit(f"ladder redis-acl: {bad}") from None
    return redisacl.ensure_passwords(args.passwords) if args.passwords else None


def register(commands: dict[str, Any], command: Any) -> None:
    commands["redis-acl"] = command(
        "print the Redis ACL users of every service (for a managed Redis)", _arguments, _run
    )
