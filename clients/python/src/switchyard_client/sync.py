"""A small synchronous facade for scripts.

```python
with Client("127.0.0.1:50051") as client:
    res = client.schedule("send-email", {"to": "a@example.com"})
    print(client.wait(res.task_id, timeout=60).state)
```

It runs an `AsyncClient` on a private event loop in a background thread, so
it also works from code that has an event loop of its own running.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from types import TracebackType
from typing import Any, Coroutine, Iterator, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from .client import AsyncClient
from .types import (
    BulkResult,
    CancelResult,
    DisconnectReceipt,
    LogPage,
    Metrics,
    RegisteredWorkflow,
    Schedule,
    SchedulePage,
    ScheduleResult,
    ScheduleUpdate,
    Task,
    TaskPage,
    WatchItem,
    WorkflowInfo,
)

T = TypeVar("T")

__all__ = ["Client"]


class Client:
    """The blocking client: the same methods and arguments as `AsyncClient`
    (`schedule`, `schedule_simple`, `schedule_workflow`,
    `schedule_integration`, `status`, `cancel`, `wait`, `disconnect`,
    `list_tasks`, `iter_tasks`, `logs`, `metrics`, `signal`,
    `register_workflow`, `list_workflows`, `watch`, and the schedules:
    `create_schedule`, `update_schedule`, `get_schedule`, `list_schedules`,
    `iter_schedules`, `pause_schedule`, `resume_schedule`,
    `delete_schedule`, `trigger_schedule`)."""

    def __init__(self, address: Union[str, Sequence[str]] = "127.0.0.1:50051", **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="switchyard-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(address, **kwargs)

        self._client: AsyncClient = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channels and stops the background loop."""
        if self._closed:
            return
        self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def wait_for_serving(self, timeout: float = 20.0) -> None:
        self._run(self._client.wait_for_serving(timeout))

    def schedule(self, name: str, payload: Optional[Any] = None, **options: Any) -> ScheduleResult:
        return self._run(self._client.schedule(name, payload, **options))

    def schedule_tasks(self, tasks: Sequence[Mapping[str, Any]], **kw: Any) -> List[BulkResult]:
        return self._run(self._client.schedule_tasks(tasks, **kw))

    def schedule_simple(self, name: str, payload: Optional[Any] = None, **options: Any) -> ScheduleResult:
        return self._run(self._client.schedule_simple(name, payload, **options))

    def schedule_workflow(self, name: str, workflow_type: str, args: Optional[Sequence[Any]] = None, **options: Any) -> ScheduleResult:
        return self._run(self._client.schedule_workflow(name, workflow_type, args, **options))

    def schedule_integration(self, name: str, payload: Optional[Any] = None, **options: Any) -> ScheduleResult:
        return self._run(self._client.schedule_integration(name, payload, **options))

    def status(self, task_id: str, **kw: Any) -> Task:
        return self._run(self._client.status(task_id, **kw))

    def cancel(self, task_id: str, **kw: Any) -> CancelResult:
        return self._run(self._client.cancel(task_id, **kw))

    def retry_task(self, task_id: str, **kw: Any) -> Task:
        return self._run(self._client.retry_task(task_id, **kw))

    def replay_workflow(self, task_id: str, from_step: str, **kw: Any) -> Task:
        return self._run(self._client.replay_workflow(task_id, from_step, **kw))

    def wait(self, task_id: str, **kw: Any) -> Task:
        return self._run(self._client.wait(task_id, **kw))

    def disconnect(self, **kw: Any) -> List[DisconnectReceipt]:
        return self._run(self._client.disconnect(**kw))

    def list_tasks(self, **kw: Any) -> TaskPage:
        return self._run(self._client.list_tasks(**kw))

    def iter_tasks(self, **kw: Any) -> Iterator[Task]:
        token = ""
        while True:
            page = self.list_tasks(page_token=token, **kw)
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def logs(self, task_id: str, **kw: Any) -> LogPage:
        return self._run(self._client.logs(task_id, **kw))

    def metrics(self, **kw: Any) -> Metrics:
        return self._run(self._client.metrics(**kw))

    def signal(self, task_id: str, signal: str, payload: Optional[Any] = None, **kw: Any) -> Task:
        return self._run(self._client.signal(task_id, signal, payload, **kw))

    def register_workflow(self, definition: Any, **kw: Any) -> RegisteredWorkflow:
        return self._run(self._client.register_workflow(definition, **kw))

    def list_workflows(self, **kw: Any) -> List[WorkflowInfo]:
        return self._run(self._client.list_workflows(**kw))

    def create_schedule(self, schedule_id: str, name: str, payload: Optional[Any] = None, **kw: Any) -> Schedule:
        return self._run(self._client.create_schedule(schedule_id, name, payload, **kw))

    def update_schedule(self, schedule_id: str, name: str, payload: Optional[Any] = None, **kw: Any) -> ScheduleUpdate:
        return self._run(self._client.update_schedule(schedule_id, name, payload, **kw))

    def get_schedule(self, schedule_id: str, **kw: Any) -> Schedule:
        return self._run(self._client.get_schedule(schedule_id, **kw))

    def list_schedules(self, **kw: Any) -> SchedulePage:
        return self._run(self._client.list_schedules(**kw))

    def iter_schedules(self, **kw: Any) -> Iterator[Schedule]:
        token = ""
        while True:
            page = self.list_schedules(page_token=token, **kw)
            yield from page.schedules
            token = page.next_page_token
            if not token:
                return

    def pause_schedule(self, schedule_id: str, **kw: Any) -> Schedule:
        return self._run(self._client.pause_schedule(schedule_id, **kw))

    def resume_schedule(self, schedule_id: str, **kw: Any) -> Schedule:
        return self._run(self._client.resume_schedule(schedule_id, **kw))

    def delete_schedule(self, schedule_id: str, **kw: Any) -> None:
        self._run(self._client.delete_schedule(schedule_id, **kw))

    def trigger_schedule(self, schedule_id: str, **kw: Any) -> str:
        return self._run(self._client.trigger_schedule(schedule_id, **kw))

    def watch(self, **kw: Any) -> Iterator[WatchItem]:
        """A blocking iterator over `AsyncClient.watch`; closing it (or
        leaving a `for` loop) ends the stream."""
        items: "queue.Queue[Any]" = queue.Queue(maxsize=1024)
        done = object()

        async def pump() -> None:
            try:
                async for item in self._client.watch(**kw):
                    await asyncio.get_running_loop().run_in_executor(None, items.put, item)
            except BaseException as err:  # noqa: BLE001
                items.put(err)
                return
            items.put(done)

        fut = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = items.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    raise item
                yield item
        finally:
            fut.cancel()
