"""The ``ladder`` commands that talk to a running stack: studies, trials, lineage.

| command                            | prints                                            |
|------------------------------------|---------------------------------------------------|
| ``study create FILE.yaml``         | the new study (the file: ``ladder.cli_study_file``) |
| ``study list`` (or ``studies``)    | one line per study                                |
| ``study show ID``                  | the study's config and state                      |
| ``study stop|pause|resume|cancel ID`` | what the study does now                        |
| ``study update ID --parallelism N --max-trials N`` | the study's new limits (also     |
|   ``--wall-clock S --trial-hours H --gpu-hours H`` | budgets: the circuit breaker)    |
| ``trial show ID`` / ``trial stop ID --reason WHY`` | the trial (state, stop reason)   |
| ``summary ID``                     | its trial counts and best value                   |
| ``trials ID --format table|csv|json`` | every trial with its value and params          |
| ``best ID``                        | the best completed trial with its lineage         |
| ``lineage TRIAL``                  | params, seed, attempts, curve, decisions          |
| ``watch ID`` (``ladder.cli_watch``) | live progress until the study is completed       |

Tables for people by default; ``--json`` prints plain JSON for scripts
(``ladder.cli_format.plain``). Addresses come from the usual config (env vars, else the
state folder's ``stack.json``); before any call, the services a command needs are
probed for at most ``PROBE_SECONDS``, so a missing stack is reported at once, naming
the address and the fix, instead of after the SDK's retries.

Exit codes: 0 done, 1 refused or failed (message on stderr), 2 an unknown study or
trial (NOT_FOUND), 3 no stack at the configured address.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from ladder import channels
from ladder import cli_format as fmt

if TYPE_CHECKING:
    from ladder.client import LadderClient
    from ladder.v1 import lineage_pb2, study_pb2

EXIT_ERROR = 1
EXIT_NOT_FOUND = 2
EXIT_NO_STACK = 3
PROBE_SECONDS = 1.0
# What a call may spend retrying UNAVAILABLE once the probe found the service: a person
# waits at a prompt, unlike a worker (LADDER_CLIENT_RETRY_S).
CALL_RETRY_SECONDS = 2.0
LINEAGE_FETCHERS = 8

SUGGEST = "suggest_addr"
EVALUATE = "evaluate_addr"
LINEAGE = "lineage_addr"
ADDRESS_ENV = {
    SUGGEST: "LADDER_SUGGEST_ADDR",
    EVALUATE: "LADDER_EVALUATE_ADDR",
    LINEAGE: "LADDER_LINEAGE_ADDR",
}


class CommandFailed(Exception):
    """Ends a command with ``exit_code``, its message on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- reaching the stack ----------------------------------------------------------------


def answers(addr: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a gRPC server answers at ``addr`` within ``timeout`` seconds (the
    standard health check; any answer, even an error status, is a server)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channels.probe_channel(addr) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            return err.code() not in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
            )
    return True


def no_stack(addr: str, field: str) -> CommandFailed:
    return CommandFailed(
        f"no Ladder stack at {addr}: run `ladder up` or set {ADDRESS_ENV[field]}",
        EXIT_NO_STACK,
    )


@contextmanager
def connected(args: argparse.Namespace, needs: Sequence[str]) -> Iterator[LadderClient]:
    """A client of the stack ``args`` point at, once every service in ``needs``
    (Settings fields) answers; ``no_stack`` otherwise."""
    if getattr(args, "state_dir", None):
        os.environ["LADDER_STATE_DIR"] = str(args.state_dir)
    from ladder.client import LadderClient  # imported here: `ladder --help` stays instant

    client = LadderClient(retry_timeout=CALL_RETRY_SECONDS)
    try:
        for field in needs:
            addr = getattr(client.settings, field)
            if not answers(addr):
                raise no_stack(addr, field)
        yield client
    finally:
        client.close()


def existing_study(client: LadderClient, study_id: str) -> study_pb2.Study:
    try:
        return client.get_study(study_id)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise CommandFailed(
                f"NOT_FOUND: study {study_id!r} does not exist (`ladder study list` shows "
                "the studies)",
                EXIT_NOT_FOUND,
            ) from err
        raise


