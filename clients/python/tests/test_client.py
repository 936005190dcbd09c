"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List

import pytest

from conftest import Proxy, start_server, until
from switchyard_client import (
    AsyncClient,
    Backoff,
    CancelOutcome,
    Client,
    DeadlineExceededError,
    Debounce,
    EventKind,
    FailedPreconditionError,
    InvalidArgumentError,
    LogSource,
    NotFoundError,
    Retention,
    SwitchyardError,
    TaskContext,
    TaskEvent,
    TaskState,
    TaskType,
    WaitingReason,
    WatchLive,
    WatchReconnecting,
    Worker,
)
from switchyard_client.testing import TestServer


async def test_schedule_and_status(client: AsyncClient, name: str) -> None:
    res = await client.schedule(
        name,
        {"to": "a@example.com", "n": 3, "nested": {"list": [1, 2.5, True, None, "x"]}},
        priority=10,
        attempts=3,
        backoff=Backoff(kind="fixed", base=timedelta(milliseconds=200)),
        delay=timedelta(hours=1),
        execution_timeout="30s",
        user_id="u1",
        session_id="s1",
        labels={"team": "platform"},
        idempotency_key=f"key-{name}",
    )
    assert not res.existing
    assert res.task.state is TaskState.PENDING
    task = await client.status(res.task_id)
    assert task.id == res.task_id and task.name == name
    assert task.task_type is TaskType.SIMPLE and task.task_type == "SIMPLE"
    assert task.state == "PENDING" and task.waiting_reason is WaitingReason.DELAYED
    assert (task.priority, task.max_attempts, task.user_id, task.session_id) == (10, 3, "u1", "s1")
    assert task.labels == {"team": "platform"}
    assert task.payload == {"to": "a@example.com", "n": 3, "nested": {"list": [1, 2.5, True, None, "x"]}}
    assert isinstance(task.created_at, datetime) and task.created_at.tzinfo is timezone.utc
    assert task.run_at is not None and task.run_at - task.created_at >= timedelta(minutes=59)
    assert task.started_at is None and not task.is_final and task.sequence > 0

    again = await client.schedule(name, {"other": 1}, idempotency_key=f"key-{name}")
    assert again.existing and again.task_id == res.task_id

    with pytest.raises(NotFoundError) as err:
        await client.status("0190b0c0-0000-7000-8000-000000000000")
    assert err.value.code == "NOT_FOUND" and err.value.method == "GetTaskStatus"


async def test_schedule_the_three_kinds(client: AsyncClient, name: str) -> None:
    simple = await client.schedule_simple(name, {"a": 1}, queue="emails")
    assert simple.task.task_type is TaskType.SIMPLE and simple.task.target == "emails"
    integration = await client.schedule_integration(f"{name}.hook", {"b": 2}, webhook_url="http://hooks.invalid/hook", attempts=1)
    assert integration.task.task_type is TaskType.INTEGRATION
    wf = f"wf-{name}".replace(".", "-")
    reg = await client.register_workflow({"name": wf, "steps": [{"id": "approve", "signal": "approval"}]})
    assert reg.name == wf and reg.version == 1 and reg.created
    assert (await client.register_workflow({"name": wf, "steps": [{"id": "approve", "signal": "approval"}]})).created is False
    assert any(w.name == wf and w.version == 1 and w.definition["name"] == wf for w in await client.list_workflows())
    run = await client.schedule_workflow(name, wf, [{"order": 1}])
    assert run.task.task_type is TaskType.COMPLEX
    await until(lambda: _step_running(client, run.task_id), "the signal step to wait")
    after = await client.signal(run.task_id, "approval", {"by": "ops"})
    assert after.id == run.task_id
    done = await client.wait(run.task_id, timeout=10)
    assert done.state is TaskState.COMPLETED
    assert done.steps[0].id == "approve" and done.steps[0].output == {"by": "ops"}
    with pytest.raises(FailedPreconditionError):
        await client.signal(simple.task_id, "approval", {})


async def _step_running(client: AsyncClient, task_id: str) -> bool:
    t = await client.status(task_id)
    return bool(t.steps) and t.steps[0].state == "RUNNING"


