"""Several replicas' URLs: a client and a worker given a dead URL first use
the live one, and two replicas on PostgreSQL (`DATABASE_URL`, default the
local `test` database) ride a `kill -9` of the leader.

Without PostgreSQL (or psql) the failover test skips, except when
`CI=true`: then it fails."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Set, TypeVar

import grpc
import pytest

from conftest import BIN, SERVER_ENV, until
from switchyard_client import AsyncClient, SwitchyardError, Task, TaskContext, TaskEvent, TaskState, WatchLive, Worker
from switchyard_client.connection import Connection
from switchyard_client.testing import TestServer, free_port

DATABASE_URL = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/test"

T = TypeVar("T")


def psql(sql: str) -> str:
    return subprocess.run(["psql", DATABASE_URL, "-qAtc", sql], check=True, capture_output=True, text=True, timeout=10).stdout


def postgres_available() -> bool:
    try:
        return psql("SELECT 1").strip() == "1"
    except (OSError, subprocess.SubprocessError) as err:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"the failover test needs PostgreSQL at {DATABASE_URL} and psql") from err
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_dead_url_first(server: TestServer, name: str, host: str) -> None:
    urls = f"http://{host}:{free_port()},http://{host}:{server.port}"
    async with AsyncClient(urls, timeout=10) as client:
        assert len(client.connection.endpoints) == 2
        first = await client.schedule(name, {"n": 1})
        assert (await client.status(first.task_id)).id == first.task_id
        worker = Worker(urls)

        @worker.task(name)
        async def double(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
            return {"doubled": payload["n"] * 2}

        await worker.wait_registered(timeout=10)
        try:
            done = await client.wait(first.task_id, timeout=10)
            assert done.state is TaskState.COMPLETED and done.result == {"doubled": 2}
            for n in range(2, 6):
                res = await client.schedule(name, {"n": n})
                assert (await client.wait(res.task_id, timeout=10)).result == {"doubled": n * 2}
        finally:
            await worker.close()


async def retrying(what: str, fn: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """`fn()`, again while it fails with UNAVAILABLE (or a deadline), until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except SwitchyardError as err:
            if err.status_code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {err!r}") from err
        await asyncio.sleep(0.05)


async def final(client: AsyncClient, task_id: str, timeout: float = 20.0) -> Task:
    """Polls the task's status (retrying UNAVAILABLE) until it is final."""
    deadline = time.monotonic() + timeout
    while True:
        t = await retrying(f"status of {task_id}", lambda: client.status(task_id, timeout=2), timeout)
        if t.is_final:
            return t
        assert time.monotonic() < deadline, f"task {task_id} is still {t.state} after {timeout} s"
        await asyncio.sleep(0.05)


async def leader(replicas: List[TestServer], timeout: float = 20.0) -> int:
    """The index of the replica that answers SERVING."""
    deadline = time.monotonic() + timeout
    while True:
        for i, r in enumerate(replicas):
            if r.proc is None:
                continue
            conn = Connection(r.address)
            try:
                if await conn.health(timeout=0.5) == "SERVING":
                    return i
            except SwitchyardError:
                pass
            finally:
                await conn.close()
        assert time.monotonic() < deadline, "no replica answers SERVING"
        await asyncio.sleep(0.02)


async def test_two_replicas_ride_a_kill_of_the_leader(name: str) -> None:
    if not postgres_available():
        pytest.skip(f"no PostgreSQL at {DATABASE_URL} (or no psql)")
    schema = f"cl_{uuid.uuid4().hex}"
    replicas: List[TestServer] = []
    try:
        for rid in ("r1", "r2"):
            env = {
                **SERVER_ENV,
                "SWITCHYARD_STORE__URL": DATABASE_URL,
                "SWITCHYARD_STORE__SCHEMA": schema,
                "SWITCHYARD_CLUSTER__LEASE_TTL": "1s",
                "SWITCHYARD_CLUSTER__REPLICA_ID": rid,
            }
            replicas.append(await TestServer.start(BIN, env=env, wait_serving=False))
        first = await leader(replicas)
        urls = ",".join(r.url for r in replicas)
        async with AsyncClient(urls, timeout=5) as client:
            worker = Worker(urls)

            @worker.task(name)
            async def echo(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
                return payload

            async def run(n: int) -> None:
                # The same idempotency key on every try: a retried schedule never makes a second task.
                res = await retrying(f"schedule {n}", lambda: client.schedule(name, {"n": n}, idempotency_key=f"{schema}-{n}"))
                t = await final(client, res.task_id)
                assert t.state is TaskState.COMPLETED and t.result == {"n": n}, t

            # A watch of the completions, opened before the kill.
            completed: Set[int] = set()
            live = asyncio.Event()

            async def watch() -> None:
                async for item in client.watch(names=[name]):
                    if isinstance(item, WatchLive):
                        live.set()
                    elif isinstance(item, TaskEvent) and item.task.state is TaskState.COMPLETED:
                        completed.add(item.task.result["n"])

            watcher = asyncio.ensure_future(watch())
            try:
                await asyncio.wait_for(live.wait(), 20)
                before = await worker.wait_registered(timeout=20)
                await run(1)
                await replicas[first].stop(signal.SIGKILL)
                killed_at = time.monotonic()
                survivor = await leader(replicas)
                assert survivor != first
                took_over = time.monotonic() - killed_at
                # The worker's stream went through the dead leader (directly or
                # forwarded by the standby): it registers again.
                await until(lambda: bool(worker.worker_ids) and not set(worker.worker_ids) & set(before), "the worker to register again", 20)
                for n in range(2, 5):
                    await run(n)
                assert took_over < 15, f"took over after {took_over:.1f} s"
                # The watch resumed on the survivor and missed nothing.
                await until(lambda: completed >= {1, 2, 3, 4} or watcher.done(), "the watch to see every completion", 20)
                assert not watcher.done() or watcher.exception() is None
                assert completed >= {1, 2, 3, 4}
            finally:
                watcher.cancel()
                await worker.close()
    finally:
        for r in replicas:
            await r.close()
        try:
            psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except (OSError, subprocess.SubprocessError) as err:
            print(f"could not drop the schema {schema}: {err}")
