"""Schedules (`ScheduleService`) through the client's typed methods, against
the real server: create, fire, get, list, pause, trigger, resume, update
(and upsert), delete, and bad input named as the server names it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, List

import pytest

from conftest import until
from switchyard_client import (
    AlreadyExistsError,
    AsyncClient,
    Client,
    InvalidArgumentError,
    NotFoundError,
    Schedule,
    ScheduleCatchUp,
    ScheduleOverlap,
    Task,
    TaskType,
)
from switchyard_client.testing import TestServer


def schedule_id() -> str:
    return f"py-sched.{uuid.uuid4().hex[:10]}"


async def fires_of(client: AsyncClient, name: str, sid: str) -> List[Task]:
    """The tasks named `name` that schedule `sid` fired."""
    page = await client.list_tasks(names=[name], page_size=1000)
    return [t for t in page.tasks if t.labels.get("switchyard.schedule") == sid]


async def test_an_interval_schedule_fires_and_pauses(client: AsyncClient, name: str) -> None:
    sid = schedule_id()
    s = await client.create_schedule(
        sid,
        name,
        {"report": "daily"},
        interval="1s",
        overlap=ScheduleOverlap.ALLOW_ALL,
        catchup_window=timedelta(minutes=5),
        catchup="one",
        task={"priority": 7, "labels": {"team": "ops"}},
    )
    assert isinstance(s, Schedule) and s.id == sid
    assert (s.cron, s.interval, s.time_zone) == (None, timedelta(seconds=1), "")
    assert s.overlap is ScheduleOverlap.ALLOW_ALL and s.catchup is ScheduleCatchUp.ONE
    assert s.catchup_window == timedelta(minutes=5) and s.jitter == timedelta(0)
    assert (s.task_name, s.task_type, s.payload) == (name, TaskType.SIMPLE, {"report": "daily"})
    assert not s.paused and s.next_fires and s.created_at is not None
    assert all(f.tzinfo is not None for f in s.next_fires)
    assert s.next_fires == sorted(s.next_fires)

    # It fires: ordinary tasks that name their schedule, with the template.
    async def two_fires() -> bool:
        return len(await fires_of(client, name, sid)) >= 2

    await until(two_fires, "two fires of the interval schedule", timeout=15)
    fired = await fires_of(client, name, sid)
    for t in fired:
        assert t.priority == 7 and t.labels["team"] == "ops", t
        assert t.labels["switchyard.schedule_tick"] != "trigger"
        assert t.idempotency_key.startswith(f"schedule:{sid}:")
    got = await client.get_schedule(sid)
    assert got.fires >= 2 and got.last_task_id in {t.id for t in await fires_of(client, name, sid)}
    assert got.last_fire_at is not None

    # Paused: no tick fires, no next fire; a trigger still fires it.
    paused = await client.pause_schedule(sid, note="freeze")
    paused_at = datetime.now(timezone.utc)
    assert paused.paused and paused.note == "freeze" and paused.next_fires == []
    task_id = await client.trigger_schedule(sid)
    task = await client.status(task_id)
    assert task.labels["switchyard.schedule"] == sid and task.labels["switchyard.schedule_tick"] == "trigger"
    assert task.payload == {"report": "daily"}
    # Two ticks' worth of time: no tick after the pause fired; the trigger did.
    await until(lambda: datetime.now(timezone.utc) > paused_at + timedelta(seconds=2.5), "2.5 s to pass")
    fired = await fires_of(client, name, sid)
    ticks = [t.labels["switchyard.schedule_tick"] for t in fired]
    assert ticks.count("trigger") == 1
    for tick in ticks:
        if tick != "trigger":
            assert datetime.fromisoformat(tick.replace("Z", "+00:00")) <= paused_at, (tick, paused_at)
    before = len(fired)
    assert (await client.get_schedule(sid)).paused

    resumed = await client.resume_schedule(sid, note="thaw")
    assert not resumed.paused and resumed.note == "thaw" and resumed.next_fires

    async def fired_again() -> bool:
        return len(await fires_of(client, name, sid)) >= before + 1

    await until(fired_again, "a tick after the resume", timeout=15)
    await client.delete_schedule(sid)
    with pytest.raises(NotFoundError):
        await client.get_schedule(sid)
    with pytest.raises(NotFoundError):
        await client.delete_schedule(sid)
    # The tasks it fired stay.
    assert len(await fires_of(client, name, sid)) >= before + 1


async def test_update_replaces_the_spec_and_upserts(client: AsyncClient, name: str) -> None:
    sid = schedule_id()
    start = datetime.now(timezone.utc) + timedelta(days=1)
    created = await client.create_schedule(sid, name, {"v": 1}, cron="0 2 * * *", time_zone="Europe/Paris", paused=True)
    assert created.paused and created.cron == "0 2 * * *" and created.time_zone == "Europe/Paris"
    # The server's defaults, filled in.
    assert created.overlap is ScheduleOverlap.SKIP and created.catchup is ScheduleCatchUp.ALL
    assert created.catchup_window == timedelta(seconds=60) and created.jitter == timedelta(0)

    up = await client.update_schedule(
        sid,
        name,
        {"v": 2},
        cron="*/30 * * * * *",
        start_at=start,
        end_at=start + timedelta(days=7),
        jitter="2s",
        overlap="buffer_one",
        task={"task_type": "COMPLEX", "workflow_type": "report-flow"},
    )
    assert not up.created
    s = up.schedule
    assert s.cron == "*/30 * * * * *" and s.time_zone == "" and s.payload == {"v": 2}
    assert s.task_type is TaskType.COMPLEX and s.overlap is ScheduleOverlap.BUFFER_ONE
    assert s.jitter == timedelta(seconds=2)
    assert s.start_at is not None and abs(s.start_at - start) < timedelta(milliseconds=1)
    assert s.end_at is not None and abs(s.end_at - (start + timedelta(days=7))) < timedelta(milliseconds=1)
    assert s.paused, "an update keeps the pause"
    assert s.updated_at is not None and created.updated_at is not None and s.updated_at >= created.updated_at

    # Unknown id: NOT_FOUND, or created with create_if_missing (upsert).
    other = schedule_id()
    with pytest.raises(NotFoundError):
        await client.update_schedule(other, name, interval=60)
    upserted = await client.update_schedule(other, name, interval=60, create_if_missing=True)
    assert upserted.created and upserted.schedule.interval == timedelta(minutes=1) and not upserted.schedule.paused
    again = await client.update_schedule(other, name, interval=120, create_if_missing=True)
    assert not again.created and again.schedule.interval == timedelta(minutes=2)

    # Listed by id, page after page.
    page = await client.list_schedules(page_size=1)
    assert len(page.schedules) == 1 and page.next_page_token
    ids = [x.id async for x in client.iter_schedules(page_size=1)]
    assert ids == sorted(ids) and {sid, other} <= set(ids)
    for x in (sid, other):
        await client.delete_schedule(x)


async def test_bad_input_is_named_as_the_server_names_it(client: AsyncClient, name: str) -> None:
    async def fields(coro: Any) -> List[str]:
        with pytest.raises(InvalidArgumentError) as err:
            await coro
        return [v.field for v in err.value.field_violations]

    sid = schedule_id()
    # From the server.
    assert await fields(client.create_schedule(sid, name, cron="every morning")) == ["spec.cron"]
    assert await fields(client.create_schedule(sid, name, cron="0 2 * * *", time_zone="Mars/Olympus")) == ["spec.time_zone"]
    assert await fields(client.create_schedule(sid, name, interval=0)) == ["spec.interval"]
    assert await fields(client.create_schedule(sid, "", interval=60)) == ["spec.task.name"]
    assert await fields(client.create_schedule(sid, name, interval=60, task={"priority": 5000})) == ["spec.task.options.priority"]
    assert await fields(client.create_schedule("bad id", name, interval=60)) == ["schedule_id"]
    # Caught before sending, named the same way.
    assert await fields(client.create_schedule(sid, name)) == ["spec.cron"]
    assert await fields(client.create_schedule(sid, name, cron="0 2 * * *", interval=60)) == ["spec.cron"]
    assert await fields(client.create_schedule(sid, name, interval="soon")) == ["spec.interval"]
    assert await fields(client.create_schedule(sid, name, interval=60, overlap="SOMETIMES")) == ["spec.overlap"]
    assert await fields(client.create_schedule(sid, name, interval=60, catchup="MOST")) == ["spec.catchup"]
    assert await fields(client.create_schedule(sid, name, interval=60, start_at=datetime(2030, 1, 1))) == ["spec.start_at"]
    assert await fields(client.create_schedule(sid, name, interval=60, task={"delay": -1})) == ["spec.task.options.delay"]
    assert await fields(client.create_schedule(sid, name, [1], interval=60)) == ["spec.task.payload"]  # type: ignore[arg-type]
    assert await fields(client.create_schedule(sid, name, interval=60, task={"colour": "red"})) == ["spec.task"]
    # Nothing of the above was created; an existing id is ALREADY_EXISTS.
    with pytest.raises(NotFoundError):
        await client.get_schedule(sid)
    await client.create_schedule(sid, name, interval=3600)
    with pytest.raises(AlreadyExistsError):
        await client.create_schedule(sid, name, interval=3600)
    for call in (client.pause_schedule, client.resume_schedule, client.trigger_schedule, client.get_schedule):
        with pytest.raises(NotFoundError):
            await call(schedule_id())
    await client.delete_schedule(sid)


def test_sync_client_schedules(server: TestServer, name: str) -> None:
    sid = schedule_id()
    with Client(f"http://{server.address}") as client:
        s = client.create_schedule(sid, name, {"a": 1}, interval="1h", paused=True)
        assert s.paused and s.interval == timedelta(hours=1)
        assert client.get_schedule(sid).id == sid
        assert sid in [x.id for x in client.iter_schedules()]
        task_id = client.trigger_schedule(sid)
        assert client.status(task_id).labels["switchyard.schedule"] == sid
        assert not client.resume_schedule(sid).paused
        assert client.pause_schedule(sid).paused
        assert client.update_schedule(sid, name, cron="@daily").schedule.cron == "@daily"
        client.delete_schedule(sid)
        with pytest.raises(NotFoundError):
            client.get_schedule(sid)