async def test_cancel_pending(client: AsyncClient, name: str) -> None:
    res = await client.schedule(name, {})
    assert res.task.state is TaskState.PENDING
    out = await client.cancel(res.task_id, reason="no longer needed")
    assert out.outcome is CancelOutcome.CANCELLED and out.cancelled
    assert out.task.state is TaskState.CANCELLED and out.task.is_final
    again = await client.cancel(res.task_id)
    assert again.outcome is CancelOutcome.ALREADY_FINISHED and not again.cancelled
    logs = await client.logs(res.task_id)
    assert any("no longer needed" in line.message for line in logs.lines)


async def test_retry_a_cancelled_task(client: AsyncClient, name: str) -> None:
    res = await client.schedule(name, {})
    await client.cancel(res.task_id, reason="not now")
    again = await client.retry_task(res.task_id, reason="now")
    assert again.id == res.task_id
    assert again.state is TaskState.PENDING and again.run == 1
    with pytest.raises(FailedPreconditionError):
        await client.retry_task(res.task_id)
    with pytest.raises(NotFoundError):
        await client.retry_task(str(uuid.uuid4()))
    with pytest.raises(InvalidArgumentError) as e:
        await client.replay_workflow(res.task_id, "")
    assert "from_step" in e.value.fields
    logs = await client.logs(res.task_id)
    assert any("retried by request" in line.message for line in logs.lines)


async def test_a_tasks_own_retention(client: AsyncClient, name: str) -> None:
    gone = await client.schedule(name, {}, retention=Retention(cancelled=0))
    kept = await client.schedule(name, {}, retention=Retention(completed="1h"))
    for res in (gone, kept):
        assert (await client.cancel(res.task_id)).cancelled

    async def removed() -> bool:
        try:
            await client.status(gone.task_id)
            return False
        except NotFoundError:
            return True

    await until(removed, "the task kept 0 s after cancel to be removed", timeout=10)
    # Its own retention is for completion: cancelled, it keeps the server's 30 days.
    assert (await client.status(kept.task_id)).state is TaskState.CANCELLED
    with pytest.raises(InvalidArgumentError) as err:
        await client.schedule(name, {}, retention=Retention(failed=timedelta(days=3651)))
    assert err.value.fields.keys() == {"options.retention.failed"}


async def test_debounce_throttle_and_the_dedup_window(client: AsyncClient, name: str) -> None:
    first = await client.schedule(name, {"n": 0}, debounce=Debounce("doc", "60s"))
    second = await client.schedule(name, {"n": 1}, debounce=Debounce("doc", timedelta(seconds=60)))
    assert first.outcome == "CREATED"
    assert second.outcome == "SUPERSEDED_OTHERS"
    assert second.superseded_task_ids == (first.task_id,)
    gone = await client.status(first.task_id)
    assert gone.state is TaskState.CANCELLED
    assert gone.last_error is not None and gone.last_error.kind == "superseded"
    t1 = await client.schedule(name, {}, debounce=Debounce("thr", 60, mode="THROTTLE"))
    t2 = await client.schedule(name, {}, debounce=Debounce("thr", 60, mode="THROTTLE"))
    assert (t1.outcome, t2.outcome, t2.existing, t2.task_id) == ("CREATED", "THROTTLED", True, t1.task_id)
    k1 = await client.schedule(name, {}, idempotency_key=f"{name}-k", idempotency_ttl="60s")
    k2 = await client.schedule(name, {}, idempotency_key=f"{name}-k", idempotency_ttl="60s")
    assert (k2.outcome, k2.task_id) == ("EXISTING", k1.task_id)
    results = await client.schedule_tasks([{"name": name, "debounce": Debounce("bulk", 60)} for _ in range(2)])
    assert [r.outcome for r in results] == ["CREATED", "SUPERSEDED_OTHERS"]
    assert results[1].superseded_task_ids == (results[0].task_id,)
    with pytest.raises(InvalidArgumentError) as err:
        await client.schedule(name, {}, debounce=Debounce("k", 0))
    assert err.value.fields.keys() == {"options.debounce.period"}
    with pytest.raises(InvalidArgumentError) as err:
        await client.schedule(name, {}, debounce=Debounce("k", 1, mode="SOMETIMES"))
    assert err.value.fields.keys() == {"options.debounce.mode"}


