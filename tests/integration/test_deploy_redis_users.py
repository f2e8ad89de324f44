"""deploy/compose.yaml's Redis users for real: its init step's command (`ladder
redis-acl`, with the environment the compose file gives it) writes the users' file,
a redis-server started with the compose file's arguments loads it, and each Ladder
process of the compose file, logging in with the URL it is given, reaches its own keys
with its own rights and nobody else's; a client without a user is refused.

A few seconds: one CLI run and one redis-server, no service process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ladder import redisacl
from ladder.redisacl import READ_WRITE
from ladder.stack import components, ports, probes
from ladder.state.keys import Keys
from ladder.testing import wait_for
from ladder.testing.redisusers import (
    access,
    compose_services,
    interpolate,
    redis_user,
    refused,
    sample_keys,
    service_env,
)

pytestmark = pytest.mark.integration

SERVICES = compose_services()
# What the operator's deploy/.env would hold (`ladder redis-acl --env`).
PASSWORDS = {name: redisacl.new_password() for name in redisacl.USER_NAMES}
DOT_ENV = {redisacl.password_variable(name): pw for name, pw in PASSWORDS.items()}


def interpolated(service: str) -> dict[str, str]:
    return {k: interpolate(v, DOT_ENV) for k, v in service_env(SERVICES[service]).items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The compose file's Redis on a free loopback port, its users' file made by the
    compose file's init step; the URL without a user."""
    tmp = tmp_path_factory.mktemp("deploy-redis")
    (init,) = [s for s in SERVICES.values() if s.get("command", [])[:2] == ["ladder", "redis-acl"]]
    argv = list(init["command"])
    acl = tmp / "users.acl"
    argv[argv.index("--output") + 1] = str(acl)
    env = {**os.environ, **{k: interpolate(str(v), DOT_ENV)
                            for k, v in init["environment"].items()}}
    cli = Path(sys.executable).with_name(argv[0])
    done = subprocess.run([str(cli), *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert all(pw not in acl.read_text() for pw in PASSWORDS.values())

    command = list(SERVICES["redis"]["command"])
    assert command[0] == "redis-server"
    command[0] = str(components.redis_binary())
    command[command.index("--aclfile") + 1] = str(acl)
    port = ports.free_port()
    (tmp / "data").mkdir()
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "data"),
         "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        admin = redisacl.user_url(url, redisacl.ADMIN, PASSWORDS[redisacl.ADMIN])
        wait_for(lambda: proc.poll() is not None or probes.redis_ping(admin), 15,
                 "the compose file's redis-server answering its admin")
        assert proc.poll() is None, "redis-server exited (its users' file refused?)"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def on(server: str, url: str) -> redis.Redis:
    """A client of ``url`` (a user's, as the compose file gives it) on the test's
    server."""
    return redis.Redis.from_url(url.rsplit("@", 1)[0] + "@" + server.split("://", 1)[1])


def test_each_compose_process_reaches_its_own_keys_and_no_others(server: str) -> None:
    keys = Keys.for_prefix(interpolated("suggest")["LADDER_TOPIC_PREFIX"])
    checked = set()
    for name in SERVICES:
        url = interpolated(name).get("LADDER_REDIS_URL", "")
        user = redis_user(url) if url else None
        if user is None:
            continue
        client = on(server, url)
        assert client.ping(), name
        acl = redisacl.user(user)
        for builder in redisacl.builders():
            for key in sample_keys(keys, builder):
                right = access(acl, key, keys)
                assert refused(client.exists, key) == (right == ""), (name, key, right)
                assert refused(client.delete, key) == (right != READ_WRITE), (name, key, right)
        # What every service user was given for its own keys is what it asked for.
        for builder, wanted in acl.keys.items():
            key = sample_keys(keys, builder)[0]
            assert not refused(client.exists, key), (name, key)
            if wanted == READ_WRITE:
                assert not refused(client.delete, key), (name, key)
        assert refused(client.flushall) and refused(client.config_get, "*"), name
        assert refused(client.keys, "*") and refused(client.get, "another-stack:x"), name
        client.close()
        checked.add(user)
    assert checked == {*redisacl.SERVICE_USERS, redisacl.ADMIN}


def test_a_client_without_a_user_or_with_a_wrong_password_is_refused(server: str) -> None:
    # The dashboard's URL names no user: the default user is off.
    assert redis_user(interpolated("dashboard")["LADDER_REDIS_URL"]) is None
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(server).get("x")
    wrong = redisacl.user_url(server, "suggest", PASSWORDS["evaluate"])
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(wrong).ping()
