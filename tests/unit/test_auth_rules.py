"""Authorisation rules (ladder.auth) and tokens (ladder.tenancy), apart from gRPC and
Redis: every RPC of every service has a rule naming real request fields, and the
checks answer NOT_FOUND / ALREADY_EXISTS / UNAUTHENTICATED as documented."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from ladder import auth, v1
from ladder.errors import AlreadyExists, NotFound, Unauthenticated
from ladder.tenancy import Principal, TokenCache, new_token, split_token
from ladder.v1 import evaluate_pb2, suggest_pb2


def _methods() -> dict[str, object]:
    """Every RPC of every service in the protos: full method name -> input descriptor."""
    found = {}
    for info in pkgutil.iter_modules(v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"ladder.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method.input_type
    return found


def test_every_rpc_of_every_service_has_a_rule() -> None:
    methods = _methods()
    assert len(methods) > 20  # the three services' RPCs were found
    missing = sorted(set(methods) - set(auth.RPC_RULES))
    assert not missing, f"RPCs without an authorisation rule in ladder.auth.RPC_RULES: {missing}"


def test_every_rule_names_an_rpc_and_fields_its_request_has() -> None:
    methods = _methods()
    for method, names in auth.RPC_RULES.items():
        assert method in methods, f"rule for an RPC no proto declares: {method}"
        for name in names:
            descriptor = methods[method]
            *parents, leaf = name.field.split(".")
            for part in parents:
                descriptor = descriptor.fields_by_name[part].message_type
            assert leaf in descriptor.fields_by_name, f"{method}: no field {name.field}"


def test_every_request_naming_a_study_or_trial_is_checked() -> None:
    """A request with a study_id / trial_id field whose rule ignores it would let any
    tenant name any study: each such field is in the RPC's rule."""
    for method, descriptor in _methods().items():
        checked = {name.field for name in auth.RPC_RULES.get(method, ())}
        for field in ("study_id", "trial_id"):
            if field in descriptor.fields_by_name:
                assert field in checked, f"{method}: {field} not checked"


class _Owners:
    studies = {"sa": "a", "sb": "b"}
    trials = {"ta": "sa", "tb": "sb"}

    def study_owner(self, study_id: str) -> str | None:
        return self.studies.get(study_id)

    def study_of_trial(self, trial_id: str) -> str | None:
        return self.trials.get(trial_id)


A = Principal("a")
ADMIN = Principal("root", admin=True)
_S = "/ladder.v1.SuggestService/"
_E = "/ladder.v1.EvaluateService/"


def _authorizer() -> auth.Authorizer:
    tokens = {"good": A}
    return auth.Authorizer(tokens.get, _Owners())


def test_own_study_and_trial_pass_others_are_not_found_like_unknown_ids() -> None:
    checks = _authorizer()
    checks.authorise(_S + "GetStudy", suggest_pb2.GetStudyRequest(study_id="sa"), A)
    checks.authorise(_E + "GetTrial", evaluate_pb2.GetTrialRequest(trial_id="ta"), A)
    for study_id in ("sb", "unknown"):
        with pytest.raises(NotFound, match=f"study '{study_id}' not found"):
            checks.authorise(_S + "Suggest", suggest_pb2.SuggestRequest(study_id=study_id), A)
    for trial_id in ("tb", "unknown"):
        with pytest.raises(NotFound, match=f"trial '{trial_id}' not found"):
            checks.authorise(
                _E + "CompleteTrial", evaluate_pb2.CompleteTrialRequest(trial_id=trial_id), A
            )


def test_admin_passes_every_check() -> None:
    checks = _authorizer()
    checks.authorise(_S + "GetStudy", suggest_pb2.GetStudyRequest(study_id="sb"), ADMIN)
    checks.authorise(_E + "GetTrial", evaluate_pb2.GetTrialRequest(trial_id="tb"), ADMIN)


def test_create_study_cannot_take_or_warm_start_from_another_tenants_study() -> None:
    checks = _authorizer()
    create = _S + "CreateStudy"
    checks.authorise(create, suggest_pb2.CreateStudyRequest(study_id="new"), A)
    checks.authorise(create, suggest_pb2.CreateStudyRequest(study_id="sa"), A)
    with pytest.raises(AlreadyExists):
        checks.authorise(create, suggest_pb2.CreateStudyRequest(study_id="sb"), A)
    request = suggest_pb2.CreateStudyRequest()
    request.config.warm_start.from_study_id = "sb"
    with pytest.raises(NotFound, match="'sb'"):
        checks.authorise(create, request, A)


def test_an_rpc_without_a_rule_is_refused() -> None:
    with pytest.raises(PermissionError):
        _authorizer().authorise("/ladder.v1.SuggestService/New", suggest_pb2.GetStudyRequest(),
                                ADMIN)


def test_missing_or_bad_token_is_unauthenticated() -> None:
    checks = _authorizer()
    assert checks.principal("good") == A
    for token in ("", "bad"):
        with pytest.raises(Unauthenticated):
            checks.principal(token)


def test_bearer_metadata() -> None:
    assert auth.bearer([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer([("Authorization", b"bearer  abc ")]) == "abc"
    assert auth.bearer([("authorization", "Basic abc")]) == ""
    assert auth.bearer(None) == ""


def test_tokens_split_and_never_repeat() -> None:
    token_id, secret, token = new_token()
    assert split_token(token) == (token_id, secret)
    assert new_token()[2] != token
    for bad in ("", "ladder_", "ladder_abc", "other_abc.def", "ladder_.x"):
        assert split_token(bad) is None


def test_token_cache_forgets_after_its_ttl() -> None:
    now = [0.0]
    answers = {"t": A}
    calls = []

    def authenticate(token: str) -> Principal | None:
        calls.append(token)
        return answers.get(token)

    cache = TokenCache(authenticate, ttl=2.0, clock=lambda: now[0])
    assert cache("t") == A
    del answers["t"]  # revoked
    now[0] = 1.9
    assert cache("t") == A  # within the bound
    now[0] = 2.1
    assert cache("t") is None
    assert len(calls) == 2


def test_request_work_is_for_admins_only() -> None:
    """RequestWork hands out any tenant's trials: a tenant token is refused even with
    no node named, an admin (node agent) passes."""
    checks = _authorizer()
    method = _S + "RequestWork"
    for request in (suggest_pb2.RequestWorkRequest(),
                    suggest_pb2.RequestWorkRequest(node=suggest_pb2.NodeOffer(node_id="n1"))):
        with pytest.raises(PermissionError, match="admin token"):
            checks.authorise(method, request, A)
        checks.authorise(method, request, ADMIN)
