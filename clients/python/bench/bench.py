"""Benchmarks of the Python client and worker, each against a peer written
straight on the generated stubs, run in the same command (so both sides see
the same machine and the same server).

    python bench/bench.py [--tasks 20000] [--runs 2] [--inflight 64] [--slots 256] [--json out.json]

- schedule: `AsyncClient.schedule` at `--inflight` calls in flight, no
  worker, against the raw `OrchestratorServiceStub.ScheduleTask` at the
  same concurrency (the peer); accepted calls per second.
- worker: the queue is filled with `--tasks` trivial tasks, then one worker
  process (asyncio) drains it: `switchyard_client.Worker` with a handler
  that returns None, against a raw `WorkerService.Work` loop that sends
  `Complete` straight from the receive loop (the peer). Completions per
  second from the first assignment to the last completion, the check that
  the server counts every task COMPLETED, and the worker process's CPU time
  per task (user + system), which hardly depends on what else the machine
  does. The library spreads its `--slots` over several streams (one per 4
  slots, at most 64: see `switchyard_client.worker`); the peer is the
  straightforward single-stream loop, so the ratio shows what that design
  gains over the obvious use of the stubs.

The server is `$SWITCHYARD_BIN` (make bench-python builds and uses the
release binary) with the default durable store in a fresh directory. Runs
alternate library and peer; each figure is the median of `--runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import grpc  # noqa: E402

from switchyard_client import AsyncClient, TaskContext, Worker  # noqa: E402
from switchyard_client._gen.switchyard.v1 import orchestrator_pb2 as opb  # noqa: E402
from switchyard_client._gen.switchyard.v1 import orchestrator_pb2_grpc as ogrpc  # noqa: E402
from switchyard_client._gen.switchyard.v1 import task_pb2 as tpb  # noqa: E402
from switchyard_client._gen.switchyard.v1 import worker_pb2 as wpb  # noqa: E402
from switchyard_client._gen.switchyard.v1 import worker_pb2_grpc as wgrpc  # noqa: E402
from switchyard_client.testing import TestServer  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# Schedulers.


async def schedule_lib(address: str, name: str, n: int, inflight: int) -> float:
    async with AsyncClient(address, timeout=60) as client:
        await client.schedule(name, {"n": -1})  # connect
        i = 0

        async def one() -> None:
            nonlocal i
            while i < n:
                i += 1
                await client.schedule(name, {"n": i})

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(inflight)))
        return n / (time.perf_counter() - t0)


async def schedule_raw(address: str, name: str, n: int, inflight: int) -> float:
    channel = grpc.aio.insecure_channel(address)
    stub = ogrpc.OrchestratorServiceStub(channel)
    req0 = opb.ScheduleTaskRequest(name=name, task_type=tpb.TASK_TYPE_SIMPLE)
    await stub.ScheduleTask(req0, timeout=60)
    i = 0

    async def one() -> None:
        nonlocal i
        while i < n:
            i += 1
            req = opb.ScheduleTaskRequest(name=name, task_type=tpb.TASK_TYPE_SIMPLE)
            req.payload.update({"n": i})
            await stub.ScheduleTask(req, timeout=60)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(inflight)))
    rate = n / (time.perf_counter() - t0)
    await channel.close()
    return rate


# Workers (each runs in a process of its own: `bench.py --worker lib|raw ADDRESS NAME N SLOTS`).


async def worker_lib(address: str, name: str, n: int, slots: int) -> Dict[str, float]:
    done = 0
    first = last = 0.0
    finished = asyncio.Event()
    worker = Worker(address, concurrency=slots, immediate_slots=0)

    @worker.task(name)
    async def noop(payload: Dict[str, Any], ctx: TaskContext) -> None:
        nonlocal first
        if not first:
            first = time.time()
        return None

    def on_task(task_id: str, task_name: str, attempt: int, outcome: str) -> None:
        nonlocal done, last
        done += 1
        if done == n:
            last = time.time()
            finished.set()

    worker.on_task = on_task
    await worker.start()
    c0 = cpu()
    await finished.wait()
    c1 = cpu()
    await worker.close()
    return {"first": first, "last": last, "cpu": c1 - c0}


async def worker_raw(address: str, name: str, n: int, slots: int) -> Dict[str, float]:
    channel = grpc.aio.insecure_channel(address)
    stub = wgrpc.WorkerServiceStub(channel)
    call = stub.Work()
    await call.write(wpb.WorkerMessage(register=wpb.Register(worker_name="raw", task_names=[name], slots=slots)))
    done = 0
    first = last = 0.0
    c0 = cpu()
    while True:
        msg = await call.read()
        if msg is grpc.aio.EOF:
            raise RuntimeError("the server closed the stream")
        if msg.HasField("assignment"):
            a = msg.assignment
            if not first:
                first = time.time()
            await call.write(wpb.WorkerMessage(complete=wpb.Complete(task_id=a.task_id, attempt=a.attempt)))
            done += 1
            if done == n:
                last = time.time()
                break
    c1 = cpu()
    await call.done_writing()
    await channel.close()
    return {"first": first, "last": last, "cpu": c1 - c0}


# The driver.


async def completed(client: AsyncClient, name: str) -> int:
    m = await client.metrics()
    c = m.by_name.get(name)
    return c.completed if c else 0


async def run_worker(kind: str, server: TestServer, client: AsyncClient, n: int, slots: int, inflight: int, run: int) -> Dict[str, float]:
    name = f"bench.w.{kind}.{run}"
    await schedule_lib(server.address, name, n - 1, max(inflight, 128))  # fill (plus the connect task)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", kind, server.address, name, str(n), str(slots), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed ({proc.returncode})")
    r = json.loads(out.decode().strip().splitlines()[-1])
    deadline = time.time() + 30
    while await completed(client, name) < n:
        if time.time() > deadline:
            raise RuntimeError(f"the server does not count {n} COMPLETED tasks of {name}")
        await asyncio.sleep(0.05)
    seen_done = time.time()
    return {
        "rate": n / (r["last"] - r["first"]),
        "rate_server": n / (seen_done - r["first"]),
        "cpu_us_per_task": r["cpu"] / n * 1e6,
    }


def fmt(values: List[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


async def main(args: argparse.Namespace) -> None:
    server = await TestServer.start(memory=False, log_filter="error")
    results: Dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "server": server.binary},
        "args": vars(args),
    }
    try:
        async with AsyncClient(server.address, timeout=60) as client:
            sched: Dict[str, List[float]] = {"lib": [], "raw": []}
            work: Dict[str, Dict[str, List[float]]] = {k: {"rate": [], "rate_server": [], "cpu_us_per_task": []} for k in ("lib", "raw")}
            for run in range(args.runs):
                for kind in ("lib", "raw"):
                    fn = schedule_lib if kind == "lib" else schedule_raw
                    sched[kind].append(await fn(server.address, f"bench.s.{kind}.{run}", args.schedule_tasks, args.inflight))
                    print(f"run {run + 1} schedule {kind}: {sched[kind][-1]:,.0f}/s", flush=True)
                for kind in ("lib", "raw"):
                    r = await run_worker(kind, server, client, args.tasks, args.slots, args.inflight, run)
                    for k, v in r.items():
                        work[kind][k].append(v)
                    print(
                        f"run {run + 1} worker {kind}: {r['rate']:,.0f}/s at the worker, {r['rate_server']:,.0f}/s "
                        f"until the server counts them, {r['cpu_us_per_task']:.0f} µs CPU/task",
                        flush=True,
                    )
        results["schedule"] = sched
        results["worker"] = work
        med = statistics.median
        lines = [
            "",
            f"| figure (median of {args.runs}; min–max) | Python client | raw stubs (peer) | ratio |",
            "|---|---|---|---|",
            f"| ScheduleTask at {args.inflight} in flight, /s | {fmt(sched['lib'])} | {fmt(sched['raw'])} | {med(sched['lib']) / med(sched['raw']):.2f} |",
            f"| worker drain of {args.tasks:,} tasks, /s (first assignment → last Complete) | {fmt(work['lib']['rate'])} | {fmt(work['raw']['rate'])} | {med(work['lib']['rate']) / med(work['raw']['rate']):.2f} |",
            f"| the same, until the server counts them COMPLETED, /s | {fmt(work['lib']['rate_server'])} | {fmt(work['raw']['rate_server'])} | {med(work['lib']['rate_server']) / med(work['raw']['rate_server']):.2f} |",
            f"| worker process CPU per task, µs | {fmt(work['lib']['cpu_us_per_task'])} | {fmt(work['raw']['cpu_us_per_task'])} | {med(work['lib']['cpu_us_per_task']) / med(work['raw']['cpu_us_per_task']):.2f} |",
            "",
            f"Targets (issue 26): worker >= 8,000/s: {'met' if med(work['lib']['rate']) >= 8000 else 'NOT met'}; "
            f"schedule >= 5,000/s: {'met' if med(sched['lib']) >= 5000 else 'NOT met'}. "
            f"Server: {server.binary}; load average at start {results['machine']['loadavg'][0]:.2f}.",
        ]
        print("\n".join(lines))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        await server.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, address, name, n, slots = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        fn = worker_lib if kind == "lib" else worker_raw
        print(json.dumps(asyncio.run(fn(address, name, n, slots))))
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20000, help="tasks per worker drain (default 20000)")
    p.add_argument("--schedule-tasks", type=int, default=10000, help="ScheduleTask calls per schedule run (default 10000)")
    p.add_argument("--runs", type=int, default=2, help="runs of each side (default 2)")
    p.add_argument("--inflight", type=int, default=64, help="ScheduleTask calls in flight (default 64)")
    p.add_argument("--slots", type=int, default=256, help="the worker's slots (default 256)")
    p.add_argument("--json", help="also write the figures to this file")
    asyncio.run(main(p.parse_args()))
