"""The durable embedded stack: SeaweedFS, tansu on S3, Redis and the four services.

A study worked by a real worker, then ``ladder down`` and ``ladder up`` on the same state
folder: the study, its summary, its best trial and every lineage row answer as before,
nothing is archived, and one more trial completes (the services resumed from their
committed offsets: lineage stores the new trial's events once, after the old ones).
Then kill -9 of the broker alone: ``ladder up`` restarts only the broker, on its
address and its log, and the study goes on.

All of it on Redis users per service (ladder.redisacl): each service process was given
its own user, Redis refused none of their commands (``ACL LOG`` stays empty, through
a restart that replays the AOF too), and a service user cannot wipe or reconfigure
Redis nor touch the keys it does not need.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from ladder import redisacl
from ladder.client import LadderClient, study_config
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.state.keys import Keys
from ladder.testing import wait_for, wait_for_found
from ladder.testing.kills import lineage_events
from ladder.testing.redisusers import refused

from workers.runtime import Worker, WorkerConfig
from workers.synthetic import SyntheticWorkload

pytestmark = pytest.mark.integration

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}


@pytest.fixture
def durable_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state folder whose stack.json is the only source of addresses, broker on S3."""
    for var in ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_SUGGEST_ADDR",
                "LADDER_EVALUATE_ADDR", "LADDER_LINEAGE_ADDR", "LADDER_BROKER_PROFILE",
                "LADDER_S3_ENDPOINT", "LADDER_CHECKPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_BROKER_STORAGE", "s3")
    monkeypatch.setenv("LADDER_TOPIC_PREFIX", f"ds{uuid.uuid4().hex[:6]}.")
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LADDER_SYNTHETIC_STEP_S", "0.01")
    try:
        yield tmp_path
    finally:
        launcher.down(tmp_path)


def work(client: LadderClient, study_id: str, worker_id: str, state: Path, trials: int) -> None:
    """``trials`` trials of the study run to completion by one in-process worker."""
    worker = Worker(client, SyntheticWorkload(), WorkerConfig(
        study_id=study_id, worker_id=worker_id, state_dir=state, checkpoint_every=0,
        decision_wait=0, max_trials=trials,
    ))
    assert worker.run().outcomes == {"completed": trials}


def completed_in_lineage(client: LadderClient, study_id: str, count: int) -> Any:
    def done() -> Any:
        summary = client.summary(study_id)
        return summary if summary.completed == count else None

    return wait_for_found(done, 60, f"{count} completed trials of {study_id} in lineage")


def answers(client: LadderClient, study_id: str, state: Path) -> dict[str, Any]:
    """What the services answer about the study, and the rows lineage stored."""
    trials = sorted(t.trial_id for t in client.list_trials(study_id))
    return {
        "study": client.get_study(study_id),
        "summary": client.summary(study_id),
        "best": client.best(study_id),
        "lineage": {t: client.lineage(t) for t in trials},
        "rows": lineage_events(state / "lineage.sqlite3", study_id),
    }


def kill9(info: dict[str, Any], name: str) -> ProcRecord:
    rec = ProcRecord.from_json(name, info["pids"][name])
    os.killpg(rec.pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_running(rec), 10, f"{name} gone")
    return rec


def given_redis_url(info: dict[str, Any], name: str) -> str:
    """The LADDER_REDIS_URL ``ladder up`` put in service ``name``'s environment."""
    pid = info["pids"][name]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ
                if v.startswith(b"LADDER_REDIS_URL="))


