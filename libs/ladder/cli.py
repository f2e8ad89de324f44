"""The ``ladder`` command line.

Subcommands live in the ``COMMANDS`` table: each entry names its help text, a function
adding its arguments and a function running it (returning the exit code). To add one,
write the two functions and add a ``Command`` to the table; ``main`` needs no change.
The stack's lifecycle (up, down, status) is here; studies, trials and lineage are in
``cli_query``, ``watch`` in ``cli_watch``, training scripts in ``cli_run``, ``dashboard``
in ``cli_dashboard``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ladder import (
    cli_dashboard,
    cli_kafka,
    cli_query,
    cli_redis,
    cli_run,
    cli_tenant,
    cli_watch,
    config,
)


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state folder (default: $LADDER_STATE_DIR, else ./.ladder)",
    )


def _progress(message: str) -> None:
    # Progress goes to stderr so stdout carries only the result (addresses, JSON).
    print(f"ladder: {message}", file=sys.stderr, flush=True)


# --- up / down / status ----------------------------------------------------------------

_SUMMARY_KEYS = (
    "s3_endpoint",
    "broker_storage",
    "checkpoint_url",
    "kafka_bootstrap",
    "redis_url",
    "suggest_addr",
    "evaluate_addr",
    "lineage_addr",
    "earlystop_health_addr",
    "dashboard_addr",
    "topic_prefix",
)


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    _state_dir_arg(parser)
    parser.add_argument(
        "--no-services",
        action="store_true",
        help="start only the object store, the broker and Redis (for testing one service by hand)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the whole stack to be healthy (default 120)",
    )
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="also leave a supervisor process that restarts a component that dies, on "
        "its address, with back-off (`ladder down` stops it)",
    )
    parser.add_argument(
        "--broker-storage",
        choices=("s3", "memory"),
        default=None,
        help="where the embedded broker keeps its log: s3 (an embedded SeaweedFS object "
        "store: `ladder down && ladder up` keeps every topic) or memory (lost with the "
        "broker; no object store). Default: $LADDER_BROKER_STORAGE, else s3",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="processes of suggest (owned partitions) and of evaluate; clients balance over "
        "them and fail over. Default: $LADDER_REPLICAS, else the running stack's, else 1",
    )
    parser.add_argument("--json", action="store_true", help="print stack.json instead")


def _run_up(args: argparse.Namespace) -> int:
    from ladder.stack import launcher  # Imported here: `ladder --help` stays instant.

    try:
        info = launcher.up(
            args.state_dir,
            services=not args.no_services,
            timeout=args.timeout or launcher.DEFAULT_TIMEOUT,
            log=_progress,
            supervise=args.supervise,
            broker_storage=args.broker_storage,
            replicas=args.replicas,
        )
    except (launcher.StackError, launcher.components.MissingBinary, ValueError) as exc:
        print(f"ladder up: {exc}", file=sys.stderr)
        return 1
    if args.json:
        # stack.json (owner-only) keeps the password; what is printed does not.
        shown_info = {**info, "redis_url": launcher.ports.redacted_url(info.get("redis_url", ""))}
        print(json.dumps(shown_info, indent=2, sort_keys=True))
        return 0
    state = Path(info["state_dir"])
    print(f"Ladder stack {'was already' if info.get('reused') else 'is'} up in {state}")
    if info.get("restarted"):
        print(f"  restarted: {', '.join(info['restarted'])} (on their recorded addresses)")
    for key in _SUMMARY_KEYS:
        if key in info:
            shown = launcher.ports.redacted_url(info[key]) if key == "redis_url" else info[key]
            print(f"  {key:<22} {shown}")
    print(f"  {'logs':<22} {state / 'logs'}")
    if "dashboard_addr" in info:
        print(f"Dashboard: http://{info['dashboard_addr']}/ (`ladder dashboard` opens it)")
    if state != config.state_dir():
        # Clients find the stack through stack.json in their state folder.
        print(f"Point clients at it with: export LADDER_STATE_DIR={state}")
    return 0


def _down_arguments(parser: argparse.ArgumentParser) -> None:
    _state_dir_arg(parser)


def _run_down(args: argparse.Namespace) -> int:
    from ladder.stack import launcher

    stopped = launcher.down(args.state_dir, log=_progress)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _state_dir_arg(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _run_status(args: argparse.Namespace) -> int:
    """Exit 0 if every component is healthy, 1 if some is not, 3 if there is no stack."""
    from ladder.stack import launcher

    rows = launcher.status(args.state_dir)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    elif not rows:
        print(f"no stack in {launcher.Layout.of(args.state_dir).root}")
    else:
        print(f"{'COMPONENT':<11} {'ADDRESS':<28} {'PID':>8}  {'PROCESS':<8} HEALTH")
        for row in rows:
            pid = str(row.pid) if row.pid is not None else "external"
            proc = "running" if row.running else "dead"
            health = "healthy" if row.healthy else "unhealthy"
            if row.detail:
                health += f" ({row.detail})"
            print(f"{row.name:<11} {row.address:<28} {pid:>8}  {proc:<8} {health}")
    if not rows:
        return 3
    return 0 if all(row.healthy for row in rows) else 1


COMMANDS: dict[str, Command] = {
    "up": Command("start the embedded stack (broker, Redis, services)", _up_arguments, _run_up),
    "down": Command("stop what `ladder up` started", _down_arguments, _run_down),
    "status": Command("show each component's process and health", _status_arguments,
                      _run_status),
}
cli_query.register(COMMANDS, Command)
cli_watch.register(COMMANDS, Command)
cli_run.register(COMMANDS, Command)
cli_dashboard.register(COMMANDS, Command)
cli_tenant.register(COMMANDS, Command)
cli_redis.register(COMMANDS, Command)
cli_kafka.register(COMMANDS, Command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladder", description="Ladder HPO service")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every refused connection while a broker is still starting;
        # those are expected and the launcher reports real failures itself.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
