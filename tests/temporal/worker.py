"""The Temporal side of tests/it/temporal.rs: a real dev server and a real worker.

Run by the Rust tests as a child process:

    python worker.py --temporal .venv/bin/temporal --port N --db-file F \
        --task-queue Q --log-file L

It starts `temporal server start-dev` (headless, on 127.0.0.1:N, state in F so
that it survives a restart, or in memory with `-`; its log in L), runs a
worker with the test workflows on task queue Q, prints `@@ READY` and then
obeys one command per line on stdin:

    stop   -> stops the dev server (the worker keeps retrying), prints @@ STOPPED
    start  -> starts it again on the same port and file, prints @@ STARTED

Other lines on stdout (the SDK's logs) are not part of the protocol.

When stdin closes (the test process ended, however it ended) it stops the
worker and the dev server and exits, so nothing outlives the tests.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

# ---------------------------------------------------------------------------
# Activities
# ---------------------------------------------------------------------------


@activity.defn
async def record_cancel(path: str) -> None:
    """Writes a marker file: proof that the workflow saw its cancellation."""
    Path(path).write_text("cancelled\n")


@activity.defn
async def gated_step(gate: str) -> str:
    """Fails its first attempt; later attempts wait until the file `gate`
    exists (heartbeating), then return."""
    info = activity.info()
    if info.attempt == 1:
        raise ApplicationError("first attempt fails on purpose", type="Flaky")
    for _ in range(1200):
        if Path(gate).exists():
            return f"released on attempt {info.attempt}"
        activity.heartbeat(info.attempt)
        await asyncio.sleep(0.1)
    raise ApplicationError("gate never opened", type="GateTimeout", non_retryable=True)


@activity.defn
async def journal_step(path: str, n: int, ms: int) -> None:
    """Appends `{"event": "start", ...}` to the file `path` (JSON lines,
    wall-clock seconds in `at`), runs `ms` milliseconds, then appends
    `{"event": "end", ...}`: the worker's own log of what ran when. One
    append each, in the order they happened (the activities share this
    event loop)."""
    with open(path, "a") as f:
        f.write(json.dumps({"event": "start", "n": n, "at": time.time()}) + "\n")
    await asyncio.sleep(ms / 1000)
    with open(path, "a") as f:
        f.write(json.dumps({"event": "end", "n": n, "at": time.time()}) + "\n")


# ---------------------------------------------------------------------------
# Workflows
# ---------------------------------------------------------------------------


@workflow.defn(name="SwitchyardComplete")
class Complete:
    """Returns a result built from its arguments."""

    @workflow.run
    async def run(self, name: str, n: int) -> dict:
        return {"greeting": f"hello {name}", "double": n * 2}


@workflow.defn(name="SwitchyardQuick")
class Quick:
    """Returns its argument at once."""

    @workflow.run
    async def run(self, value) -> dict:
        return {"echo": value}


@workflow.defn(name="SwitchyardFail")
class Fail:
    """Fails with an application error of type PaymentDeclined."""

    @workflow.run
    async def run(self, reason: str) -> None:
        raise ApplicationError(f"card declined: {reason}", type="PaymentDeclined", non_retryable=True)


@workflow.defn(name="SwitchyardWaitCancel")
class WaitCancel:
    """Waits until cancelled; records the cancellation with an activity, then
    ends as cancelled."""

    @workflow.run
    async def run(self, marker: str) -> None:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            await workflow.execute_activity(
                record_cancel, marker, start_to_close_timeout=timedelta(seconds=10)
            )
            raise


@workflow.defn(name="SwitchyardLong")
class Long:
    """Sleeps for an hour (to be terminated or to time out)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.sleep(timedelta(hours=1))


@workflow.defn(name="SwitchyardGated")
class Gated:
    """Runs `gated_step` (fails once, then waits for the gate file)."""

    @workflow.run
    async def run(self, gate: str) -> str:
        return await workflow.execute_activity(
            gated_step,
            gate,
            start_to_close_timeout=timedelta(minutes=3),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
        )