def check_redis_users(info: dict[str, Any], study_id: str, trial_id: str) -> None:
    """Each service runs as its own Redis user, none of whose commands was refused so
    far; what each may not do is refused (NOPERM) and changes nothing."""
    admin = redis.Redis.from_url(info["redis_url"])
    assert admin.acl_log(count=50) == []  # nothing any process did was refused
    urls = {name: given_redis_url(info, name) for name in (*redisacl.SERVICE_USERS,
                                                            "dashboard")}
    assert {n: urlsplit(u).username for n, u in urls.items()} == {
        **{n: n for n in redisacl.SERVICE_USERS}, "dashboard": None}
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(urls["dashboard"]).get("x")  # the default user is off
    keys = Keys.for_prefix(info["topic_prefix"])
    other = Keys.for_prefix("another-stack.")
    trial_key, study_key = keys.trial(trial_id), keys.study(study_id)
    before = admin.hgetall(trial_key)
    for name in redisacl.SERVICE_USERS:
        client = redis.Redis.from_url(urls[name])
        assert client.ping()
        assert refused(client.flushall), name
        assert refused(client.config_get, "*"), name
        assert refused(client.keys, "*"), name
        assert refused(client.acl_setuser, name, enabled=True, commands=["+@all"]), name
        assert refused(client.get, other.trial(trial_id)), name
        assert refused(client.hset, keys.tokens, "forged", "{}"), name
        client.close()
    earlystop = redis.Redis.from_url(urls["earlystop"])
    assert earlystop.hget(trial_key, "study").decode() == study_id  # its trial check
    assert refused(earlystop.hset, trial_key, "state", "0")
    assert refused(earlystop.hget, study_key, "study")
    lineage = redis.Redis.from_url(urls["lineage"])
    assert lineage.hget(study_key, "tenant") is not None  # its owner check
    assert refused(lineage.hset, study_key, "tenant", "someone-else")
    assert refused(lineage.delete, trial_key)
    evaluate = redis.Redis.from_url(urls["evaluate"])
    assert refused(evaluate.set, keys.partition_lease(study_id, 0), "evaluate|99")
    assert refused(evaluate.zadd, keys.studies, {"forged": 1})
    suggest = redis.Redis.from_url(urls["suggest"])
    assert refused(suggest.set, keys.last_sweep, 0)
    assert admin.hgetall(trial_key) == before
    assert {e["username"] for e in admin.acl_log(count=100)} == set(redisacl.SERVICE_USERS)
    admin.acl_log_reset()
    for client in (admin, earlystop, lineage, evaluate, suggest):
        client.close()


def test_a_study_outlives_down_up_and_a_killed_broker(durable_state: Path) -> None:
    state = durable_state
    first = launcher.up(state)
    assert first["broker_storage"] == "s3" and first["s3_endpoint"]
    with LadderClient(retry_timeout=120) as client:
        config = study_config(SPACE, name="durable", max_trials=20, seed=3)
        study_id = client.create_study(config).study_id
        work(client, study_id, "w-before", state, trials=3)
        completed_in_lineage(client, study_id, 3)
        before = answers(client, study_id, state)
    assert before["best"] is not None and len(before["lineage"]) == 3
    check_redis_users(first, study_id, sorted(before["lineage"])[0])

    launcher.down(state)
    second = launcher.up(state)
    assert not (state / "archive").exists()
    assert second["suggest_addr"] != first["suggest_addr"]  # new ports, same state
    with LadderClient(retry_timeout=120) as client:
        assert answers(client, study_id, state) == before
        work(client, study_id, "w-after-restart", state, trials=1)
        completed_in_lineage(client, study_id, 4)
        rows = lineage_events(state / "lineage.sqlite3", study_id)
        # Lineage went on from its offsets: the old rows once, then the new trial's.
        assert rows[: len(before["rows"])] == before["rows"]
        new_trials = {trial for trial, _ in rows[len(before["rows"]):]}
        assert len(new_trials) == 1 and not new_trials & set(before["lineage"])

        kill9(second, "kafka")
        third = launcher.up(state)
        assert third["restarted"] == ["kafka"]
        assert third["kafka_bootstrap"] == second["kafka_bootstrap"]
        for name in ("objectstore", "redis", "suggest", "evaluate", "lineage", "earlystop"):
            assert third["pids"][name] == second["pids"][name], name
        work(client, study_id, "w-after-kill", state, trials=1)
        completed_in_lineage(client, study_id, 5)
        assert client.get_study(study_id).config == before["study"].config
    # Through a restart of Redis (its AOF replayed) and the broker's, nothing refused.
    assert redis.Redis.from_url(third["redis_url"]).acl_log(count=50) == []
    assert not (state / "archive").exists()
