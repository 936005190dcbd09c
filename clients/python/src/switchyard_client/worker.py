"""The asyncio worker: runs task handlers for `switchyard.v1.WorkerService`.

```python
worker = Worker("127.0.0.1:50051", concurrency=8)

@worker.task("send-email")
async def send_email(payload: dict, ctx: TaskContext) -> dict:
    ctx.progress(50, "sending")
    ctx.log(f"sending to {payload['to']}")
    return {"sent": True}

worker.run_forever()   # until SIGTERM/SIGINT, then drains
```

Protocol, as this worker plays it (the same as the Rust and Node workers):

- Each stream's first message is `Register {worker_name, task_names, slots,
  immediate_slots}`; it waits (10 s at most) for `Registered`, then sends a
  `Heartbeat` every `heartbeat_interval` (else a third of `lease_ttl`, else
  5 s; never under 100 ms) while the stream is open.
- The server pushes `Assignment`s up to the free slots. Each runs its
  handler (an `async def` in the event loop, or a plain `def` in a thread);
  the outcome becomes:
  - a return value: `Complete` (even if a cancel arrived meanwhile);
  - an exception after the server's `CancelAssignment`: `CancelAck` (the task
    becomes CANCELLED);
  - an exception after the worker stopped the task itself (drain timeout,
    lost stream): nothing; the server requeues the task;
  - `FatalError`: `Fail`, not retried; `RetryableError(retry_after=...)`:
    `Fail`, retried after that delay; any other exception: `Fail`, retried
    after the task's backoff (kind: the exception's class name, details: its
    traceback).
  An assignment whose name has no handler fails for good (`no_handler`).
- `CancelAssignment` sets `ctx.cancelled` and cancels an async handler's
  asyncio task: it sees `asyncio.CancelledError` at its next `await`.
- A broken stream cancels its running handlers (reason `connection_lost`;
  their outcomes are not reported, the server requeues them) and reconnects
  after 100 ms .. 5 s of backoff with jitter.
- `stop()` (and SIGTERM/SIGINT under `run()`) drains: `Drain` (the server
  assigns nothing more), waits for running handlers up to `drain_timeout`,
  cancels the rest (reason `worker_shutdown`) and gives them 2 s, then
  closes the streams. A second signal stops at once.

Slots are per stream: handlers registered with their own `concurrency` get a
stream of their own (all streams share one HTTP/2 connection); the others
share one stream with the worker's `concurrency`. A group with 16 slots or
more is spread over several streams (one per 4 slots; at most 64 in all for
the worker's groups; `streams=` picks the number of the shared group's): grpc
completes one read and one write of a stream at a time, so a single stream
caps a process at a few thousand tasks a second, while several streams'
messages are handled in batches. The server sees a worker per stream (the
same name); the slots add up to `concurrency`, and the `immediate_slots` all
go to the first stream of the group.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import os
import random
import signal
import socket
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import grpc.aio

from . import convert
from ._gen.switchyard.v1 import worker_pb2 as wpb
from .connection import TLS, Connection
from .errors import FatalError, RetryableError, SwitchyardError, error_class, from_rpc_error, invalid_argument
from .types import TaskType

__all__ = ["Worker", "TaskContext", "Handler", "DEFAULT_CONCURRENCY", "DEFAULT_IMMEDIATE_SLOTS", "DEFAULT_DRAIN_TIMEOUT"]

log = logging.getLogger("switchyard.worker")

#: Default `concurrency`: normal slots of the shared stream.
DEFAULT_CONCURRENCY = 10
#: Default `immediate_slots`.
DEFAULT_IMMEDIATE_SLOTS = 1
#: Default `drain_timeout`, in seconds.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: A group with at least this many slots is spread over several streams.
SPLIT_FROM_SLOTS = 16
#: ... one per this many slots ...
SLOTS_PER_STREAM = 4
#: ... and at most this many streams in all for a worker's groups (HTTP/2
#: servers commonly allow 100 to 200 streams on a connection).
MAX_STREAMS = 64

REGISTER_TIMEOUT = 10.0
CANCEL_GRACE = 2.0
CLOSE_TIMEOUT = 5.0
RECONNECT_FLOOR = 0.1
RECONNECT_CAP = 5.0
DEFAULT_HEARTBEAT = 5.0
MIN_HEARTBEAT = 0.1
MAX_DETAILS_BYTES = 8 * 1024
MAX_MESSAGE_BYTES = 1024

Handler = Callable[[Dict[str, Any], "TaskContext"], Any]
F = TypeVar("F", bound=Handler)

# Codes of a refused registration that a retry cannot fix.
_PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def _cut(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


class TaskContext:
    """One attempt of a task, as its handler sees it.

    Attributes come from the assignment: `task_id`, `name`, `attempt` (from
    1), `max_attempts`, `idempotency_key` (`<task id>:<attempt>`, identical
    if this attempt is delivered again: use it to deduplicate side effects),
    `user_id`, `session_id`, `labels`, `deadline`, `immediate`,
    `traceparent`, `parent_id`, `task_type`.

    `cancelled` turns true when the task is cancelled (by the server: cancel,
    disconnect, timeout, server shutdown; or by the worker: drain timeout,
    lost connection); `cancel_reason` says which (`cancelled`,
    `disconnected`, `timeout`, `shutdown`, `worker_shutdown`,
    `connection_lost`). An async handler also gets `asyncio.CancelledError`.
    """

    __slots__ = (
        "_a",
        "_stream",
        "_session",
        "_task",
        "_labels",
        "cancelled",
        "cancel_reason",
        "cancelled_by_server",
        "_cancel_event",
        "_thread",
        "finished",
    )

    def __init__(self, assignment: wpb.Assignment, stream: "_Stream", session: int) -> None:
        self._a = assignment
        self._stream = stream
        self._session = session
        self._task: Optional[asyncio.Task[None]] = None
        self._labels: Optional[Dict[str, str]] = None
        self.cancelled = False
        self.cancel_reason: Optional[str] = None
        self.cancelled_by_server = False
        self._cancel_event: Optional[asyncio.Event] = None
        self._thread = False
        self.finished = False

    task_id = property(lambda self: self._a.task_id, doc="The task id.")
    name = property(lambda self: self._a.name, doc="The task name.")
    attempt = property(lambda self: self._a.attempt, doc="This attempt, from 1.")
    max_attempts = property(lambda self: self._a.max_attempts, doc="The number of attempts allowed.")
    idempotency_key = property(lambda self: self._a.idempotency_key, doc="`<task id>:<attempt>`: stable across redeliveries of this attempt.")
    user_id = property(lambda self: self._a.user_id, doc="The owner, as scheduled.")
    session_id = property(lambda self: self._a.session_id, doc="The session, as scheduled.")
    traceparent = property(lambda self: self._a.traceparent, doc="The W3C trace context of this attempt, or ''.")
    immediate = property(lambda self: self._a.immediate, doc="Whether the task runs in the immediate lane.")
    parent_id = property(lambda self: self._a.parent_id, doc="A workflow step: its workflow task's id.")

    @property
    def task_type(self) -> Optional[TaskType]:
        """The task type (SIMPLE, also for a workflow step)."""
        return convert._TYPE_PY.get(self._a.task_type)

    @property
    def labels(self) -> Dict[str, str]:
        """The task's labels."""
        if self._labels is None:
            self._labels = dict(self._a.labels)
        return self._labels

    @property
    def deadline(self) -> Optional[datetime]:
        """When the attempt times out, if it has a timeout."""
        return convert.timestamp_to_datetime(self._a, "deadline")

    def progress(self, percent: float, message: str = "") -> None:
        """Reports progress (0 to 100) and a short message; shown in status
        and streamed to watchers. Safe from any thread."""
        pct = max(0.0, min(100.0, float(percent)))
        msg = wpb.WorkerMessage(
            progress=wpb.Progress(task_id=self._a.task_id, attempt=self._a.attempt, percent=pct, message=_cut(message, MAX_MESSAGE_BYTES))
        )
        self._stream.send_from_any_thread(self._session, msg)

    def log(self, message: str, level: str = "info") -> None:
        """Adds a line (`debug`, `info`, `warn`, `error`) to the task's log.
        Safe from any thread."""
        lvl = {"warning": "warn", "err": "error"}.get(level, level)
        msg = wpb.WorkerMessage(log=wpb.Log(task_id=self._a.task_id, attempt=self._a.attempt, level=lvl, message=_cut(message, 8 * 1024)))
        self._stream.send_from_any_thread(self._session, msg)

    def debug(self, message: str) -> None:
        """`log(message, "debug")`."""
        self.log(message, "debug")

    def info(self, message: str) -> None:
        """`log(message, "info")`."""
        self.log(message, "info")

    def warn(self, message: str) -> None:
        """`log(message, "warn")`."""
        self.log(message, "warn")

    def error(self, message: str) -> None:
        """`log(message, "error")`."""
        self.log(message, "error")

    async def wait_cancelled(self) -> str:
        """Resolves with the reason once the task is cancelled."""
        if self.cancelled:
            return self.cancel_reason or "cancelled"
        if self._cancel_event is None:
            self._cancel_event = asyncio.Event()
        await self._cancel_event.wait()
        return self.cancel_reason or "cancelled"

    def raise_if_cancelled(self) -> None:
        """For code that polls: raises `asyncio.CancelledError` once the task
        is cancelled."""
        if self.cancelled:
            raise asyncio.CancelledError(self.cancel_reason)

    def _cancel(self, reason: str, by_server: bool) -> None:
        if self.finished:
            return
        if not self.cancelled:
            self.cancelled = True
            self.cancel_reason = reason
            self.cancelled_by_server = by_server
            if self._cancel_event is not None:
                self._cancel_event.set()
        elif by_server:
            self.cancelled_by_server = True
        if self._task is not None and not self._thread:
            self._task.cancel(reason)


