"""The Temporal side of the fresh NestJS app test (run.mjs): the dev server and
a Python worker for the workflow types the original guide's samples start.

    python temporal_worker.py --temporal .venv/bin/temporal --port N --log-file L

Prints `@@ READY` once the worker runs; exits when stdin closes. Reuses the
dev-server supervisor of tests/temporal/worker.py.
"""

import argparse
import asyncio
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "temporal"))

from temporalio import workflow  # noqa: E402
from temporalio.worker import UnsandboxedWorkflowRunner, Worker  # noqa: E402

from worker import DevServer, connect, say  # noqa: E402


@workflow.defn(name="workflowType")
class GuideWorkflow:
    """The guide's `workflowType`: echoes its arguments."""

    @workflow.run
    async def run(self, *args) -> dict:
        return {"workflow": "workflowType", "args": list(args)}


@workflow.defn(name="migrationWorkflow")
class MigrationWorkflow:
    """The guide's `migrationWorkflow(projectId, options)`."""

    @workflow.run
    async def run(self, project_id: str, options) -> dict:
        return {"migrated": project_id, "options": options}


QUEUES = ["task-queue-name", "taskQueue", "migrations"]


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--temporal", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log-file", required=True)
    args = p.parse_args()
    server = DevServer(args.temporal, args.port, "-", args.log_file)
    server.start()
    tasks = []
    clean = False
    try:
        client = await connect(f"127.0.0.1:{args.port}", server)
        for q in QUEUES:
            # Unsandboxed: the sandbox re-imports this file, whose sys.path set-up it forbids.
            w = Worker(client, task_queue=q, workflows=[GuideWorkflow, MigrationWorkflow], workflow_runner=UnsandboxedWorkflowRunner())
            tasks.append(asyncio.create_task(w.run()))
        say("READY")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            pass
        clean = True
    except BaseException:
        traceback.print_exc()
    finally:
        # The workers stop while their server still runs (a worker whose
        # server is gone may retry its shutdown for minutes), then the
        # process ends at once: the test runner waits on its stdio, and
        # asyncio.run would wait on whatever the SDK still holds.
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        server.stop()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if clean else 1)


if __name__ == "__main__":
    asyncio.run(main())
