"""Query subcommands of the ``ladder`` CLI: studies, summaries, lineage.

Each prints JSON (protobuf's canonical JSON mapping) so the output can be piped
into ``jq``; a gRPC error prints its status and message and exits 1. Addresses come
from the usual config (env vars, else the state folder's ``stack.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def _client(args: argparse.Namespace):  # noqa: ANN202 - LadderClient, imported lazily
    if args.state_dir:
        os.environ["LADDER_STATE_DIR"] = str(args.state_dir)
    from ladder.client import LadderClient

    return LadderClient(retry_timeout=2.0)


def _print(message: Message | list[Message]) -> None:
    if isinstance(message, list):
        data: object = [MessageToDict(m, preserving_proto_field_name=True) for m in message]
    else:
        data = MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(data, indent=2, sort_keys=True))


def _query(run: Callable[[object, argparse.Namespace], Message | list[Message]]):
    def command(args: argparse.Namespace) -> int:
        client = _client(args)
        try:
            _print(run(client, args))
        except grpc.RpcError as err:
            print(f"ladder: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        finally:
            client.close()
        return 0

    return command


def _arguments(positional: str | None) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state-dir", type=Path, default=None,
            help="state folder of the stack to query (default: LADDER_STATE_DIR or ./.ladder)",
        )
        if positional:
            parser.add_argument(positional)

    return add


def _best(client, args: argparse.Namespace) -> Message:  # noqa: ANN001
    best = client.best(args.study_id)
    if best is None:
        raise SystemExit(f"ladder: study {args.study_id!r} has no completed trial yet")
    return best


QUERIES = {
    "studies": ("list the studies", None, lambda c, a: c.list_studies()),
    "study": ("show one study's config", "study_id", lambda c, a: c.get_study(a.study_id)),
    "summary": ("a study's trial counts and best value", "study_id",
                lambda c, a: c.summary(a.study_id)),
    "trials": ("list a study's trials", "study_id", lambda c, a: c.list_trials(a.study_id)),
    "best": ("the best trial of a study with its lineage", "study_id", _best),
    "lineage": ("a trial's full lineage", "trial_id", lambda c, a: c.lineage(a.trial_id)),
}


def register(commands: dict, command_type: type) -> None:
    for name, (help_text, positional, run) in QUERIES.items():
        commands[name] = command_type(help_text, _arguments(positional), _query(run))
