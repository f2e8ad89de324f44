"""Tenants against real suggest, evaluate and lineage processes with LADDER_AUTH on:
tenant A cannot list, read or touch anything of tenant B's over any RPC of any service
(NOT_FOUND, like an unknown id), an admin sees both, no / wrong / revoked tokens are
UNAUTHENTICATED (revocation within the cache bound), the CLI with a token; and the
services over TLS with client certificates (mutual TLS)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ladder import auth, channels
from ladder.client import LadderClient, study_config
from ladder.config import Settings, Tls
from ladder.state.keys import Keys
from ladder.tenancy import TenantStore, provision
from ladder.testing import wait_for, wait_for_found
from ladder.v1 import evaluate_pb2, lineage_pb2, suggest_pb2

pytestmark = pytest.mark.integration

CACHE_S = 0.5  # the services' LADDER_AUTH_CACHE_S: the revocation bound tested
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
_PB2 = (suggest_pb2, evaluate_pb2, lineage_pb2)


@dataclasses.dataclass
class Stack:
    settings: Settings  # without a token
    store: TenantStore
    tokens: dict[str, str]
    names: dict[str, str]
    env: dict[str, str]

    def client(self, who: str) -> LadderClient:
        return LadderClient(dataclasses.replace(self.settings, token=self.tokens[who]),
                            retry_timeout=5)


@pytest.fixture(scope="module")
def stack(infra: Settings, infra_env: dict[str, str],
          start_module_service: Callable[..., Any]) -> Stack:
    extra = {"LADDER_AUTH": "on", "LADDER_AUTH_CACHE_S": str(CACHE_S)}
    addrs = {field: start_module_service(module, extra).addr for module, field in (
        ("services.suggest", "suggest_addr"), ("services.evaluate", "evaluate_addr"),
        ("services.lineage", "lineage_addr"))}
    store = TenantStore(redis.Redis.from_url(infra.redis_url),
                        Keys.for_prefix(infra.topics.prefix).root)
    run = uuid.uuid4().hex[:6]
    names = {"a": f"a-{run}", "b": f"b-{run}", "admin": f"root-{run}"}
    tokens = {who: store.create(name, admin=who == "admin").token
              for who, name in names.items()}
    env = {**infra_env, "LADDER_SUGGEST_ADDR": addrs["suggest_addr"],
           "LADDER_EVALUATE_ADDR": addrs["evaluate_addr"],
           "LADDER_LINEAGE_ADDR": addrs["lineage_addr"]}
    return Stack(dataclasses.replace(infra, **addrs), store, tokens, names, env)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _started(client: LadderClient, study_id: str) -> str:
    trial = client.suggest(study_id, "w")[0].trial
    client.start_trial(trial.trial_id, "w", f"att-{trial.trial_id}")
    return trial.trial_id


def _request_naming(method: str, study_id: str, trial_id: str) -> Any:
    """A request of ``method`` naming B's study / trial in every field its rule checks
    (and plausible other ids), for a call by A."""
    service, name = method.strip("/").split("/")
    for module in _PB2:
        found = module.DESCRIPTOR.services_by_name.get(service.rsplit(".", 1)[-1])
        if found is not None:
            descriptor = found.methods_by_name[name].input_type
            break
    request = message_factory.GetMessageClass(descriptor)()
    for field, value in (("attempt_id", f"att-{trial_id}"), ("worker_id", "w")):
        if field in descriptor.fields_by_name:
            setattr(request, field, value)
    for names in auth.RPC_RULES[method]:
        *parents, leaf = names.field.split(".")
        target = request
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, trial_id if names.kind == auth.TRIAL else study_id)
    return request


def _call(stack: Stack, who: str, method: str, request: Any) -> grpc.StatusCode:
    service = method.strip("/").split("/")[0].rsplit(".", 1)[-1]
    addr = {"SuggestService": stack.settings.suggest_addr,
            "EvaluateService": stack.settings.evaluate_addr,
            "LineageService": stack.settings.lineage_addr}[service]
    settings = dataclasses.replace(stack.settings, token=stack.tokens.get(who, who))
    with channels.channel(addr, settings) as channel:
        rpc = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                  response_deserializer=lambda raw: raw)
        return _code(lambda: rpc(request, timeout=10))


def test_a_tenant_sees_and_touches_only_its_own(stack: Stack) -> None:
    a, b, admin = stack.client("a"), stack.client("b"), stack.client("admin")
    config = study_config(SPACE, algorithm="random")
    sa = a.create_study(config).study_id
    sb = b.create_study(config).study_id
    ta, tb = _started(a, sa), _started(b, sb)

    # Every RPC of every service that names a study or a trial, by A on B's: NOT_FOUND
    # (CreateStudy with B's id: ALREADY_EXISTS, the id is taken).
    answers = {
        method: _call(stack, "a", method, _request_naming(method, sb, tb))
        for method, names in auth.RPC_RULES.items() if names
    }
    expected = {method: grpc.StatusCode.NOT_FOUND for method in answers}
    expected["/ladder.v1.SuggestService/CreateStudy"] = grpc.StatusCode.ALREADY_EXISTS
    # RequestWork hands out any tenant's trials: node agents (admin tokens) only.
    expected["/ladder.v1.SuggestService/RequestWork"] = grpc.StatusCode.PERMISSION_DENIED
    assert answers == expected
    # ... and changed nothing of B's.
    assert b.get_study(sb).state == a.get_study(sa).state
    assert b.get_trial(tb).state == a.get_trial(ta).state
    # Listing: each tenant its own, the admin both; the owner is on the study.
    assert [s.study_id for s in a.list_studies()] == [sa]
    assert [s.study_id for s in b.list_studies()] == [sb]
    assert {sa, sb} <= {s.study_id for s in admin.list_studies()}
    assert admin.get_study(sb).tenant == b.get_study(sb).tenant != a.get_study(sa).tenant
    assert admin.get_trial(ta).trial_id == ta

    # Lineage: the same once the studies are ingested.
    wait_for_found(lambda: admin.lineage(tb), 30, "lineage of B's trial")
    wait_for_found(lambda: a.lineage(ta), 30, "lineage of A's trial")

    def listed(who: str) -> set[str]:
        stub = stack.client(who)._lineage.stub
        return {row.study.study_id for row in stub.ListStudyListings(
            lineage_pb2.ListStudyListingsRequest(), timeout=10).studies}

    wait_for(lambda: {sa, sb} <= listed("admin"), 30, "both studies listed for the admin")
    assert sa in listed("a") and sb not in listed("a")
    assert _code(lambda: a.lineage(tb)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: a.summary(sb)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: admin.summary(sb)) == grpc.StatusCode.OK


def test_no_wrong_or_revoked_token_is_unauthenticated(stack: Stack) -> None:
    method = "/ladder.v1.SuggestService/ListStudies"
    request = suggest_pb2.ListStudiesRequest()
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _call(stack, "", method, request) == unauthenticated
    assert _call(stack, "not-a-token", method, request) == unauthenticated
    assert _call(stack, "ladder_0000.forged", method, request) == unauthenticated
    for addr, other in ((stack.settings.evaluate_addr, "EvaluateService/GetTrial"),
                        (stack.settings.lineage_addr, "LineageService/ListStudyListings")):
        with grpc.insecure_channel(addr) as channel:  # no token at all
            rpc = channel.unary_unary(f"/ladder.v1.{other}",
                                      request_serializer=lambda r: b"",
                                      response_deserializer=lambda raw: raw)
            assert _code(lambda rpc=rpc: rpc(None, timeout=10)) == unauthenticated
    # Health needs no token.
    with grpc.insecure_channel(stack.settings.suggest_addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    issued = stack.store.issue(stack.names["a"])
    stack.tokens["fresh"] = issued.token
    assert _call(stack, "fresh", method, request) == grpc.StatusCode.OK
    stack.store.revoke(issued.tenant, issued.token_id)
    revoked_at = time.monotonic()
    wait_for(lambda: _call(stack, "fresh", method, request) == unauthenticated, 10,
             "the revoked token refused")
    # The bound the setting documents (plus a call's round trip).
    assert time.monotonic() - revoked_at < CACHE_S + 1.0


def test_the_stack_provisions_a_default_token_file_once(stack: Stack, tmp_path: Path) -> None:
    """What `ladder up` does before starting the services: the file holds a valid token of
    the tenant (0600), kept while it authenticates, replaced once revoked."""
    name, path = f"default-{uuid.uuid4().hex[:6]}", tmp_path / "token"
    assert provision(stack.store, path, name)
    token = path.read_text().strip()
    assert path.stat().st_mode & 0o777 == 0o600
    assert stack.store.authenticate(token).tenant == name
    assert not provision(stack.store, path, name)
    assert path.read_text().strip() == token
    stack.store.revoke(name)
    assert provision(stack.store, path, name)
    assert stack.store.authenticate(path.read_text().strip()).tenant == name


def _ladder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_manages_tenants_and_calls_with_a_token(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "LADDER_STATE_DIR": str(tmp_path)}
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = _ladder(env, "tenant", "create", name)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ladder_") and "\n" not in token
    listed = _ladder(env, "tenant", "list")
    assert name in listed.stdout and token.split(".")[0][len("ladder_"):] in listed.stdout

    own = stack.client("a").create_study(study_config(SPACE, algorithm="random"))
    mine = LadderClient(dataclasses.replace(stack.settings, token=token)).create_study(
        study_config(SPACE, algorithm="random"))
    with_token = {**env, "LADDER_TOKEN": token}
    shown = _ladder(with_token, "study", "show", mine.study_id)
    assert shown.returncode == 0 and mine.study_id in shown.stdout, shown.stderr
    other = _ladder(with_token, "study", "show", own.study_id)
    assert other.returncode == 2 and "NOT_FOUND" in other.stderr, other.stderr
    studies = _ladder(with_token, "studies")
    assert mine.study_id in studies.stdout and own.study_id not in studies.stdout
    # Without a token the CLI is refused; a revoked one too.
    refused = _ladder(env, "studies")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    assert _ladder(env, "tenant", "revoke", name).returncode == 0
    wait_for(lambda: "UNAUTHENTICATED" in _ladder(with_token, "studies").stderr, 10,
             "the CLI's revoked token refused")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> Tls:
    """A self-signed CA and a server (127.0.0.1) and client certificate it signed."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=ladder-test-ca", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN=ladder-{who}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "1",
                 "-extfile", "san.ext", cwd=folder)
    return Tls(cert=str(folder / "server.pem"), key=str(folder / "server.key"),
               client_ca=str(folder / "ca.pem"), ca=str(folder / "ca.pem"),
               client_cert=str(folder / "client.pem"), client_key=str(folder / "client.key"))


