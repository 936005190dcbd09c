"""The gRPC channel(s) to a server: addresses, TLS, bearer metadata, and
failover between several addresses.

Addresses: `host:port` or `http://host:port` (plaintext), `https://host:port`
(TLS with the system roots unless `tls` says otherwise). Several addresses,
as a list or comma-separated, are tried in turn: a call that fails with
UNAVAILABLE is tried on the next address (a `ScheduleTask` without an
idempotency key only when the connection could not be made, so a task is
never scheduled twice by a retry), and later calls stay on the address that
answered. That is how a client rides the failover of a cluster of replicas
(give it every replica's address): a standby forwards calls to the leader,
and a dead replica refuses connections. A worker moves to the next address
at each reconnect.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from ._gen.switchyard.v1 import orchestrator_pb2_grpc, schedule_pb2_grpc, worker_pb2_grpc
from .errors import from_rpc_error, invalid_argument

Metadata = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class TLS:
    """TLS settings. `ca_file`: the roots to trust (PEM; default the system's);
    `cert_file` and `key_file`: a client certificate for mutual TLS;
    `server_name`: override the name checked in the server's certificate."""

    ca_file: Optional[Union[str, Path]] = None
    cert_file: Optional[Union[str, Path]] = None
    key_file: Optional[Union[str, Path]] = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise invalid_argument("tls", "cert_file and key_file go together")
        read = lambda p: Path(p).read_bytes() if p is not None else None  # noqa: E731
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class Endpoint:
    """One parsed address."""

    target: str
    secure: bool


def parse_addresses(addresses: Union[str, Sequence[str]]) -> List[Endpoint]:
    items = [a.strip() for a in addresses.split(",")] if isinstance(addresses, str) else [str(a).strip() for a in addresses]
    items = [a for a in items if a]
    if not items:
        raise invalid_argument("address", "a server address is required, for example 127.0.0.1:50051")
    out = []
    for a in items:
        secure = False
        if a.startswith("https://"):
            secure, a = True, a[len("https://"):]
        elif a.startswith("http://"):
            a = a[len("http://"):]
        a = a.rstrip("/")
        if "/" in a and not a.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
            raise invalid_argument("address", f"a gRPC server address has no path: {a!r}")
        out.append(Endpoint(a, secure))
    return out


def build_metadata(token: Optional[str], metadata: Optional[Mapping[str, str]]) -> Metadata:
    md: Dict[str, str] = {}
    for k, v in (metadata or {}).items():
        md[k.lower()] = v
    if token:
        md["authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
    return tuple(md.items())


_DEFAULT_OPTIONS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a server restart.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


def _connect_failure(err: grpc.RpcError) -> bool:
    """Whether an UNAVAILABLE error says the request never reached a server."""
    text = ((err.details() if hasattr(err, "details") else "") or "").lower()
    return any(s in text for s in ("failed to connect", "connection refused", "connect failed", "no route", "dns resolution failed", "name resolution"))


class Connection:
    """Lazily created `grpc.aio` channels to one or more addresses."""

    def __init__(
        self,
        addresses: Union[str, Sequence[str]],
        *,
        token: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        tls: Union[TLS, bool, None] = None,
        channel_options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.endpoints = parse_addresses(addresses)
        self.metadata: Metadata = build_metadata(token, metadata)
        self._tls = tls
        self._options = tuple(_DEFAULT_OPTIONS) + tuple(channel_options)
        self._channels: List[Optional[grpc.aio.Channel]] = [None] * len(self.endpoints)
        self._orch: List[Any] = [None] * len(self.endpoints)
        self._work: List[Any] = [None] * len(self.endpoints)
        self._sched: List[Any] = [None] * len(self.endpoints)
        # The bound multicallables by method name (`Service.Method` for a
        # service other than the orchestrator), per address.
        self._calls: List[Dict[str, Any]] = [{} for _ in self.endpoints]
        self.current = 0
        self.closed = False

    def _channel(self, i: int) -> grpc.aio.Channel:
        ch = self._channels[i]
        if ch is None:
            if self.closed:
                raise RuntimeError("the connection is closed")
            ep = self.endpoints[i]
            options = list(self._options)
            tls = self._tls
            if isinstance(tls, TLS) and tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            if isinstance(tls, TLS):
                ch = grpc.aio.secure_channel(ep.target, tls.credentials(), options=options)
            elif tls is True or (tls is None and ep.secure):
                ch = grpc.aio.secure_channel(ep.target, grpc.ssl_channel_credentials(), options=options)
            else:
                ch = grpc.aio.insecure_channel(ep.target, options=options)
            self._channels[i] = ch
        return ch

    def orchestrator(self, i: Optional[int] = None) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        i = self.current if i is None else i
        stub = self._orch[i]
        if stub is None:
            stub = self._orch[i] = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel(i))
        return stub

    def worker(self, i: Optional[int] = None) -> worker_pb2_grpc.WorkerServiceStub:
        i = self.current if i is None else i
        stub = self._work[i]
        if stub is None:
            stub = self._work[i] = worker_pb2_grpc.WorkerServiceStub(self._channel(i))
        return stub

    def schedules(self, i: Optional[int] = None) -> schedule_pb2_grpc.ScheduleServiceStub:
        i = self.current if i is None else i
        stub = self._sched[i]
        if stub is None:
            stub = self._sched[i] = schedule_pb2_grpc.ScheduleServiceStub(self._channel(i))
        return stub

    def channel(self, i: Optional[int] = None) -> grpc.aio.Channel:
        return self._channel(self.current if i is None else i)

    def advance(self, from_index: int) -> int:
        """Moves to the address after `from_index` (if no one moved since)."""
        if self.current == from_index:
            self.current = (from_index + 1) % len(self.endpoints)
        return self.current

    def direct(self, method: str) -> Optional[Any]:
        """With a single address, `OrchestratorService.<method>`'s
        multicallable (for a hot path that awaits it itself and maps its
        `grpc.RpcError` with `from_rpc_error`); None with several, where
        `unary` fails over."""
        if len(self.endpoints) != 1:
            return None
        calls = self._calls[0]
        fn = calls.get(method)
        if fn is None:
            fn = calls[method] = getattr(self.orchestrator(0), method)
        return fn

    async def unary(
        self,
        method: str,
        request: Any,
        timeout: Optional[float],
        *,
        safe: bool = True,
        service: str = "OrchestratorService",
    ) -> Any:
        """Calls `<service>.<method>` (`OrchestratorService` or
        `ScheduleService`), failing over to the next address on UNAVAILABLE;
        raises a `SwitchyardError`."""
        n = len(self.endpoints)
        index = self.current
        metadata = self.metadata or None
        key = method if service == "OrchestratorService" else f"{service}.{method}"
        for tried in range(1, n + 1):
            calls = self._calls[index]
            fn = calls.get(key)
            if fn is None:
                if service == "OrchestratorService":
                    stub: Any = self.orchestrator(index)
                elif service == "ScheduleService":
                    stub = self.schedules(index)
                else:
                    raise ValueError(f"unknown service {service!r}")
                fn = calls[key] = getattr(stub, method)
            try:
                return await fn(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as err:
                if tried < n and err.code() == grpc.StatusCode.UNAVAILABLE and (safe or _connect_failure(err)):
                    index = self.advance(index)
                    continue
                raise from_rpc_error(err, method) from None
        raise AssertionError("unreachable")

    async def health(self, timeout: float = 5.0, index: Optional[int] = None) -> str:
        """`grpc.health.v1.Health/Check` for the whole server: SERVING,
        NOT_SERVING, ... (the messages are encoded by hand: the request is
        empty and the answer is one enum field)."""
        ch = self._channel(self.current if index is None else index)
        call = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            raw: bytes = await call(b"", timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, "Health/Check") from None
        status = raw[1] if len(raw) >= 2 and raw[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")

    async def wait_for_serving(self, timeout: float = 20.0) -> None:
        """Waits until some address's health check says SERVING."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Optional[BaseException] = None
        while True:
            for i in range(len(self.endpoints)):
                try:
                    if await self.health(timeout=max(0.05, min(1.0, deadline - loop.time())), index=i) == "SERVING":
                        self.current = i
                        return
                except Exception as err:  # noqa: BLE001
                    last = err
            if loop.time() >= deadline:
                raise TimeoutError(f"no server said SERVING within {timeout} s (last error: {last})")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.closed = True
        channels = [c for c in self._channels if c is not None]
        self._channels = [None] * len(self.endpoints)
        self._orch = [None] * len(self.endpoints)
        self._work = [None] * len(self.endpoints)
        self._sched = [None] * len(self.endpoints)
        self._calls = [{} for _ in self.endpoints]
        for c in channels:
            await c.close()


def resolve_timeout(value: Any, default: Optional[float]) -> Optional[float]:
    """A per-call timeout: the call's own (seconds or timedelta; None for
    none), else the client's default."""
    if value is _DEFAULT:
        return default
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: The marker for "the client's default timeout".
_DEFAULT: Any = _Default()
DEFAULT = _DEFAULT

Callback = Callable[..., Any]
