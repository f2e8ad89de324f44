"""Authentication and authorisation of every RPC, in one place: ``AuthInterceptor``,
installed by ``ladder.grpcserver.ServiceHost`` on every service when LADDER_AUTH is on.

Authentication: the call's ``authorization: Bearer <token>`` metadata names a tenant
(``ladder.tenancy``); no token, a malformed, unknown or revoked one answers
UNAUTHENTICATED. The standard health service is exempt (probes carry no token).

Authorisation: ``RPC_RULES`` says, for every RPC of every service, which request fields
name a study or a trial. A study belongs to the tenant that created it (``Study.tenant``),
a trial to its study's tenant. A non-admin caller naming a study or trial of another
tenant gets NOT_FOUND with the same message as an unknown id, so ids do not leak; one
naming an unknown study or trial gets NOT_FOUND too (the owner cannot be established).
An admin passes every check; RequestWork (a node agent asking for any tenant's work) is
for admins only (``ADMIN_ONLY``: PERMISSION_DENIED for other tenants). RPCs that list
(ListStudies, ListStudyListings) name nothing: their handlers keep only what
``caller()`` may see. An RPC missing from the table is refused (PERMISSION_DENIED): a
new RPC is closed until its rule is written, and ``tests/unit/test_auth_rules.py`` fails
until then.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from ladder.config import Settings
from ladder.errors import AlreadyExists, NotFound, Unauthenticated
from ladder.tenancy import Principal, TenantStore, TokenCache

EXEMPT_PREFIX = "/grpc.health.v1.Health/"
AUTHORIZATION = "authorization"

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "ladder_caller", default=None
)


def caller() -> Principal | None:
    """The principal of the call being handled; None when authentication is off (the
    caller then sees everything)."""
    return _caller.get()


def may_see(owner: str) -> bool:
    """Whether the current caller may see a study owned by ``owner``."""
    principal = caller()
    return principal is None or principal.may_see(owner)


def owner_for_new() -> str:
    """The tenant a study created by the current call belongs to ('' with auth off)."""
    principal = caller()
    return principal.tenant if principal else ""


@dataclass(frozen=True)
class Names:
    """A request field (dotted path) that names a study or a trial."""

    kind: str  # STUDY, TRIAL or NEW_STUDY
    field: str


STUDY = "study"
TRIAL = "trial"
NEW_STUDY = "new study"  # an id the call creates: taken by another tenant -> ALREADY_EXISTS
# Admins only, whatever the field holds: RequestWork hands out any tenant's trials to a
# node, so only a node agent may call it, and a node agent authenticates with an admin
# token (or runs with auth off). Others get PERMISSION_DENIED.
ADMIN_ONLY = "admin only"


def study(field: str = "study_id") -> Names:
    return Names(STUDY, field)


def trial(field: str = "trial_id") -> Names:
    return Names(TRIAL, field)


# The handler filters what it answers by ``caller()``.
FILTERED: tuple[Names, ...] = ()

_S = "/ladder.v1.SuggestService/"
_E = "/ladder.v1.EvaluateService/"
_L = "/ladder.v1.LineageService/"

RPC_RULES: Mapping[str, tuple[Names, ...]] = {
    _S + "CreateStudy": (Names(NEW_STUDY, "study_id"), study("config.warm_start.from_study_id")),
    _S + "GetStudy": (study(),),
    _S + "ListStudies": FILTERED,
    _S + "Suggest": (study(),),
    _S + "StopStudy": (study(),),
    _S + "ResumeStudy": (study(),),
    _S + "PauseStudy": (study(),),
    _S + "CancelStudy": (study(),),
    _S + "UpdateStudy": (study(),),
    _S + "RequestWork": (Names(ADMIN_ONLY, "node.node_id"),),
    _E + "StartTrial": (trial(),),
    _E + "Heartbeat": (trial(),),
    _E + "ReportCheckpoint": (trial(),),
    _E + "CompleteTrial": (trial(),),
    _E + "PruneTrial": (trial(),),
    _E + "FailTrial": (trial(),),
    _E + "PauseTrial": (trial(),),
    _E + "GetTrial": (trial(),),
    _E + "StopTrial": (trial(),),
    _L + "GetTrialLineage": (trial(),),
    _L + "ListTrials": (study(),),
    _L + "GetBestTrial": (study(),),
    _L + "GetStudySummary": (study(),),
    _L + "ListStudyListings": FILTERED,
    _L + "GetStudyCurves": (study(),),
    _L + "GetStudyRungs": (study(),),
}


class Owners(Protocol):
    """Who owns what: the tenant of a study, the study of a trial (None: unknown)."""

    def study_owner(self, study_id: str) -> str | None: ...

    def study_of_trial(self, trial_id: str) -> str | None: ...


class StateOwners:
    """``Owners`` read from the Redis hot state (``ladder.state``). A study's owner and
    a trial's study never change, so both are cached once found."""

    def __init__(self, state: Any, capacity: int = 100_000) -> None:
        self.state = state
        self.capacity = capacity
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def study_owner(self, study_id: str) -> str | None:
        with self._lock:
            owner = self._owners.get(study_id)
        if owner is not None:
            return owner
        found = self.state.studies.get(study_id)
        if found is None:
            return None
        with self._lock:
            if len(self._owners) >= self.capacity:
                self._owners.clear()
            self._owners[study_id] = found.tenant
        return found.tenant

    def study_of_trial(self, trial_id: str) -> str | None:
        try:
            return self.state.trials.study_of(trial_id)
        except NotFound:
            return None


