"""The worker against the real server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import start_server, until
from switchyard_client import (
    AsyncClient,
    Backoff,
    FatalError,
    InvalidArgumentError,
    RetryableError,
    TaskContext,
    TaskState,
    Worker,
    WaitingReason,
)
from switchyard_client.testing import TestServer


async def test_completes_with_progress(client: AsyncClient, server: TestServer, name: str) -> None:
    outcomes: List[str] = []
    worker = Worker(server.address, concurrency=4)
    worker.on_task = lambda task_id, n, attempt, outcome: outcomes.append(outcome)

    @worker.task(name)
    async def handler(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
        assert ctx.attempt == 1 and ctx.max_attempts == 1 and ctx.idempotency_key == f"{ctx.task_id}:1"
        assert ctx.user_id == "u1" and ctx.labels == {"k": "v"} and ctx.task_type == "SIMPLE"
        ctx.progress(40, "working")
        return {"echo": payload, "attempt": ctx.attempt}

    @worker.task(f"{name}.sync")
    def blocking(payload: Dict[str, Any], ctx: TaskContext) -> int:
        ctx.progress(50)  # from a thread
        return int(threading.current_thread() is not threading.main_thread())

    ids = await worker.wait_registered()
    assert len(ids) == 1 and worker.is_registered
    try:
        res = await client.schedule(name, {"x": [1, "two"]}, user_id="u1", labels={"k": "v"})
        done = await client.wait(res.task_id, timeout=10)
        assert done.state is TaskState.COMPLETED
        assert done.result == {"echo": {"x": [1, "two"]}, "attempt": 1}
        assert done.progress == 100  # a completed task's progress
        res2 = await client.schedule(f"{name}.sync", {})
        assert (await client.wait(res2.task_id, timeout=10)).result == 1
        await until(lambda: outcomes == ["completed", "completed"], "two outcomes")
    finally:
        await worker.close()


async def test_fails_with_retry_then_succeeds(client: AsyncClient, server: TestServer, name: str) -> None:
    attempts: List[int] = []
    worker = Worker(server.address)

    @worker.task(name)
    async def flaky(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryableError("upstream 503", kind="http_503", retry_after=timedelta(milliseconds=50))
        if ctx.attempt == 2:
            raise ConnectionError("reset by peer")  # any exception: retryable
        return {"attempt": ctx.attempt}

    await worker.wait_registered()
    try:
        res = await client.schedule(name, {}, attempts=3, backoff=Backoff(kind="fixed", base="50ms"))
        done = await client.wait(res.task_id, timeout=15)
        assert done.state is TaskState.COMPLETED and done.result == {"attempt": 3}
        assert attempts == [1, 2, 3]
        # Completed: the failed attempts are in its log, not its outcome.
        assert done.last_error is None
        lines = [l.message for l in (await client.logs(res.task_id)).lines]
        assert any(m.startswith("attempt 1 of 3 failed: upstream 503") for m in lines), lines
        assert any(m.startswith("attempt 2 of 3 failed: reset by peer") for m in lines), lines
    finally:
        await worker.close()


async def test_fails_for_good(client: AsyncClient, server: TestServer, name: str) -> None:
    calls: List[int] = []
    worker = Worker(server.address)

    @worker.task(name)
    async def bad(payload: Dict[str, Any], ctx: TaskContext) -> None:
        calls.append(ctx.attempt)
        raise FatalError("no recipient", kind="invalid_payload")

    @worker.task(f"{name}.exhausted")
    async def always(payload: Dict[str, Any], ctx: TaskContext) -> None:
        raise ConnectionError("reset by peer")  # any exception: retryable

    await worker.wait_registered()
    try:
        res = await client.schedule(name, {}, attempts=5)
        done = await client.wait(res.task_id, timeout=10)
        assert done.state is TaskState.FAILED and calls == [1]
        assert done.last_error is not None
        assert (done.last_error.kind, done.last_error.message, done.last_error.retryable) == ("invalid_payload", "no recipient", False)
        res2 = await client.schedule(f"{name}.exhausted", {}, attempts=2, backoff=Backoff(kind="fixed", base="50ms"))
        done2 = await client.wait(res2.task_id, timeout=10)
        assert done2.state is TaskState.FAILED and done2.attempt == 2
        # An exception's class, message and traceback.
        assert done2.last_error is not None and done2.last_error.kind == "ConnectionError"
        assert done2.last_error.retryable and "reset by peer" in done2.last_error.message
        assert "Traceback" in done2.last_error.details
    finally:
        await worker.close()


async def test_cancel_within_100ms(client: AsyncClient, server: TestServer, name: str) -> None:
    started = asyncio.Event()
    cancelled_at: List[float] = []
    polled: List[str] = []
    loop = asyncio.get_running_loop()
    worker = Worker(server.address, concurrency=2)

    @worker.task(name)
    async def long(payload: Dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_at.append(loop.time())
            assert ctx.cancelled and ctx.cancel_reason == "cancelled" and ctx.cancelled_by_server
            raise

    @worker.task(f"{name}.poll")
    def polling(payload: Dict[str, Any], ctx: TaskContext) -> str:
        # A blocking handler in a thread: it polls the flag.
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.005)
        polled.append(ctx.cancel_reason or "")
        raise RuntimeError("stopped")

    await worker.wait_registered()
    try:
        res = await client.schedule(name, {})
        await asyncio.wait_for(started.wait(), 10)
        await until(lambda: _running(client, res.task_id), "RUNNING")
        t0 = loop.time()
        out = await client.cancel(res.task_id)
        assert out.outcome == "CANCEL_REQUESTED"
        await until(lambda: bool(cancelled_at), "the handler's CancelledError", timeout=5)
        assert cancelled_at[0] - t0 < 0.1, f"the handler saw the cancel after {cancelled_at[0] - t0:.3f} s"
        await until(lambda: _state_is(client, res.task_id, TaskState.CANCELLED), "CANCELLED", timeout=5)
        assert loop.time() - t0 < 0.5

        res2 = await client.schedule(f"{name}.poll", {})
        await until(lambda: _running(client, res2.task_id), "RUNNING")
        await client.cancel(res2.task_id)
        assert (await client.wait(res2.task_id, timeout=5)).state is TaskState.CANCELLED
        assert polled == ["cancelled"]
    finally:
        await worker.close()


async def _running(client: AsyncClient, task_id: str) -> bool:
    return (await client.status(task_id)).state is TaskState.RUNNING


async def _state_is(client: AsyncClient, task_id: str, state: TaskState) -> bool:
    return (await client.status(task_id)).state is state


async def test_immediate_slots(client: AsyncClient, server: TestServer, name: str) -> None:
    release = asyncio.Event()
    ran: List[str] = []
    worker = Worker(server.address, concurrency=1, immediate_slots=1)

    @worker.task(name)
    async def handler(payload: Dict[str, Any], ctx: TaskContext) -> None:
        ran.append(payload["kind"])
        if payload["kind"] == "long":
            await release.wait()

    await worker.wait_registered()
    try:
        long = await client.schedule(name, {"kind": "long"})
        await until(lambda: ran == ["long"], "the long task to start")
        normal = await client.schedule(name, {"kind": "normal"})
        quick = await client.schedule(name, {"kind": "quick"}, immediate=True)
        assert (await client.wait(quick.task_id, timeout=10)).state is TaskState.COMPLETED
        waiting = await client.status(normal.task_id)
        assert waiting.state is TaskState.PENDING and waiting.waiting_reason is WaitingReason.CAPACITY_FULL
        release.set()
        assert (await client.wait(normal.task_id, timeout=10)).state is TaskState.COMPLETED
        assert (await client.wait(long.task_id, timeout=10)).state is TaskState.COMPLETED
        assert ran == ["long", "quick", "normal"]
    finally:
        await worker.close()


async def test_drains_on_sigterm_with_a_task_in_flight(client: AsyncClient, server: TestServer, name: str) -> None:
    app = Path(__file__).with_name("worker_app.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(app), server.address, name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"registered", line
        inflight = await client.schedule(name, {"ms": 800})
        await until(lambda: _running(client, inflight.task_id), "the task to start")
        proc.send_signal(signal.SIGTERM)
        # Drain is sent: the server assigns nothing more to this worker.
        await until(lambda: _no_free_slots(client, name), "the drain to reach the server")
        later = await client.schedule(name, {"ms": 0})
        rc = await asyncio.wait_for(proc.wait(), 15)
        out = (await proc.stdout.read()).decode()
        assert rc == 0, out
        assert "drained" in out
        done = await client.status(inflight.task_id)
        assert done.state is TaskState.COMPLETED and done.result == {"slept": 800}
        assert (await client.status(later.task_id)).state is TaskState.PENDING
        await client.cancel(later.task_id)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _no_free_slots(client: AsyncClient, name: str) -> bool:
    m = await client.metrics()
    return all(q.free_slots == 0 for q in m.queues if q.name == name)


async def test_survives_a_server_restart(name: str) -> None:
    srv = await start_server(memory=False)
    registrations: List[str] = []
    try:
        async with AsyncClient(srv.address, timeout=10) as client:
            worker = Worker(srv.address)

            @worker.task(name)
            async def echo(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
                return payload

            registrations.extend(await worker.wait_registered())
            try:
                first = await client.schedule(name, {"n": 1})
                assert (await client.wait(first.task_id, timeout=10)).result == {"n": 1}
                await srv.restart()
                second = await client.schedule(name, {"n": 2})
                assert (await client.wait(second.task_id, timeout=20)).result == {"n": 2}
                assert worker.worker_ids and worker.worker_ids != registrations
            finally:
                await worker.close()
    finally:
        await srv.close()


async def test_a_lost_connection_requeues_and_the_next_worker_finishes(client: AsyncClient, server: TestServer, name: str) -> None:
    started = asyncio.Event()
    reasons: List[str] = []
    w1 = Worker(server.address, concurrency=1)

    @w1.task(name)
    async def stuck(payload: Dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            reasons.append(ctx.cancel_reason or "")
            raise

    await w1.wait_registered()
    res = await client.schedule(name, {})
    await asyncio.wait_for(started.wait(), 10)
    w1.kill()  # stops at once: the handler is cancelled, nothing is reported
    await w1.close()
    assert reasons == ["worker_shutdown"]
    w2 = Worker(server.address)

    @w2.task(name)
    async def fine(payload: Dict[str, Any], ctx: TaskContext) -> str:
        return f"attempt {ctx.attempt}"

    await w2.wait_registered()
    try:
        done = await client.wait(res.task_id, timeout=15)
        assert done.state is TaskState.COMPLETED and done.result == "attempt 1"
    finally:
        await w2.close()


async def test_bad_worker_options() -> None:
    w = Worker("127.0.0.1:1")
    with pytest.raises(InvalidArgumentError) as err:
        await w.start()
    assert err.value.fields.keys() == {"handlers"}
    with pytest.raises(InvalidArgumentError) as err:
        Worker("127.0.0.1:1", concurrency=0)
    assert err.value.fields.keys() == {"concurrency"}
    with pytest.raises(InvalidArgumentError) as err:
        Worker("127.0.0.1:1", immediate_slots=20000)
    assert err.value.fields.keys() == {"immediate_slots"}
    await w.close()


async def test_many_slots_spread_over_streams(client: AsyncClient, server: TestServer, name: str) -> None:
    worker = Worker(server.address, concurrency=40, immediate_slots=2)
    seen: List[int] = []

    @worker.task(name)
    async def handler(payload: Dict[str, Any], ctx: TaskContext) -> int:
        seen.append(payload["i"])
        return int(payload["i"])

    ids = await worker.wait_registered()
    try:
        assert len(ids) == 10 and len(set(ids)) == 10  # one stream per 4 slots
        m = await client.metrics()
        assert sum(q.free_slots for q in m.queues if q.name == name) == 42
        results = [await client.schedule(name, {"i": i}) for i in range(100)]
        for i, r in enumerate(results):
            assert (await client.wait(r.task_id, timeout=10)).result == i
        assert sorted(seen) == list(range(100))
    finally:
        await worker.close()
    with pytest.raises(InvalidArgumentError) as err:
        Worker("127.0.0.1:1", streams=0)
    assert err.value.fields.keys() == {"streams"}


async def test_stream_budget() -> None:
    w = Worker("127.0.0.1:1", concurrency=256, immediate_slots=3)
    w.register("a", lambda p, c: None)
    w.register("b", lambda p, c: None, concurrency=300)
    w.register("c", lambda p, c: None, concurrency=10)
    await w.start()
    try:
        groups = [s.group for s in w._streams]
        shared = [g for g in groups if "a" in g.handlers]
        assert len(shared) == 64 and sum(g.slots for g in shared) == 256
        assert [g.immediate_slots for g in shared] == [3] + [0] * 63
        assert [(g.slots, g.immediate_slots) for g in groups if "b" in g.handlers] == [(300, 1)]  # the budget is spent
        assert [(g.slots, g.immediate_slots) for g in groups if "c" in g.handlers] == [(10, 1)]
    finally:
        w.kill()
        await w.close()