def unless_not_found(call: Callable[[], Any], default: Any) -> Any:
    """``call()``, or ``default`` when lineage has not recorded the object yet (it
    reads the topics, so it trails the suggest service by up to a second)."""
    try:
        return call()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return default
        raise


def runs(action: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """``action`` with its failures turned into a message on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from ladder.cli_study_file import StudyFileError

        try:
            return action(args) or 0
        except CommandFailed as exc:
            message, code = str(exc), exc.exit_code
        except StudyFileError as exc:
            message, code = str(exc), EXIT_ERROR
        except grpc.RpcError as err:
            message = f"{err.code().name}: {err.details()}"
            code = EXIT_NOT_FOUND if err.code() == grpc.StatusCode.NOT_FOUND else EXIT_ERROR
        except KeyboardInterrupt:
            return 130
        print(f"ladder: {message}", file=sys.stderr)
        return code

    return run


def emit(text: str) -> None:
    print(text, flush=True)


def emit_json(data: Any) -> None:
    emit(fmt.dumps(data))


# --- studies ---------------------------------------------------------------------------


def study_create(args: argparse.Namespace) -> None:
    from ladder import cli_study_file

    config, file_id = cli_study_file.load(args.file)  # before connecting: no stack needed
    study_id = args.id or file_id
    with connected(args, (SUGGEST,)) as client:
        existed = bool(study_id) and unless_not_found(
            lambda: client.get_study(study_id), None
        ) is not None
        study = client.create_study(config, study_id or None)
    if args.json:
        emit_json(fmt.plain(study))
        return
    emit(f"study {study.study_id} {'already existed' if existed else 'created'}\n\n"
         + fmt.study_view(study))


def study_list(args: argparse.Namespace) -> None:
    with connected(args, (SUGGEST,)) as client:
        studies = client.list_studies()
    if args.json:
        emit_json([fmt.plain(s) for s in studies])
    else:
        emit(fmt.studies_table(studies))


def study_show(args: argparse.Namespace) -> None:
    with connected(args, (SUGGEST,)) as client:
        study = existing_study(client, args.study_id)
    if args.json:
        emit_json(fmt.plain(study))
    else:
        emit(fmt.study_view(study))


def _stop_text(study: study_pb2.Study, args: argparse.Namespace) -> str:
    running = ("running trials are told to STOP" if args.stop_running
               else "running trials finish")
    return (f"study {study.study_id} stopped: no new trials are handed out ({running}); "
            f"`ladder study resume {study.study_id}` undoes it")


# ``ladder study ACTION ID``: (the client call, what it prints).
_LIFECYCLE: dict[str, tuple[Callable[[LadderClient, argparse.Namespace], study_pb2.Study],
                            Callable[[study_pb2.Study, argparse.Namespace], str]]] = {
    "stop": (
        lambda client, args: client.stop_study(args.study_id, args.stop_running, args.reason),
        _stop_text,
    ),
    "resume": (
        lambda client, args: client.resume_study(args.study_id),
        lambda study, _args: (f"study {study.study_id} resumed: new trials are handed out again "
                              f"({fmt.budget(study)} suggested)"),
    ),
    "pause": (
        lambda client, args: client.pause_study(args.study_id),
        lambda study, _args: (f"study {study.study_id} paused: no trial is handed out, "
                              "running trials checkpoint and wait; `ladder study resume "
                              f"{study.study_id}` resumes them"),
    ),
    "cancel": (
        lambda client, args: client.cancel_study(args.study_id, args.reason),
        lambda study, _args: (f"study {study.study_id} cancelled: no trial is handed out, "
                              "unfinished trials are stopped"),
    ),
    "update": (
        lambda client, args: client.update_study(args.study_id, args.max_trials,
                                                 args.parallelism, args.wall_clock,
                                                 args.trial_hours, args.gpu_hours),
        lambda study, _args: (
            f"study {study.study_id} updated: max_trials "
            f"{study.config.max_trials or 'unbounded'}, max_parallel_trials "
            f"{study.config.max_parallel_trials or 'unbounded'} ({fmt.budget(study)} "
            "suggested)"),
    ),
}


def _lifecycle(action: str) -> Callable[[argparse.Namespace], None]:
    call, text = _LIFECYCLE[action]

    def change(args: argparse.Namespace) -> None:
        with connected(args, (SUGGEST,)) as client:
            existing_study(client, args.study_id)
            study = call(client, args)
        emit_json(fmt.plain(study)) if args.json else emit(text(study, args))

    return change


def summary(args: argparse.Namespace) -> None:
    from ladder.v1 import lineage_pb2

    with connected(args, (SUGGEST, LINEAGE)) as client:
        study = existing_study(client, args.study_id)
        counts = unless_not_found(
            lambda: client.summary(args.study_id),
            lineage_pb2.StudySummary(study_id=args.study_id),
        )
    if args.json:
        emit_json(fmt.plain(counts))
    else:
        emit(fmt.summary_view(study, counts))


# --- trials ----------------------------------------------------------------------------


def trial_params(
    client: LadderClient, summaries: Sequence[lineage_pb2.TrialSummary]
) -> dict[str, Mapping[str, Any]]:
    """Each trial's params: from its summary when the lineage service sends them
    there, else from each trial's lineage, fetched ``LINEAGE_FETCHERS`` at a time."""
    from ladder.params import params_to_dict

    if summaries and "params" in summaries[0].DESCRIPTOR.fields_by_name:
        return {s.trial_id: params_to_dict(s.params) for s in summaries}  # type: ignore[attr-defined]

    def fetch(trial_id: str) -> Mapping[str, Any]:
        lineage = unless_not_found(lambda: client.lineage(trial_id), None)
        return params_to_dict(lineage.params) if lineage is not None else {}

    with ThreadPoolExecutor(LINEAGE_FETCHERS) as pool:
        ids = [s.trial_id for s in summaries]
        return dict(zip(ids, pool.map(fetch, ids), strict=True))


def trials(args: argparse.Namespace) -> None:
    form = "json" if args.json else args.format
    with connected(args, (SUGGEST, LINEAGE)) as client:
        study = existing_study(client, args.study_id)
        summaries = unless_not_found(lambda: client.list_trials(args.study_id), [])
        params = trial_params(client, summaries)
    rows = fmt.sorted_rows(fmt.trial_row(s, params[s.trial_id]) for s in summaries)
    order = [p.name for p in study.config.space.parameters]
    if form == "json":
        emit_json([row.as_dict() for row in rows])
    elif form == "csv":
        emit(fmt.trials_csv(rows, order))
    else:
        emit(fmt.trials_table(rows, order))


def best(args: argparse.Namespace) -> None:
    with connected(args, (SUGGEST, LINEAGE)) as client:
        study = existing_study(client, args.study_id)
        found = (client.recommended(args.study_id, study) if args.noisy
                 else client.best(args.study_id))
    if found is None:
        raise CommandFailed(f"study {args.study_id!r} has no completed trial yet")
    if args.json:
        emit_json(fmt.plain(found))
    else:
        emit(fmt.best_view(found))


def lineage(args: argparse.Namespace) -> None:
    with connected(args, (LINEAGE,)) as client:
        record = client.lineage(args.trial_id)
    if args.json:
        emit_json(fmt.plain(record))
    else:
        emit(fmt.lineage_view(record))


def trial_show(args: argparse.Namespace) -> None:
    with connected(args, (EVALUATE,)) as client:
        trial = client.get_trial(args.trial_id)
    emit_json(fmt.plain(trial)) if args.json else emit(fmt.trial_view(trial))


def trial_stop(args: argparse.Namespace) -> None:
    with connected(args, (EVALUATE,)) as client:
        trial = client.stop_trial(args.trial_id, args.reason)
    if args.json:
        emit_json(fmt.plain(trial))
    else:
        emit(f"trial {trial.trial_id} stopped ({trial.stop_reason}): "
             + fmt.stop_outcome(trial))


# --- arguments -------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser, json_help: str = "plain JSON") -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="state folder of the stack to query (default: LADDER_STATE_DIR or ./.ladder)",
    )
    parser.add_argument("--json", action="store_true", help=f"print {json_help} instead")