async def test_cancel_running(client: AsyncClient, server: TestServer, name: str) -> None:
    started = asyncio.Event()
    seen: List[str] = []
    worker = Worker(server.address, concurrency=2)

    @worker.task(name)
    async def long(payload: Dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(ctx.cancel_reason or "")
            raise

    await worker.wait_registered()
    try:
        res = await client.schedule(name, {})
        await asyncio.wait_for(started.wait(), 10)
        out = await client.cancel(res.task_id, reason="stop")
        assert out.outcome is CancelOutcome.CANCEL_REQUESTED
        assert out.task.state is TaskState.RUNNING and out.task.cancel_requested
        done = await client.wait(res.task_id, timeout=10)
        assert done.state is TaskState.CANCELLED
        assert seen == ["cancelled"]
    finally:
        await worker.close()


async def test_watch_resumes_after_a_forced_reconnect(server: TestServer, name: str) -> None:
    """The watch goes through a proxy that is cut while tasks keep changing:
    after the reconnect every event arrives once, in order, none missing."""
    proxy = await Proxy(server.port).start()
    direct = AsyncClient(server.address, timeout=10)
    watcher = AsyncClient(proxy.address, timeout=10)
    events: List[TaskEvent] = []
    lives: List[WatchLive] = []
    reconnects: List[WatchReconnecting] = []
    got_live = asyncio.Event()

    async def watch() -> None:
        async for item in watcher.watch(names=[name], report_reconnects=True):
            if isinstance(item, TaskEvent):
                events.append(item)
            elif isinstance(item, WatchLive):
                lives.append(item)
                got_live.set()
            elif isinstance(item, WatchReconnecting):
                reconnects.append(item)

    task = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(got_live.wait(), 10)
        first = [(await direct.schedule(name, {"i": i})).task_id for i in range(5)]
        await until(lambda: len(events) >= 5, "the first five events")
        # Cut the connection and keep new connections out while more happens.
        proxy.refusing = True
        proxy.cut()
        await until(lambda: len(reconnects) >= 1, "the watch to notice")
        during = [(await direct.schedule(name, {"i": i})).task_id for i in range(5, 10)]
        cancelled = await direct.cancel(first[0])
        assert cancelled.outcome is CancelOutcome.CANCELLED
        proxy.refusing = False
        await until(lambda: any(l.resumed for l in lives), "the watch to resume", timeout=15)
        after = [(await direct.schedule(name, {"i": i})).task_id for i in range(10, 12)]
        await until(lambda: len(events) >= 13, "every event", timeout=10)
        await asyncio.sleep(0.2)  # a duplicate would arrive now
        sequences = [e.sequence for e in events]
        assert sequences == sorted(set(sequences)), "events in order, no duplicate"
        scheduled = [e.task.id for e in events if e.kind is EventKind.SCHEDULED]
        assert scheduled == first + during + after, "no gap"
        assert [e.task.id for e in events if e.kind is EventKind.CANCELLED] == [first[0]]
        assert len(events) == 13
        assert reconnects[0].after_sequence == events[4].sequence
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watcher.close()
        await direct.close()
        await proxy.close()


async def test_watch_resumes_across_a_server_restart(name: str) -> None:
    srv = await start_server(memory=False)
    try:
        async with AsyncClient(srv.address, timeout=10) as client:
            events: List[TaskEvent] = []
            lives: List[WatchLive] = []

            async def watch() -> None:
                async for item in client.watch(names=[name], initial_delay=0.05, max_delay=0.5):
                    if isinstance(item, TaskEvent):
                        events.append(item)
                    elif isinstance(item, WatchLive):
                        lives.append(item)

            task = asyncio.create_task(watch())
            await until(lambda: len(lives) == 1, "the watch to be live")
            a = await client.schedule(name, {})
            await until(lambda: len(events) == 1, "the first event")
            await srv.restart()
            await until(lambda: len(lives) >= 2, "the watch to resume", timeout=20)
            b = await client.schedule(name, {})
            await until(lambda: len(events) >= 2, "the second event")
            assert [e.task.id for e in events] == [a.task_id, b.task_id]
            assert lives[-1].resumed
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await srv.close()


async def test_disconnect_receipts(client: AsyncClient, server: TestServer, name: str) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()
    worker = Worker(server.address, concurrency=1, immediate_slots=0)

    @worker.task(f"{name}.run")
    async def run(payload: Dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        await asyncio.sleep(60)

    await worker.wait_registered()
    try:
        running = await client.schedule(f"{name}.run", {}, user_id=user)
        await asyncio.wait_for(started.wait(), 10)
        pending = [(await client.schedule(name, {"i": i}, user_id=user)).task_id for i in range(2)]
        other = await client.schedule(name, {}, user_id=f"{user}-other")
        receipts = await client.disconnect(user_id=user, reason="logout")
        by_id = {r.task_id: r for r in receipts}
        assert set(by_id) == {running.task_id, *pending}
        assert by_id[running.task_id].outcome is CancelOutcome.CANCEL_REQUESTED
        assert by_id[running.task_id].name == f"{name}.run"
        assert all(by_id[p].outcome is CancelOutcome.CANCELLED for p in pending)
        assert (await client.wait(running.task_id, timeout=10)).state is TaskState.CANCELLED
        assert (await client.status(other.task_id)).state is TaskState.PENDING
        assert await client.disconnect(user_id=user) == []
        with pytest.raises(InvalidArgumentError) as err:
            await client.disconnect()
        assert err.value.fields.keys() == {"user_id"}
    finally:
        await worker.close()


async def test_list_paging(client: AsyncClient, name: str) -> None:
    ids = [(await client.schedule(name, {"i": i})).task_id for i in range(7)]
    pages = []
    token = ""
    while True:
        page = await client.list_tasks(names=[name], page_size=3, page_token=token)
        pages.append([t.id for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == list(reversed(ids)), "newest first, each once"
    assert [t.id async for t in client.iter_tasks(names=name, page_size=2)] == list(reversed(ids))
    await client.cancel(ids[0])
    cancelled = await client.list_tasks(names=[name], states=[TaskState.CANCELLED])
    assert [t.id for t in cancelled.tasks] == [ids[0]]
    assert [t.id for t in (await client.list_tasks(names=[name], states="PENDING", page_size=1000)).tasks] == list(reversed(ids[1:]))


async def test_logs_and_metrics(client: AsyncClient, server: TestServer, name: str) -> None:
    worker = Worker(server.address)

    @worker.task(name)
    async def chatty(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
        for i in range(5):
            ctx.log(f"line {i}", "warn" if i == 4 else "info")
        ctx.progress(100, "done")
        return {"ok": True}

    await worker.wait_registered()
    try:
        res = await client.schedule(name, {})
        done = await client.wait(res.task_id, timeout=10)
        assert done.state is TaskState.COMPLETED and done.result == {"ok": True}
        assert done.progress == 100 and done.progress_message == "done"
        page = await client.logs(res.task_id)
        worker_lines = [l for l in page.lines if l.source is LogSource.WORKER]
        assert [l.message for l in worker_lines] == [f"line {i}" for i in range(5)]
        assert worker_lines[4].level == "warn" and worker_lines[0].attempt == 1
        assert any(l.source is LogSource.SYSTEM for l in page.lines)
        first = await client.logs(res.task_id, limit=2)
        assert len(first.lines) == 2 and first.has_more
        rest = await client.logs(res.task_id, after_line=first.lines[-1].line)
        assert [l.line for l in first.lines + rest.lines] == [l.line for l in page.lines]
        assert [l.line async for l in client.iter_logs(res.task_id, limit=3)] == [l.line for l in page.lines]
        m = await client.metrics()
        assert m.total.completed >= 1 and m.by_name[name].completed == 1
        assert m.workers_connected >= 1 and m.last_sequence >= done.sequence
        assert any(q.name == name and q.workers == 1 for q in m.queues)
    finally:
        await worker.close()


async def test_bad_input_gets_the_servers_codes_and_fields(client: AsyncClient, name: str) -> None:
    async def fields(coro: Any) -> List[str]:
        with pytest.raises(InvalidArgumentError) as err:
            await coro
        assert err.value.code == "INVALID_ARGUMENT" and str(err.value).startswith("INVALID_ARGUMENT: ")
        return [v.field for v in err.value.field_violations]

    # From the server.
    assert set(await fields(client.schedule("", {}, attempts=1000))) == {"name", "options.attempts"}
    assert await fields(client.schedule("send email", {})) == ["name"]
    assert await fields(client.schedule(name, {}, priority=5000)) == ["options.priority"]
    assert await fields(client.schedule(name, {}, queue="bad queue")) == ["simple.queue"]
    assert await fields(client.schedule_integration(name, {}, webhook_url="ftp://example.invalid/x")) == ["integration.n8n.webhook_url"]
    assert await fields(client.schedule(name, {}, labels={"k": "v" * 2000})) != []
    assert await fields(client.status("nope")) == ["task_id"]
    # Caught before sending, named the same way.
    assert await fields(client.schedule(name, [1, 2])) == ["payload"]  # type: ignore[arg-type]
    assert await fields(client.schedule(name, {"when": datetime.now()})) == ["payload"]
    assert await fields(client.schedule(name, {}, task_type="LONG")) == ["task_type"]
    assert await fields(client.schedule(name, {}, delay=-1)) == ["options.delay"]
    assert await fields(client.schedule(name, {}, delay="soon")) == ["options.delay"]
    assert await fields(client.schedule(name, {}, backoff=Backoff(kind="linear"))) == ["options.backoff.kind"]
    assert await fields(client.list_tasks(states=["DONE"])) == ["filter.states"]


async def test_schedule_tasks_one_result_per_task(client: AsyncClient, name: str) -> None:
    tasks: List[Dict[str, Any]] = [{"name": name, "payload": {"n": n}} for n in range(20)]
    tasks[2] = {"name": "bad name", "payload": {"n": 2}}
    tasks[5] = {"name": name, "attempts": 101}
    tasks[6] = {"name": name, "payload": {"n": 6}, "idempotency_key": f"bulk-{name}"}
    tasks[7] = {"name": name, "payload": {"n": 7}, "idempotency_key": f"bulk-{name}"}
    tasks[8] = {"name": name, "delay": "soon"}  # refused before sending
    results = await client.schedule_tasks(tasks)
    assert [r.index for r in results] == list(range(20))
    refused = [(r.index, r.error.code, [v.field for v in r.error.field_violations]) for r in results if isinstance(r.error, SwitchyardError)]
    assert refused == [
        (2, "INVALID_ARGUMENT", ["name"]),
        (5, "INVALID_ARGUMENT", ["options.attempts"]),
        (8, "INVALID_ARGUMENT", ["options.delay"]),
    ]
    assert isinstance(results[5].error, InvalidArgumentError)
    assert results[7].ok and results[7].existing and results[7].task_id == results[6].task_id
    assert results[0].state is TaskState.PENDING and not results[0].existing
    assert (await client.status(results[10].task_id or "")).payload == {"n": 10}
    assert await client.schedule_tasks([]) == []
    with pytest.raises(InvalidArgumentError) as err:
        await client.schedule_tasks([{"name": name}] * 1001)
    assert err.value.fields.keys() == {"tasks"}


async def test_deadlines_metadata_and_several_addresses(server: TestServer, name: str) -> None:
    dead = Proxy(server.port)
    await dead.start()
    dead.refusing = True
    # The first address refuses connections: calls go to the second one.
    async with AsyncClient([dead.address, server.address], token="secret", metadata={"x-team": "py"}, timeout=5) as client:
        assert ("authorization", "Bearer secret") in client.connection.metadata
        res = await client.schedule(name, {})
        assert (await client.status(res.task_id)).id == res.task_id
        assert client.connection.current == 1
        assert (await client.status(res.task_id, timeout=timedelta(seconds=5))).id == res.task_id
    await dead.close()
    # A per-call deadline against a server that never answers.
    stalled = await Proxy(server.port).start()
    stalled.stalling = True
    async with AsyncClient(stalled.address, timeout=30) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(DeadlineExceededError):
            await client.status(res.task_id, timeout=0.3)
        assert loop.time() - t0 < 5
    await stalled.close()


def test_sync_client(server: TestServer, name: str) -> None:
    with Client(f"http://{server.address}") as client:
        res = client.schedule(name, {"a": 1})
        assert client.status(res.task_id).payload == {"a": 1}
        assert [t.id for t in client.iter_tasks(names=[name])] == [res.task_id]
        assert client.cancel(res.task_id).outcome is CancelOutcome.CANCELLED
        assert client.wait(res.task_id, timeout=5).state is TaskState.CANCELLED
        with pytest.raises(SwitchyardError) as err:
            client.schedule("", {})
        assert err.value.fields.keys() == {"name"}
        bulk = client.schedule_tasks([{"name": name, "payload": {"b": 1}}, {"name": ""}])
        assert bulk[0].ok and bulk[1].error is not None
        items = client.watch(task_ids=[res.task_id], after_sequence=res.task.sequence - 1)
        first = next(items)
        assert isinstance(first, TaskEvent) and first.task.id == res.task_id
        items.close()  # type: ignore[attr-defined]
