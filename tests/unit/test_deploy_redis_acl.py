"""The deployment manifests give Redis one user per service (ladder.redisacl), as the
embedded stack does: in deploy/compose.yaml each process logs in as its own user with
a password from the operator's .env (no literal), the server loads the users' file that
`ladder redis-acl` wrote (the one source of the rules); in deploy/k8s each container
takes its own user's URL from a Secret no pod imports whole, and the optional in-cluster
Redis is made the same way. tests/integration/test_deploy_redis_users.py runs the
compose file's init step and server for real."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
from ladder import redisacl
from ladder.testing.redisusers import (
    COMPOSE,
    DEPLOY,
    compose_services,
    interpolate,
    k8s_documents,
    pod_containers,
    redis_user,
    service_env,
    variables,
)

SERVICES = compose_services()
LADDER_IMAGE = "ladder-hpo"
URL_SECRET = "ladder-redis-urls"
PASSWORD_SECRET = "ladder-redis-users"


def is_ladder(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith(LADDER_IMAGE)


def command(service: dict[str, Any]) -> list[str]:
    return [*service.get("entrypoint", []), *service.get("command", [])]


def expected_user(argv: list[str]) -> str | None:
    """The Redis user a Ladder process must log in as: a service its own (none for one
    without a user: the dashboard), an operator's CLI run ``admin``."""
    if argv[:2] == ["python", "-m"] and argv[2].startswith("services."):
        name = argv[2].removeprefix("services.")
        return name if name in redisacl.SERVICE_USERS else None
    assert argv[0] == "ladder", argv
    return redisacl.ADMIN


def init_service() -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in SERVICES.items()
             if is_ladder(s) and command(s)[:2] == ["ladder", "redis-acl"]]
    assert len(found) == 1, "deploy/compose.yaml: one `ladder redis-acl` init service"
    return found[0]


def test_every_compose_process_logs_in_as_its_own_user_with_a_password_from_env() -> None:
    init_name, _ = init_service()
    seen = {}
    for name, service in SERVICES.items():
        if not is_ladder(service) or name == init_name:
            continue
        url = service_env(service)["LADDER_REDIS_URL"]
        user = expected_user(command(service))
        assert redis_user(url) == user, (name, url)
        if user is None:
            assert "@" not in url and not variables(url), name
            continue
        # The password is the variable of that user, never a literal.
        password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), (name, password)
        assert variables(password) == [redisacl.password_variable(user)], name
        assert urlhost(url) == "redis:6379", name
        seen[name] = user
    # Every service user is used, by the processes named after it (replicas too).
    assert set(seen.values()) == {*redisacl.SERVICE_USERS, redisacl.ADMIN}
    assert seen["suggest-2"] == "suggest" and seen["evaluate-2"] == "evaluate"
    assert SERVICES["dashboard"]["environment"]["LADDER_REDIS_URL"] == "redis://redis:6379/0"


def urlhost(url: str) -> str:
    return url.rsplit("@", 1)[1].split("/", 1)[0]


def test_no_password_is_committed_in_the_deploy_files() -> None:
    for path in [COMPOSE, DEPLOY / "k8s" / "secrets.example.yaml"]:
        text = path.read_text()
        found = re.findall(r"redis://([A-Za-z0-9_-]+):([^@\n]*)@", text)
        assert found, path.name
        for user, secret in found:
            assert re.fullmatch(r"\$\{[^}]+\}|<password>", secret), (path.name, user, secret)
        for value in re.findall(r"(?m)^\s*REDIS_PASSWORD_[A-Z]+:\s*(.*)$", text):
            assert re.fullmatch(r"\$\{[^}]+\}|\"<password>\"", value), (path.name, value)
    assert not (DEPLOY / ".env").exists() or ".env" in (DEPLOY.parent / ".gitignore").read_text()


def test_the_init_step_writes_every_users_file_and_redis_loads_it() -> None:
    init_name, init = init_service()
    argv = command(init)
    assert argv[:3] == ["ladder", "redis-acl", "--passwords-from-env"]
    output = argv[argv.index("--output") + 1]
    env = service_env(init)
    for name in redisacl.USER_NAMES:
        assert variables(env[redisacl.password_variable(name)]) == [
            redisacl.password_variable(name)]
    # The key patterns carry the topic prefix: the services' one.
    assert env["LADDER_TOPIC_PREFIX"] == service_env(SERVICES["suggest"])["LADDER_TOPIC_PREFIX"]
    assert init["restart"] == "no"

    redis = SERVICES["redis"]
    assert redis["depends_on"][init_name] == {"condition": "service_completed_successfully"}
    server = redis["command"]
    assert server[0] == "redis-server"
    aclfile = server[server.index("--aclfile") + 1]
    # The file the init step writes reaches --aclfile through their shared volume.
    volume, _, mount = next(v for v in init["volumes"] if output.startswith(v.split(":")[1] + "/"))\
        .partition(":")
    redis_mount = next(v.split(":")[1] for v in redis["volumes"] if v.split(":")[0] == volume)
    written = redis_mount + output.removeprefix(mount)
    script = shlex.split(redis["entrypoint"][2])
    assert script[:2] == ["install", "-m"] and script[2] == "0600"
    assert script[script.index(written) + 1] == aclfile
    # Healthy only once a user logs in (a client without one gets NOAUTH).
    health = redis["healthcheck"]["test"][1]
    assert "--user admin" in health and "PONG" in health
    assert variables(redis["environment"]["REDISCLI_AUTH"]) == ["REDIS_PASSWORD_ADMIN"]


