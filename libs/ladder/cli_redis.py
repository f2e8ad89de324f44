"""``ladder redis-acl``: the Redis users of every service (``ladder.redisacl``) for a
Redis the embedded stack did not start (a managed one, production's).

It prints an ACL file (``aclfile`` in redis.conf, then ``ACL LOAD``), or with
``--setuser`` the same users as ``ACL SETUSER`` commands. Without ``--passwords`` each
password hash is a placeholder; with ``--passwords DIR`` every user's password is
read from ``DIR/<user>`` (made, owner-only, when missing) and its SHA-256 is printed, and
``--urls redis://HOST:PORT/DB`` prints instead the URL each service's LADDER_REDIS_URL
must hold, as ``redis-url-<user>=<url>`` lines (the keys deploy/k8s reads from the
Secret ladder-secrets; passwords included: for a secret store, not a terminal log).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ladder import redisacl
from ladder.config import Settings
from ladder.state.keys import Keys


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic-prefix", default=None,
                        help="the deployment's LADDER_TOPIC_PREFIX (default: the environment's)")
    parser.add_argument("--passwords", type=Path, default=None, metavar="DIR",
                        help="a folder of one password file per user (made when missing)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--setuser", action="store_true", help="print ACL SETUSER commands")
    shown.add_argument("--urls", metavar="REDIS_URL", default=None,
                       help="print each service's LADDER_REDIS_URL on this Redis "
                            "(needs --passwords)")


def _run(args: argparse.Namespace) -> int:
    prefix = args.topic_prefix
    if prefix is None:
        prefix = Settings.from_env().topics.prefix
    keys = Keys.for_prefix(prefix)
    passwords = redisacl.ensure_passwords(args.passwords) if args.passwords else None
    if args.urls:
        if passwords is None:
            raise SystemExit("ladder redis-acl: --urls needs --passwords DIR")
        for name in redisacl.USER_NAMES:
            print(f"redis-url-{name}={redisacl.user_url(args.urls, name, passwords[name])}")
        return 0
    lines = (redisacl.setuser_commands if args.setuser else redisacl.acl_lines)(keys, passwords)
    print("\n".join(lines))
    return 0


def register(commands: dict[str, Any], command: Any) -> None:
    commands["redis-acl"] = command(
        "print the Redis ACL users of every service (for a managed Redis)", _arguments, _run
    )