@workflow.defn(name="SwitchyardContinue")
class Continue:
    """Continues as new `n` times, then returns."""

    @workflow.run
    async def run(self, n: int) -> dict:
        if n > 0:
            workflow.continue_as_new(n - 1)
        return {"continued": "done"}


@workflow.defn(name="SwitchyardAwaitSignal")
class AwaitSignal:
    """Waits for the signal `approve` and returns its payload."""

    def __init__(self) -> None:
        self.payload = None

    @workflow.signal(name="approve")
    async def approve(self, payload: dict) -> None:
        self.payload = payload

    @workflow.run
    async def run(self) -> dict:
        await workflow.wait_condition(lambda: self.payload is not None)
        return {"approved": self.payload}


@workflow.defn(name="SwitchyardJournal")
class Journal:
    """Runs `journal_step` once (no retries): its start and end times go to
    the journal file `path`."""

    @workflow.run
    async def run(self, path: str, n: int, ms: int) -> dict:
        await workflow.execute_activity(
            journal_step,
            args=[path, n, ms],
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return {"n": n}


WORKFLOWS = [Complete, Quick, Fail, WaitCancel, Long, Gated, Continue, AwaitSignal, Journal]
ACTIVITIES = [record_cancel, gated_step, journal_step]
# A second worker, on the task queue `<task queue>-10`, with 10 slots for
# workflow tasks and 10 for activities (the flow-control tests: more room
# than the limit they check).
TEN_SLOTS_SUFFIX = "-10"

# ---------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------


class DevServer:
    def __init__(self, binary: str, port: int, db_file: str, log_file: str):
        self.binary = binary
        self.port = port
        self.db_file = db_file
        self.log_file = log_file
        self.proc = None

    def start(self) -> None:
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                *(["--db-filename", self.db_file] if self.db_file != "-" else []),
                "--log-level",
                "error",
                "--search-attribute",
                "SwitchyardUserId=Keyword",
                "--search-attribute",
                "SwitchyardSessionId=Keyword",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def say(word: str) -> None:
    """A protocol line: prefixed, since the SDK's own logs share stdout."""
    print(f"@@ {word}", flush=True)


async def connect(address: str, server: DevServer, timeout: float = 60.0) -> Client:
    """Connects once the dev server answers (it takes a few seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"temporal dev server exited with {server.proc.returncode}; see {server.log_file}")
        try:
            client = await Client.connect(address)
            # The namespace is usable once it can be described.
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
            return client
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            await asyncio.sleep(0.2)
    raise RuntimeError(f"temporal dev server did not answer within {timeout}s: {last}")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--temporal", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-file", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--log-file", required=True)
    args = p.parse_args()

    address = f"127.0.0.1:{args.port}"
    server = DevServer(args.temporal, args.port, args.db_file, args.log_file)
    server.start()
    worker_task = None
    try:
        client = await connect(address, server)
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            max_concurrent_activities=200,
        )
        ten = Worker(
            client,
            task_queue=args.task_queue + TEN_SLOTS_SUFFIX,
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            max_concurrent_workflow_tasks=10,
            max_concurrent_activities=10,
        )
        worker_task = asyncio.gather(worker.run(), ten.run())
        say("READY")

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                break  # the test process is gone
            cmd = line.decode().strip()
            if cmd == "stop":
                await loop.run_in_executor(None, server.stop)
                say("STOPPED")
            elif cmd == "start":
                server.start()
                await connect(address, server)
                say("STARTED")
            elif cmd:
                say(f"ERROR unknown command {cmd}")
    finally:
        if worker_task is not None:
            worker_task.cancel()
            try:
                await asyncio.wait_for(worker_task, timeout=5)
            except BaseException:  # noqa: BLE001 - shutting down regardless
                pass
        server.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    os._exit(0)
