"""Run a gRPC service the Ladder way: OTel server spans, every request held to its
size limits (``ladder.limits``) before its handler runs, domain errors answered
with their status code (``STATUS_OF``), maximum message sizes set on purpose, the
standard health service, and a graceful stop on SIGTERM / SIGINT (health flips to
NOT_SERVING, in-flight calls get ``grace`` seconds, then ``on_stop`` releases the
rest). With LADDER_AUTH on, every call but health's is authenticated and authorised
(``ladder.auth``); with LADDER_TLS_CERT / LADDER_TLS_KEY set it is served over TLS."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace

from ladder import errors, limits, telemetry
from ladder.auth import server_interceptor
from ladder.channels import server_credentials
from ladder.config import Settings

log = logging.getLogger("ladder.grpc")

# The one place a refusal becomes a status code. Looked up along the exception's
# MRO, so subclasses (e.g. space.StudyConfigError, an InvalidArgument) answer like
# their base. Every Redis error answers UNAVAILABLE: the client retries those.
STATUS_OF: Mapping[type[BaseException], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.StaleAttempt: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BudgetExhausted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.StudyPaused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.AtCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    redis.RedisError: grpc.StatusCode.UNAVAILABLE,
}

# Request fields that identify what a call is about: tagged on its span and logged
# with a refusal.
_ID_FIELDS = ("study_id", "trial_id", "attempt_id", "worker_id")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and details ``exc`` answers with; None when it is not a
    refusal (a bug: it propagates and gRPC answers UNKNOWN)."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            if isinstance(exc, redis.RedisError):
                return code, f"state store unavailable: {exc}"
            return code, str(exc)
    return None


def answer_refusals(
    behavior: Callable[[Any, grpc.ServicerContext], Any], method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """``behavior`` (a unary handler) answering refusals with their status code; a
    request over a size limit is refused before ``behavior`` sees it, so no handler
    can store (or publish) an oversize field."""
    name = method.rsplit("/", 1)[-1]

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        # Cut to the id limit: the request is not checked yet, and an oversize id must
        # not become an oversize span attribute or log line.
        ids = {field: getattr(request, field, "")[: limits.ID] for field in _ID_FIELDS}
        ids = {field: value for field, value in ids.items() if value}
        span = trace.get_current_span()
        for field, value in ids.items():
            span.set_attribute(f"ladder.{field}", value)
        try:
            limits.check(request)
            return behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - status_of sorts refusals from bugs
            status = status_of(exc)
            if status is None:
                raise
            code, details = status
            if code == grpc.StatusCode.UNAVAILABLE:
                log.warning("%s unavailable: %s", name, details, extra=ids)
            else:
                log.info("%s refused: %s", name, details, extra=ids)
            context.abort(code, details)
            raise AssertionError("unreachable: abort raises") from exc

    return handle


class RefusalInterceptor(grpc.ServerInterceptor):
    """Applies ``answer_refusals`` to every unary method of every servicer."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            answer_refusals(handler.unary_unary, handler_call_details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# Larger requests are refused before decoding (RESOURCE_EXHAUSTED); the limit sits far
# above the largest valid request so an oversize field below it gets the
# INVALID_ARGUMENT that names it. Answers may be large (ListTrials of a big study).
MESSAGE_SIZE_OPTIONS = (
    ("grpc.max_receive_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", limits.MAX_RESPONSE_BYTES),
)


class ServiceHost:
    def __init__(
        self,
        name: str,
        port: int,
        host: str = "127.0.0.1",
        workers: int = 16,
        settings: Settings | None = None,
    ) -> None:
        # The services pass Settings.bind_host (LADDER_BIND_HOST; containers: 0.0.0.0).
        # ``settings`` (default: from the environment) set authentication and TLS.
        self.name = name
        settings = settings or Settings.from_env()
        auth = server_interceptor(settings)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
            # OTel outermost, so a refusal is recorded on the call's span; the auth
            # checks inside RefusalInterceptor, which answers their refusals.
            interceptors=[
                *telemetry.grpc_server_interceptors(),
                RefusalInterceptor(),
                *([auth] if auth else []),
            ],
            options=[("grpc.so_reuseport", 0), *MESSAGE_SIZE_OPTIONS],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.tls.serves:
            self.port = self.server.add_secure_port(
                f"{host}:{port}", server_credentials(settings.tls)
            )
        else:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise SystemExit(f"{name}: cannot bind {host}:{port}")
        self.stopped = threading.Event()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.health.set(self.name, status)

    def run(self, on_stop: Callable[[], None] | None = None, grace: float = 5.0) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully. Blocks."""

        def _signal(signum: int, _frame: object) -> None:
            log.info("%s: signal %d, stopping", self.name, signum)
            self.stopped.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.server.start()
        self.set_serving(True)
        log.info("%s serving on port %d", self.name, self.port)
        self.stopped.wait()
        self.set_serving(False)
        self.server.stop(grace).wait()
        if on_stop:
            on_stop()
        telemetry.shutdown()
        log.info("%s stopped", self.name)