def test_services_over_mutual_tls(infra: Settings, start_service: Callable[..., Any],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = _certificates(tmp_path)
    # The test's own readiness probe (ladder.channels.probe_channel) connects with these.
    for variable in ("ca", "client_cert", "client_key"):
        monkeypatch.setenv(f"LADDER_TLS_{variable.upper()}", getattr(tls, variable))
    suggest = start_service("services.suggest", {
        "LADDER_TLS_CERT": tls.cert, "LADDER_TLS_KEY": tls.key,
        "LADDER_TLS_CLIENT_CA": tls.client_ca})
    settings = dataclasses.replace(infra, suggest_addr=suggest.addr, tls=tls)
    with LadderClient(settings, retry_timeout=5) as client:
        study = client.create_study(study_config(SPACE, algorithm="random"))
        assert client.get_study(study.study_id).study_id == study.study_id

    def list_with(tls_used: Tls) -> grpc.StatusCode:
        with channels.channel(suggest.addr, dataclasses.replace(infra, tls=tls_used)) as ch:
            stub = ch.unary_unary("/ladder.v1.SuggestService/ListStudies",
                                  request_serializer=lambda r: b"",
                                  response_deserializer=lambda raw: raw)
            return _code(lambda: stub(None, timeout=5))

    assert list_with(tls) == grpc.StatusCode.OK
    # Without a client certificate, or without TLS at all: no connection.
    assert list_with(Tls(ca=tls.ca)) == grpc.StatusCode.UNAVAILABLE
    assert list_with(Tls()) == grpc.StatusCode.UNAVAILABLE