def field_value(request: Any, path: str) -> str:
    """The string at dotted ``path`` of ``request`` ('' when unset)."""
    value: Any = request
    for part in path.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


def bearer(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The token of an ``authorization: Bearer <token>`` entry; '' when there is none."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class Authorizer:
    """The checks, apart from gRPC: who a token is, and whether a request of ``method``
    is theirs (raises the domain error the call answers with)."""

    def __init__(
        self,
        authenticate: Callable[[str], Principal | None],
        owners: Owners,
        rules: Mapping[str, tuple[Names, ...]] = RPC_RULES,
    ) -> None:
        self.authenticate = authenticate
        self.owners = owners
        self.rules = rules

    def principal(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated("no token: send 'authorization: Bearer <token>' "
                                  "(LADDER_TOKEN, or the state folder's token file)")
        principal = self.authenticate(token)
        if principal is None:
            raise Unauthenticated("invalid or revoked token")
        return principal

    def authorise(self, method: str, request: Any, principal: Principal) -> None:
        names = self.rules.get(method)
        if names is None:
            raise PermissionError(f"no authorisation rule for {method}")
        if principal.admin:
            return
        for name in names:
            if name.kind == ADMIN_ONLY:
                raise PermissionError(f"{method.rsplit('/', 1)[-1]} is for node agents: "
                                      "call it with an admin token")
            value = field_value(request, name.field)
            if value:
                self._check(name.kind, value, principal)

    def _check(self, kind: str, value: str, principal: Principal) -> None:
        if kind == TRIAL:
            study_id = self.owners.study_of_trial(value)
            owner = self.owners.study_owner(study_id) if study_id else None
            if owner is None or not principal.may_see(owner):
                raise NotFound(f"trial {value!r} not found")
            return
        owner = self.owners.study_owner(value)
        if kind == NEW_STUDY:
            if owner is not None and not principal.may_see(owner):
                raise AlreadyExists(f"study id {value!r} is taken: choose another")
            return
        if owner is None or not principal.may_see(owner):
            raise NotFound(f"study {value!r} not found")


class AuthInterceptor(grpc.ServerInterceptor):
    """``Authorizer`` on every unary RPC but health; the handler runs with ``caller()``
    set. Installed inside ``RefusalInterceptor``, which turns its errors into statuses."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if method.startswith(EXEMPT_PREFIX) or handler is None:
            return handler
        if handler.unary_unary is None:
            return None  # Ladder serves no streaming RPC but health's: UNIMPLEMENTED
        behavior = handler.unary_unary
        authorizer = self.authorizer

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            principal = authorizer.principal(bearer(context.invocation_metadata()))
            try:
                authorizer.authorise(method, request, principal)
            except PermissionError as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            token = _caller.set(principal)
            try:
                return behavior(request, context)
            finally:
                _caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_interceptor(settings: Settings) -> AuthInterceptor | None:
    """The interceptor a service installs: None when LADDER_AUTH is off. Tokens and
    owners are read from the stack's Redis (``ladder.tenancy`` says why)."""
    if not settings.auth:
        return None
    from ladder.state import open_state  # only services with auth on connect for it

    state = open_state(settings)
    store = TenantStore(state.client, state.keys.root)
    return AuthInterceptor(
        Authorizer(TokenCache(store.authenticate, settings.auth_cache_s), StateOwners(state))
    )