def _with(*positionals: tuple[str, str]) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        for name, help_text in positionals:
            parser.add_argument(name, help=help_text)
        common_arguments(parser)

    return add


def _best_arguments(parser: argparse.ArgumentParser) -> None:
    _with(STUDY)(parser)
    parser.add_argument(
        "--noisy", action="store_true",
        help="for a noisy metric: the completed trial whose posterior mean under a GP "
        "fitted to the completed trials is best, not the best observed value",
    )


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="study file (YAML or JSON; see README \"CLI\")")
    parser.add_argument("--id", default="", help="study id (default: the file's study_id, "
                        "else one chosen by the service)")
    common_arguments(parser)


def _trials_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", help="study id")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    common_arguments(parser, "plain JSON (same as --format json)")


def _stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", help="study id")
    parser.add_argument("--stop-running", action="store_true",
                        help="tell running trials to STOP (default: they finish)")
    parser.add_argument("--reason", default="", help="recorded with each trial stopped")
    common_arguments(parser)


def _cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", help="study id")
    parser.add_argument("--reason", default="", help="recorded with each trial stopped")
    common_arguments(parser)


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", help="study id")
    parser.add_argument("--parallelism", type=int, default=None,
                        help="max parallel trials (0: unbounded)")
    parser.add_argument("--max-trials", type=int, default=None,
                        help="the budget in trials (0: unbounded; not below those handed out)")
    parser.add_argument("--wall-clock", type=float, default=None, metavar="SECONDS",
                        help="wall-clock budget since creation (0: unbounded)")
    parser.add_argument("--trial-hours", type=float, default=None, metavar="HOURS",
                        help="budget in trial-hours, all attempts (0: unbounded)")
    parser.add_argument("--gpu-hours", type=float, default=None, metavar="HOURS",
                        help="budget in GPU-hours: trial-hours times the trials' GPUs "
                             "(0: unbounded)")
    common_arguments(parser)