def test_every_compose_process_that_uses_redis_waits_for_it() -> None:
    for name, service in SERVICES.items():
        url = (service.get("environment") or {}).get("LADDER_REDIS_URL", "")
        if redis_user(url) and "tools" not in service.get("profiles", []):
            assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_interpolation_fails_without_the_passwords_and_fills_them_in() -> None:
    url = service_env(SERVICES["lineage"])["LADDER_REDIS_URL"]
    with pytest.raises(KeyError, match="REDIS_PASSWORD_LINEAGE"):
        interpolate(url, {})
    assert interpolate(url, {"REDIS_PASSWORD_LINEAGE": "p" * 20}) == (
        f"redis://lineage:{'p' * 20}@redis:6379/0")
    assert interpolate('"$$@"', {}) == '"$@"'


# --- deploy/k8s ---------------------------------------------------------------------------


def k8s_workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in k8s_documents()
            if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_each_kubernetes_container_takes_its_own_users_url_from_the_secret() -> None:
    users = {}
    for file, doc in k8s_workloads():
        for container in pod_containers(doc):
            if not container["image"].startswith(LADDER_IMAGE):
                continue
            # No container imports the URLs' or the passwords' Secret whole.
            refs = [r.get("secretRef", {}).get("name") for r in container.get("envFrom", [])]
            assert URL_SECRET not in refs, (file, container["name"])
            if container["command"][:2] == ["ladder", "redis-acl"]:
                assert not any(e["name"] == "LADDER_REDIS_URL"
                               for e in container.get("env", []))
                continue
            assert PASSWORD_SECRET not in refs, (file, container["name"])
            urls = [e for e in container.get("env", []) if e["name"] == "LADDER_REDIS_URL"]
            user = expected_user(container["command"])
            if user is None:
                assert urls == [], file
                continue
            assert urls == [{"name": "LADDER_REDIS_URL", "valueFrom": {"secretKeyRef": {
                "name": URL_SECRET, "key": f"redis-url-{user}"}}}], file
            users[file] = user
    assert users == {**{f"{n}.yaml": n for n in redisacl.SERVICE_USERS},
                     "topics-job.yaml": redisacl.ADMIN}
    config = next(d for _, d in k8s_documents() if d["kind"] == "ConfigMap")
    assert "LADDER_REDIS_URL" not in config["data"]  # no shared URL to fall back on


def test_the_secret_template_holds_placeholders_for_every_user() -> None:
    secrets = {d["metadata"]["name"]: d["stringData"] for f, d in k8s_documents()
               if d["kind"] == "Secret"}
    assert set(secrets[URL_SECRET]) == {f"redis-url-{n}" for n in redisacl.USER_NAMES}
    for key, url in secrets[URL_SECRET].items():
        assert redis_user(url) == key.removeprefix("redis-url-") and "<password>" in url
    assert secrets[PASSWORD_SECRET] == {
        redisacl.password_variable(n): "<password>" for n in redisacl.USER_NAMES}
    import yaml

    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert "secrets.example.yaml" not in kustomization["resources"]
    assert "configmap.yaml" in kustomization["resources"]


def test_the_in_cluster_redis_loads_the_users_its_init_container_writes() -> None:
    (redis,) = [d for f, d in k8s_workloads() if f == "redis.yaml"]
    pod = redis["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    argv = init["command"]
    assert argv[:2] == ["ladder", "redis-acl"] and "--passwords-from-env" in argv
    output = argv[argv.index("--output") + 1]
    assert {"secretRef": {"name": PASSWORD_SECRET}} in init["envFrom"]
    # The services' topic prefix (from the config map they all read).
    assert argv[argv.index("--topic-prefix") + 1] == "$(LADDER_TOPIC_PREFIX)"
    assert {"configMapRef": {"name": "ladder-config"}} in init["envFrom"]
    config = next(d for _, d in k8s_documents() if d["kind"] == "ConfigMap")
    assert config["data"]["LADDER_TOPIC_PREFIX"]
    aclfile = server["command"][server["command"].index("--aclfile") + 1]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    server_mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    mount = next(p for p in mounts if output.startswith(p + "/"))
    assert server_mounts[mounts[mount]] + output.removeprefix(mount) == aclfile
    # One user for both, so the owner-only file is the server's to read.
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"]
