"""A worker process for the SIGTERM test: `python worker_app.py ADDRESS NAME`.
Handles NAME by sleeping `payload["ms"]` milliseconds; prints `registered`
once registered; `Worker.run()` drains on SIGTERM."""

import asyncio
import logging
import sys
from typing import Any, Dict

from switchyard_client import TaskContext, Worker


async def main(address: str, name: str) -> None:
    worker = Worker(address, concurrency=2, drain_timeout=10)

    @worker.task(name)
    async def sleep(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
        await asyncio.sleep(payload.get("ms", 0) / 1000)
        return {"slept": payload.get("ms", 0)}

    async def announce() -> None:
        await worker.wait_registered()
        print("registered", flush=True)

    announcer = asyncio.create_task(announce())
    await worker.run()
    announcer.cancel()
    print("drained", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