def _trial_stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trial_id", help="trial id")
    parser.add_argument("--reason", required=True, help="why (recorded in lineage)")
    common_arguments(parser)


STUDY = ("study_id", "study id")
# ``ladder study ACTION``: (help, arguments, action).
STUDY_ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "create": ("create a study from a YAML/JSON study file", _create_arguments, study_create),
    "list": ("list the studies", _with(), study_list),
    "show": ("show a study's config and state", _with(STUDY), study_show),
    "stop": ("hand out no new trials (running trials finish, or STOP with --stop-running)",
             _stop_arguments, _lifecycle("stop")),
    "pause": ("hand out no trial; running trials checkpoint and wait until resumed",
              _with(STUDY), _lifecycle("pause")),
    "resume": ("hand out trials again after `ladder study stop` or `pause`", _with(STUDY),
               _lifecycle("resume")),
    "cancel": ("end the study for good, stopping its unfinished trials", _cancel_arguments,
               _lifecycle("cancel")),
    "update": ("change a running study's parallelism and / or budget", _update_arguments,
               _lifecycle("update")),
}
# ``ladder trial ACTION``: (help, arguments, action).
TRIAL_ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "show": ("show a trial's state (and why it was stopped)", _with(("trial_id", "trial id")),
             trial_show),
    "stop": ("stop one trial, saying why", _trial_stop_arguments, trial_stop),
}


def _actions(table: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]]
             ) -> Callable[[argparse.ArgumentParser], None]:
    def add_actions(parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        for name, (help_text, add, action) in table.items():
            sub = actions.add_parser(name, help=help_text, description=help_text)
            add(sub)
            sub.set_defaults(action_run=action)

    return add_actions


def _run_action(args: argparse.Namespace) -> int:
    return runs(args.action_run)(args)


# name: (help, arguments, action)
QUERIES: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "studies": ("list the studies (same as `ladder study list`)", _with(), study_list),
    "summary": ("a study's trial counts and best value", _with(STUDY), summary),
    "trials": ("a study's trials with their values and params", _trials_arguments, trials),
    "best": ("the best trial of a study with its lineage", _best_arguments, best),
    "lineage": ("a trial's full lineage", _with(("trial_id", "trial id")), lineage),
}


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add this module's commands to the CLI's table."""
    commands["study"] = command_type(
        "create, list, show, stop, pause, resume, cancel and update studies",
        _actions(STUDY_ACTIONS), _run_action,
    )
    commands["trial"] = command_type(
        "show or stop one trial", _actions(TRIAL_ACTIONS), _run_action
    )
    for name, (help_text, add, action) in QUERIES.items():
        commands[name] = command_type(help_text, add, runs(action))