@dataclass
class _Group:
    handlers: Dict[str, Tuple[Handler, bool]]
    slots: int
    immediate_slots: int
    # The first stream of a group: the others log their (re)connections at
    # debug level, so a restart is not reported once per stream.
    lead: bool = True


class Worker:
    """Runs task handlers, registered by task name, for a Switchyard server.

    - `address`, `token`, `metadata`, `tls`: as for `AsyncClient` (several
      addresses, such as the replicas of a cluster, comma-separated or a
      list: each reconnect goes to the next one and registers again); or
      `connection` to share one.
    - `concurrency`: normal slots of the shared stream (1..10000, default
      10); `immediate_slots`: slots reserved for immediate tasks (0..10000,
      default 1).
    - `name`: `Register.worker_name` (default `<host>-<pid>`).
    - `drain_timeout`: how long a drain waits for running handlers before
      cancelling them (seconds, default 30).
    - `streams`: how many streams the shared slots are spread over (1..100;
      default one per 4 slots from 16 slots on, at most 64): see the module
      doc.
    """

    def __init__(
        self,
        address: Union[str, Sequence[str]] = "127.0.0.1:50051",
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        immediate_slots: int = DEFAULT_IMMEDIATE_SLOTS,
        name: Optional[str] = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        token: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        tls: Union[TLS, bool, None] = None,
        connection: Optional[Connection] = None,
        streams: Optional[int] = None,
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        if len(self.name.encode()) > 200:
            raise invalid_argument("worker_name", "must be at most 200 bytes")
        self.concurrency = _slots(concurrency, "concurrency", 1)
        self.immediate_slots = _slots(immediate_slots, "immediate_slots", 0)
        self.drain_timeout = float(drain_timeout)
        self.streams = None if streams is None else _slots(streams, "streams", 1, 100)
        self._own_connection = connection is None
        self.connection = connection or Connection(address, token=token, metadata=metadata, tls=tls)
        self._handlers: Dict[str, Tuple[Handler, Optional[int], Optional[int]]] = {}
        self._streams: List[_Stream] = []
        self._started = False
        self._stopping: Optional[asyncio.Task[None]] = None
        self._changed: Optional[asyncio.Event] = None
        self.on_task: Optional[Callable[[str, str, int, str], None]] = None
        self._signals = 0

    # Registration of handlers.

    def task(self, name: str, *, concurrency: Optional[int] = None, immediate_slots: Optional[int] = None) -> Callable[[F], F]:
        """A decorator that registers the handler of a task name. With
        `concurrency`, tasks of this name get a stream of their own with that
        many slots (and `immediate_slots`, default 1)."""

        def decorate(fn: F) -> F:
            self.register(name, fn, concurrency=concurrency, immediate_slots=immediate_slots)
            return fn

        return decorate

    def register(self, name: str, handler: Handler, *, concurrency: Optional[int] = None, immediate_slots: Optional[int] = None) -> None:
        """Registers `handler(payload, ctx)` for a task name (see `task`)."""
        if self._started:
            raise RuntimeError("handlers must be registered before the worker starts")
        if not isinstance(name, str) or not name:
            raise invalid_argument("task_names", "a task name must be a non-empty string")
        if name in self._handlers:
            raise invalid_argument("task_names", f"the task name {name!r} has a handler already")
        if not callable(handler):
            raise invalid_argument(f"handlers.{name}", "must be callable")
        if concurrency is not None:
            _slots(concurrency, f"handlers.{name}.concurrency", 1)
        if immediate_slots is not None:
            _slots(immediate_slots, f"handlers.{name}.immediate_slots", 0)
        self._handlers[name] = (handler, concurrency, immediate_slots)

    @property
    def task_names(self) -> List[str]:
        """The task names this worker handles."""
        return sorted(self._handlers)

    # Life cycle.

    async def start(self) -> None:
        """Connects and registers in the background (returns at once)."""
        if self._started:
            return
        if not self._handlers:
            raise invalid_argument("handlers", "the worker has no handler: register at least one task name")
        self._started = True
        self._changed = asyncio.Event()
        shared = _Group({}, self.concurrency, self.immediate_slots)
        own: List[_Group] = []
        for name, (fn, conc, imm) in sorted(self._handlers.items()):
            entry = (fn, _is_async(fn))
            if conc is None:
                shared.handlers[name] = entry
            else:
                own.append(_Group({name: entry}, conc, DEFAULT_IMMEDIATE_SLOTS if imm is None else imm))
        budget = MAX_STREAMS
        groups: List[_Group] = []
        for g in ([shared] if shared.handlers else []) + own:
            want = self.streams if g is shared and self.streams is not None else _auto_streams(g.slots)
            n = want if g is shared and self.streams is not None else max(1, min(want, budget))
            budget -= n
            groups.extend(_split(g, n))
        self._streams = [_Stream(self, g) for g in groups]
        for s in self._streams:
            s.start()

    async def wait_registered(self, timeout: float = 10.0) -> List[str]:
        """Waits until every stream is registered; returns the worker ids.
        Raises the server's refusal, or `TimeoutError`."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fatal = next((s.fatal for s in self._streams if s.fatal), None)
            if fatal is not None:
                raise fatal
            if all(s.worker_id for s in self._streams):
                return [s.worker_id for s in self._streams if s.worker_id]
            if self._stopping is not None:
                raise RuntimeError("the worker stopped before it registered")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"the worker did not register within {timeout} s")
            await self._wait_change(remaining)

    async def _wait_change(self, timeout: float) -> None:
        assert self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    @property
    def worker_ids(self) -> List[str]:
        """The ids the server gave the streams that are registered now."""
        return [s.worker_id for s in self._streams if s.worker_id]

    @property
    def running_tasks(self) -> int:
        """How many handlers are running."""
        return sum(len(s.running) for s in self._streams)

    @property
    def is_registered(self) -> bool:
        """Whether every stream is registered."""
        return bool(self._streams) and all(s.worker_id for s in self._streams)

    def stop(self) -> "asyncio.Task[None]":
        """Starts a graceful drain (see the module doc) and returns its task;
        safe to call twice, and from a signal handler."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._drain())
            self._notify()
        return self._stopping

    async def close(self) -> None:
        """Drains (as `stop()`) and waits for the end."""
        if not self._started:
            if self._own_connection:
                await self.connection.close()
            return
        await self.stop()

    def kill(self) -> None:
        """Stops at once: cancels every running handler (their tasks are
        requeued by the server) and closes the streams."""
        for s in self._streams:
            s.cancel_all("worker_shutdown")
            s.abort()
        self.stop()

    async def _drain(self) -> None:
        for s in self._streams:
            s.begin_drain()
        if self.running_tasks:
            log.info("draining: %d task(s) running, waiting up to %.1f s", self.running_tasks, self.drain_timeout)
            await self._wait_idle(self.drain_timeout)
        if self.running_tasks:
            log.warning("drain timeout passed; cancelling %d task(s)", self.running_tasks)
            for s in self._streams:
                s.cancel_all("worker_shutdown")
            await self._wait_idle(CANCEL_GRACE)
        await asyncio.gather(*(s.stop() for s in self._streams))
        if self._own_connection:
            await self.connection.close()
        self._notify()

    async def _wait_idle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.running_tasks and loop.time() < deadline:
            await self._wait_change(deadline - loop.time())

    async def run(self, *, handle_signals: bool = True) -> None:
        """Runs until `stop()` (or SIGTERM/SIGINT with `handle_signals`),
        then drains. Raises if the server refuses the registration for good."""
        loop = asyncio.get_running_loop()
        installed: List[int] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (int(signal.SIGTERM), int(signal.SIGINT)):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # not on this platform
                    pass
        try:
            await self.start()
            while self._stopping is None:
                fatal = next((s.fatal for s in self._streams if s.fatal), None)
                if fatal is not None:
                    await self.stop()
                    raise fatal
                await self._wait_change(3600)
            await self._stopping
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: draining (a second signal stops at once)", signal.Signals(sig).name)
            self.stop()
        else:
            log.warning("%s again: stopping at once", signal.Signals(sig).name)
            self.kill()

    def run_forever(self) -> None:
        """`asyncio.run(worker.run())`: for a script's main."""
        asyncio.run(self.run())

    def _task_done(self, task_id: str, name: str, attempt: int, outcome: str) -> None:
        if self.on_task is not None:
            try:
                self.on_task(task_id, name, attempt, outcome)
            except Exception:  # noqa: BLE001
                log.exception("on_task callback failed")
        self._notify()


def _slots(value: Any, field: str, minimum: int, maximum: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (minimum <= value <= maximum):
        raise invalid_argument(field, f"must be an integer from {minimum} to {maximum}, got {value!r}")
    return value


def _auto_streams(slots: int) -> int:
    return 1 if slots < SPLIT_FROM_SLOTS else min(MAX_STREAMS, slots // SLOTS_PER_STREAM)


def _split(g: _Group, streams: int) -> List[_Group]:
    """The group's slots spread over `streams` streams, never one without a
    normal slot. The immediate slots go to the first."""
    n = max(1, min(streams, g.slots))
    base, extra = divmod(g.slots, n)
    return [_Group(g.handlers, base + (1 if i < extra else 0), g.immediate_slots if i == 0 else 0, i == 0) for i in range(n)]


def _is_async(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def heartbeat_period(r: wpb.Registered) -> float:
    """Registered's heartbeat interval, else a third of the lease, else 5 s;
    never under 100 ms."""
    interval = r.heartbeat_interval.ToTimedelta().total_seconds() if r.HasField("heartbeat_interval") else 0.0
    ttl = r.lease_ttl.ToTimedelta().total_seconds() if r.HasField("lease_ttl") else 0.0
    every = interval if interval > 0 else (ttl / 3 if ttl > 0 else DEFAULT_HEARTBEAT)
    return max(MIN_HEARTBEAT, every)


_LOST = "lost"
_STOPPED = "stopped"
_FATAL = "fatal"


class _Stream:
    """One WorkerService stream and its reconnect loop."""

    def __init__(self, worker: Worker, group: _Group) -> None:
        self.worker = worker
        self.group = group
        self.running: Dict[Tuple[str, int], TaskContext] = {}
        self.worker_id: Optional[str] = None
        self.fatal: Optional[SwitchyardError] = None
        self.session = 0
        self.draining = False
        self.stopped = False
        self._call: Optional[Any] = None
        self._aborted: Optional[Any] = None  # the call we cancelled ourselves
        self._out: Deque[wpb.WorkerMessage] = collections.deque()
        self._wake_writer: Optional[asyncio.Future[None]] = None
        self._loop_task: Optional[asyncio.Task[None]] = None
        self._sleep: Optional[asyncio.Future[None]] = None
        self._session_done: Optional[asyncio.Future[None]] = None
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._loop_task = self.loop.create_task(self._run())

    # Sending.

    def send(self, session: int, msg: wpb.WorkerMessage) -> None:
        if session != self.session or self._call is None:
            return
        self._out.append(msg)
        w = self._wake_writer
        if w is not None and not w.done():
            w.set_result(None)

    def send_from_any_thread(self, session: int, msg: wpb.WorkerMessage) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.send(session, msg)
        else:
            self.loop.call_soon_threadsafe(self.send, session, msg)

    async def _writer(self, call: Any) -> None:
        out = self._out
        try:
            while True:
                while out:
                    await call.write(out.popleft())
                self._wake_writer = self.loop.create_future()
                await self._wake_writer
                self._wake_writer = None
        except (grpc.RpcError, asyncio.InvalidStateError, RuntimeError) as err:
            log.debug("write failed: %s", err)
        except grpc.aio.UsageError as err:  # the stream was closed
            log.debug("write failed: %s", err)

    # Drain and stop.

    def begin_drain(self) -> None:
        self.draining = True
        if self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(None)
        if self._call is not None:
            if self.worker_id is not None:
                self.send(self.session, wpb.WorkerMessage(drain=wpb.Drain()))
            else:
                self._aborted = self._call
                self._call.cancel()

    def cancel_all(self, reason: str) -> None:
        for ctx in list(self.running.values()):
            ctx._cancel(reason, by_server=False)

    def abort(self) -> None:
        self.stopped = True
        self.draining = True
        if self._call is not None:
            self._aborted = self._call
            self._call.cancel()

    async def stop(self) -> None:
        self.draining = True
        self.stopped = True
        if self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(None)
        call = self._call
        if call is not None:
            # Let the writer flush what is queued, then close our half and
            # wait for the server to close its own.
            deadline = self.loop.time() + CLOSE_TIMEOUT
            while self._out and self.loop.time() < deadline and self._call is call:
                await asyncio.sleep(0.005)
            try:
                await call.done_writing()
            except Exception:  # noqa: BLE001
                pass
            if self._session_done is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._session_done), max(0.0, deadline - self.loop.time()))
                except asyncio.TimeoutError:
                    self._aborted = call
                    call.cancel()
        if self._loop_task is not None:
            try:
                await self._loop_task
            except Exception:  # noqa: BLE001
                log.exception("worker stream loop failed")

    # The loop.

    async def _run(self) -> None:
        failures = 0
        conn = self.worker.connection
        while not self.draining:
            if conn.closed:
                log.log(logging.WARNING if self.group.lead else logging.DEBUG, "the connection was closed; the worker stops")
                break
            index = conn.current
            end, reason, was_registered = await self._session_once(conn, index)
            if end == _STOPPED or self.draining:
                break
            if end == _FATAL:
                self.worker._notify()
                break
            failures = 1 if was_registered else failures + 1
            if len(conn.endpoints) > 1:
                conn.advance(index)
            exp = min(RECONNECT_CAP, RECONNECT_FLOOR * 2 ** (failures - 1))
            delay = exp / 2 + random.random() * exp / 2
            log.log(
                logging.WARNING if self.group.lead else logging.DEBUG,
                "connection to the server lost (%s); reconnecting in %d ms",
                reason,
                delay * 1000,
            )
            self._sleep = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._sleep), delay)
            except asyncio.TimeoutError:
                pass
            self._sleep = None

    async def _session_once(self, conn: Connection, index: int) -> Tuple[str, str, bool]:
        self.session += 1
        session = self.session
        self._out.clear()
        try:
            call = conn.worker(index).Work(metadata=conn.metadata)
        except Exception as err:  # noqa: BLE001
            return _LOST, str(err), False
        self._call = call
        self._session_done = self.loop.create_future()
        writer: Optional[asyncio.Task[None]] = None
        heartbeat: Optional[asyncio.Task[None]] = None
        registered = False
        result: Tuple[str, str] = (_LOST, "the server closed the stream")
        try:
            g = self.group
            await call.write(
                wpb.WorkerMessage(
                    register=wpb.Register(worker_name=self.worker.name, task_names=sorted(g.handlers), slots=g.slots, immediate_slots=g.immediate_slots)
                )
            )
            first = await asyncio.wait_for(call.read(), REGISTER_TIMEOUT)
            if first is grpc.aio.EOF:
                result = (_STOPPED, "closed") if self.stopped else (_LOST, "the server closed the stream before Registered")
                return result[0], result[1], False
            kind = first.WhichOneof("msg")
            if kind == "rejected":
                rej = first.rejected
                code = getattr(grpc.StatusCode, rej.code.upper(), grpc.StatusCode.UNKNOWN) if rej.code else grpc.StatusCode.UNKNOWN
                self.fatal = error_class(code)(f"the server rejected the registration: {rej.message}", status_code=code, method="Work")
                return _FATAL, rej.message, False
            if kind != "registered":
                self.fatal = SwitchyardError("protocol error: the first server message was not Registered", status_code=grpc.StatusCode.INTERNAL, method="Work")
                return _FATAL, "protocol error", False
            registered = True
            self.worker_id = first.registered.worker_id
            every = heartbeat_period(first.registered)
            log.log(
                logging.INFO if self.group.lead else logging.DEBUG,
                "registered as %s for %s; heartbeat every %d ms",
                self.worker_id,
                ", ".join(sorted(self.group.handlers)),
                every * 1000,
            )
            writer = self.loop.create_task(self._writer(call))
            heartbeat = self.loop.create_task(self._heartbeat(session, every))
            self.worker._notify()
            if self.draining:
                self.send(session, wpb.WorkerMessage(drain=wpb.Drain()))
            on_assignment = self._on_assignment
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("msg")
                if kind == "assignment":
                    on_assignment(msg.assignment, session)
                elif kind == "cancel":
                    c = msg.cancel
                    ctx = self.running.get((c.task_id, c.attempt))
                    if ctx is not None:
                        log.info("the server cancels task %s (%s)", c.task_id, c.reason or "cancelled")
                        ctx._cancel(c.reason or "cancelled", by_server=True)
                elif kind == "rejected":
                    r = msg.rejected
                    log.warning("the server rejected a message about task %s: %s %s", r.task_id, r.code, r.message)
            result = (_STOPPED, "closed") if self.stopped else (_LOST, "the server closed the stream")
        except asyncio.TimeoutError:
            result = (_LOST, f"no Registered within {REGISTER_TIMEOUT:.0f} s")
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError from a call cancelled locally.
            if self._aborted is not call:
                raise
            result = (_STOPPED, "aborted")
        except grpc.RpcError as err:
            e = from_rpc_error(err, "Work")
            if not registered and e.status_code in _PERMANENT:
                self.fatal = e
                result = (_FATAL, str(e))
            elif self.stopped or (self.draining and not registered):
                result = (_STOPPED, str(e))
            else:
                result = (_LOST, str(e))
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if writer is not None:
                writer.cancel()
            if self._call is call:
                self._call = None
            call.cancel()
            was_registered = self.worker_id is not None
            self.worker_id = None
            self.session += 1  # reports of this session's tasks are dropped: the server requeues them
            for ctx in list(self.running.values()):
                if ctx._session == session:
                    ctx._cancel("connection_lost", by_server=False)
            if self._session_done is not None and not self._session_done.done():
                self._session_done.set_result(None)
            if was_registered:
                self.worker._notify()
        return result[0], result[1], registered

    async def _heartbeat(self, session: int, every: float) -> None:
        msg = wpb.WorkerMessage(heartbeat=wpb.Heartbeat())
        while True:
            await asyncio.sleep(every)
            self.send(session, msg)

    # Tasks.

    def _on_assignment(self, a: wpb.Assignment, session: int) -> None:
        key = (a.task_id, a.attempt)
        if key in self.running:
            log.warning("ignoring a duplicate assignment of task %s attempt %d", a.task_id, a.attempt)
            return
        entry = self.group.handlers.get(a.name)
        if entry is None:
            self.send(
                session,
                wpb.WorkerMessage(
                    fail=wpb.Fail(task_id=a.task_id, attempt=a.attempt, message=f"this worker has no handler for {a.name!r}", kind="no_handler", retryable=False)
                ),
            )
            return
        ctx = TaskContext(a, self, session)
        self.running[key] = ctx
        ctx._task = self.loop.create_task(self._run_task(entry[0], entry[1], ctx, key))

    async def _run_task(self, handler: Handler, is_async: bool, ctx: TaskContext, key: Tuple[str, int]) -> None:
        a = ctx._a
        session = ctx._session
        outcome = "completed"
        try:
            try:
                payload = convert.struct_to_dict(a.payload)
                if is_async:
                    result = await handler(payload, ctx)
                else:
                    ctx._thread = True
                    result = await self.loop.run_in_executor(None, handler, payload, ctx)
                    if inspect.isawaitable(result):
                        ctx._thread = False
                        result = await result
            except asyncio.CancelledError:
                ctx.finished = True
                if not ctx.cancelled:
                    # Cancelled by something other than the worker: report a retryable failure.
                    self.send(session, _fail_message(a, "the handler was cancelled", "cancelled", "", True, None))
                    outcome = "failed"
                else:
                    outcome = self._after_cancel(ctx, session)
            except BaseException as err:  # noqa: BLE001 (a handler's exception is the task's failure)
                ctx.finished = True
                if ctx.cancelled:
                    outcome = self._after_cancel(ctx, session)
                else:
                    self.send(session, _describe(a, err))
                    outcome = "failed"
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
            else:
                ctx.finished = True
                if result is None:
                    self.send(session, wpb.WorkerMessage(complete=wpb.Complete(task_id=a.task_id, attempt=a.attempt)))
                else:
                    try:
                        value = convert.to_value(result)
                    except SwitchyardError as err:
                        self.send(
                            session,
                            _fail_message(a, f"the result is not JSON-serialisable: {err.details}", "invalid_result", "", False, None),
                        )
                        outcome = "failed"
                    else:
                        self.send(session, wpb.WorkerMessage(complete=wpb.Complete(task_id=a.task_id, attempt=a.attempt, result=value)))
        finally:
            if self.running.get(key) is ctx:
                del self.running[key]
            self.worker._task_done(a.task_id, a.name, a.attempt, outcome)

    def _after_cancel(self, ctx: TaskContext, session: int) -> str:
        if ctx.cancelled_by_server:
            self.send(session, wpb.WorkerMessage(cancel_ack=wpb.CancelAck(task_id=ctx._a.task_id, attempt=ctx._a.attempt)))
            return "cancelled"
        log.info("task %s stopped by the worker (%s); the server requeues it", ctx._a.task_id, ctx.cancel_reason)
        return "abandoned"


def _fail_message(a: wpb.Assignment, message: str, kind: str, details: str, retryable: bool, retry_after: Optional[float]) -> wpb.WorkerMessage:
    fail = wpb.Fail(
        task_id=a.task_id,
        attempt=a.attempt,
        message=_cut(message, 8 * 1024),
        kind=kind,
        details=_cut(details, MAX_DETAILS_BYTES),
        retryable=retryable,
    )
    if retryable and retry_after is not None:
        convert.set_duration(fail.retry_after, retry_after, "retry_after")
    return wpb.WorkerMessage(fail=fail)


def _describe(a: wpb.Assignment, err: BaseException) -> wpb.WorkerMessage:
    message = str(getattr(err, "message", "") or err) or type(err).__name__
    kind = getattr(err, "kind", None) or type(err).__name__
    details = getattr(err, "details", None)
    if not isinstance(details, str) or not details:
        details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    retryable = getattr(err, "retryable", True) is not False
    retry_after = getattr(err, "retry_after", None)
    secs: Optional[float] = None
    if retry_after is not None:
        try:
            secs = convert.to_seconds(retry_after, "retry_after")
        except SwitchyardError:
            secs = None
    return _fail_message(a, message, str(kind), details, retryable, secs)


