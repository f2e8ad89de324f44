"""gRPC channels and server credentials, the one place TLS and the API token are applied.

Every client of the services (``LadderClient``, the CLI's queries, the stack's probes,
the load simulator, the dashboard) opens its channels here: with TLS when
``Settings.tls`` says so, and with ``authorization: Bearer <token>`` on every call when
``Settings.token`` holds one (LADDER_TOKEN, else the state folder's token file). A
server with auth off ignores the token, so sending it is always safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from ladder import addresses
from ladder.auth import AUTHORIZATION
from ladder.config import Settings, Tls

Options = Sequence[tuple[str, Any]]


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(tls: Tls) -> grpc.ServerCredentials:
    """The services' TLS credentials; requiring a client certificate when
    ``tls.client_ca`` is set (mutual TLS)."""
    pair = [(_read(tls.key), _read(tls.cert))]
    if tls.client_ca:
        return grpc.ssl_server_credentials(
            pair, root_certificates=_read(tls.client_ca), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def channel_credentials(tls: Tls) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.client_key),
        certificate_chain=_read(tls.client_cert),
    )


def _tls_options(tls: Tls, options: Options) -> list[tuple[str, Any]]:
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return [*options, *extra]


def token_metadata(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The metadata that carries ``settings.token`` (empty without one)."""
    return ((AUTHORIZATION, f"Bearer {settings.token}"),) if settings.token else ()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def _with_token(details: Any, metadata: tuple[tuple[str, str], ...]) -> _CallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        [*(details.metadata or ()), *metadata],
        details.credentials,
        details.wait_for_ready,
        details.compression,
    )


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        return continuation(_with_token(client_call_details, self.metadata), request)


class _AioTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            grpc.aio.Metadata(*(client_call_details.metadata or ()), *self.metadata),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel(addr: str, settings: Settings, options: Options = ()) -> grpc.Channel:
    """A channel to ``addr``: TLS and the token as ``settings`` say. ``addr`` may list
    replicas ("h1:p1,h2:p2"): the channel balances over them (``ladder.addresses``)."""
    addr, options = addresses.target(addr), addresses.channel_options(options)
    tls = settings.tls
    if tls.connects:
        raw = grpc.secure_channel(addr, channel_credentials(tls), _tls_options(tls, options))
    else:
        raw = grpc.insecure_channel(addr, options=list(options))
    metadata = token_metadata(settings)
    return grpc.intercept_channel(raw, _TokenInterceptor(metadata)) if metadata else raw


def probe_channel(addr: str) -> grpc.Channel:
    """A channel for health probes (exempt from auth, so no token): TLS as LADDER_TLS_*
    say, so a probe reaches a TLS service. Of a list of replicas, the first."""
    addr = addresses.first(addr)
    tls = Tls.from_env()
    if tls.connects:
        return grpc.secure_channel(addr, channel_credentials(tls), _tls_options(tls, ()))
    return grpc.insecure_channel(addr)


def aio_channel(
    addr: str, settings: Settings, options: Options = (), interceptors: Sequence[Any] = ()
) -> grpc.aio.Channel:
    """``channel`` for asyncio clients (``interceptors`` run before the token's)."""
    addr, options = addresses.target(addr), addresses.channel_options(options)
    tls = settings.tls
    metadata = token_metadata(settings)
    interceptors = [*interceptors, *([_AioTokenInterceptor(metadata)] if metadata else [])]
    if tls.connects:
        return grpc.aio.secure_channel(
            addr, channel_credentials(tls), _tls_options(tls, options),
            interceptors=interceptors or None,
        )
    return grpc.aio.insecure_channel(
        addr, options=list(options), interceptors=interceptors or None
    )
