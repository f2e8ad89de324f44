"""``ladder tenant``: the admin commands for tenants and their API tokens.

    ladder tenant create NAME [--admin]   a tenant and its first token
    ladder tenant token NAME              another token for NAME
    ladder tenant revoke NAME [--token ID]  one token of NAME, or all of them
    ladder tenant quota NAME [--max-studies N] [--max-trials-running N] [--max-gpus N]
                             [--weight W]
                                          NAME's quotas (0 = unbounded; ladder.quotas)
    ladder tenant list                    tenants, admin flag, quotas and use, token ids

They write the stack's Redis directly (``ladder.tenancy.TenantStore``; reaching that
Redis is the admin's privilege): a token is printed once, alone on stdout (so
``TOKEN=$(ladder tenant create team-a)`` works), and only its digest is stored.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ladder import cli_query, quotas
from ladder.cli_query import CommandFailed
from ladder.errors import LadderError
from ladder.state.holds import HoldStore
from ladder.state.keys import Keys


def _store() -> Any:
    import redis

    from ladder.config import Settings
    from ladder.state.keys import Keys
    from ladder.tenancy import TenantStore

    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CommandFailed(
            f"no Redis at {settings.redis_url}: run `ladder up` or set LADDER_REDIS_URL ({exc})",
            cli_query.EXIT_NO_STACK,
        ) from exc
    return TenantStore(client, Keys.for_prefix(settings.topics.prefix).root)


def _issued(issued: Any, what: str) -> None:
    print(f"{what} token {issued.token_id} for tenant {issued.tenant!r} "
          "(shown once; send it as LADDER_TOKEN):", file=sys.stderr)
    print(issued.token, flush=True)


def _used(used: int, quota: int) -> str:
    """``2/5``: in use / quota (``-``: unbounded)."""
    return f"{used}/{quota or '-'}"


def run_tenant(args: argparse.Namespace) -> int:
    if args.state_dir:
        os.environ["LADDER_STATE_DIR"] = str(args.state_dir)
    store = _store()
    try:
        if args.action == "create":
            _issued(store.create(args.name, admin=args.admin), "created; its")
        elif args.action == "token":
            _issued(store.issue(args.name), "new")
        elif args.action == "quota":
            quota = store.set_quota(args.name, args.max_studies, args.max_trials_running,
                                    args.max_gpus, args.weight)
            print(f"tenant {args.name!r}: max_studies {quota.max_studies or 'unbounded'}, "
                  f"max_trials_running {quota.max_trials_running or 'unbounded'}, "
                  f"max_gpus {quota.max_gpus or 'unbounded'}, weight {quota.weight:g}")
        elif args.action == "revoke":
            revoked = store.revoke(args.name, args.token)
            print(f"revoked {len(revoked)} token(s) of {args.name!r}: {' '.join(revoked)}")
        else:
            # STUDIES / TRIALS / GPUS: in use / quota ('-': unbounded); GPUS: held by
            # RequestWork trials (ladder.state.holds).
            print(f"{'TENANT':<24} {'ADMIN':<6} {'STUDIES':<9} {'TRIALS':<9} {'GPUS':<9} "
                  f"{'WEIGHT':<7} TOKENS")
            tenants = store.list()
            held = HoldStore(store.r, Keys(store.root)).usage(t.name for t in tenants)
            for tenant in tenants:
                use = quotas.usage(store.r, Keys(store.root), tenant.name)
                print(f"{tenant.name:<24} {'yes' if tenant.admin else 'no':<6} "
                      f"{_used(use.live_studies, tenant.quota.max_studies):<9} "
                      f"{_used(use.trials_out, tenant.quota.max_trials_running):<9} "
                      f"{_used(held[tenant.name].gpus, tenant.quota.max_gpus):<9} "
                      f"{tenant.quota.weight:<7g} {' '.join(tenant.token_ids) or '-'}")
    except LadderError as exc:
        raise CommandFailed(str(exc)) from exc
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="state folder of the stack (default: $LADDER_STATE_DIR, else ./.ladder)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a tenant and print its first token")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true",
                        help="an admin sees and touches every tenant's studies")
    token = actions.add_parser("token", help="print a new token for a tenant")
    token.add_argument("name")
    revoke = actions.add_parser("revoke", help="revoke a tenant's tokens (all, or --token)")
    revoke.add_argument("name")
    revoke.add_argument("--token", default=None, metavar="ID",
                        help="the token id to revoke (as `ladder tenant list` shows)")
    quota = actions.add_parser("quota", help="set a tenant's quotas (0 = unbounded)")
    quota.add_argument("name")
    quota.add_argument("--max-studies", type=int, default=None, metavar="N",
                       help="live studies (neither completed nor cancelled) at most")
    quota.add_argument("--max-trials-running", type=int, default=None, metavar="N",
                       help="trials out (suggested or running) across its studies at most")
    quota.add_argument("--max-gpus", type=int, default=None, metavar="N",
                       help="GPUs its RequestWork trials hold at once at most")
    quota.add_argument("--weight", type=float, default=None, metavar="W",
                       help="its weight in the scheduler's fair share (default 1)")
    actions.add_parser("list", help="list tenants, their quotas and use, and token ids")


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add ``tenant`` to the CLI's table."""
    commands["tenant"] = command_type(
        "manage tenants and their API tokens (admin)", _arguments,
        cli_query.runs(run_tenant),
    )
