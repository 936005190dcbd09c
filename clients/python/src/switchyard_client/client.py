"""The asyncio client for `switchyard.v1.OrchestratorService`.

```python
async with AsyncClient("127.0.0.1:50051") as client:
    res = await client.schedule("send-email", {"to": "a@example.com"}, attempts=3)
    task = await client.wait(res.task_id, timeout=60)
```

Every method takes `timeout=` (seconds or a `timedelta`; `None` for no
deadline), default the client's `timeout` (30 s). Failures raise a
`SwitchyardError` subclass (see `errors`).
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, AsyncIterator, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

import grpc

from . import convert
from ._gen.switchyard.v1 import orchestrator_pb2 as opb
from ._gen.switchyard.v1 import schedule_pb2 as spb
from ._gen.switchyard.v1 import task_pb2 as tpb
from .connection import DEFAULT, TLS, Connection, resolve_timeout
from .errors import FieldViolation, InvalidArgumentError, SwitchyardError, UnavailableError, error_class, from_rpc_error, invalid_argument
from .types import (
    Backoff,
    BulkResult,
    CancelResult,
    Debounce,
    DisconnectReceipt,
    DurationLike,
    LogLine,
    LogPage,
    Metrics,
    RegisteredWorkflow,
    Retention,
    Schedule,
    ScheduleCatchUp,
    ScheduleOverlap,
    SchedulePage,
    ScheduleResult,
    ScheduleUpdate,
    Task,
    TaskEvent,
    TaskPage,
    TaskSource,
    TaskState,
    TaskType,
    WatchGap,
    WatchItem,
    WatchLive,
    WatchReconnecting,
    WorkflowInfo,
)

__all__ = ["AsyncClient"]

# Codes that end a watch instead of reconnecting: a retry would get the same answer.
_WATCH_PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.DATA_LOSS,
    }
)

StrOrMany = Union[str, Iterable[str], None]

_MISSING: Any = object()


#: The most tasks one `schedule_tasks` call takes.
MAX_BULK_TASKS = 1000

_STATUS_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


class _LazyScheduleResult(ScheduleResult):
    """A `ScheduleResult` whose `task` is converted from the reply's
    `TaskStatus` on first access (most callers only read `task_id`): the
    conversion is most of the client's own cost of a `schedule()`. It is a
    `ScheduleResult` in every other way (fields, equality, repr, replace)."""

    def __init__(
        self,
        task_id: str,
        existing: bool,
        task: Any = _MISSING,
        outcome: str = "CREATED",
        superseded_task_ids: Tuple[str, ...] = (),
        *,
        _status: Any = None,
    ) -> None:
        d = self.__dict__
        d["task_id"] = task_id
        d["existing"] = existing
        d["outcome"] = outcome
        d["superseded_task_ids"] = superseded_task_ids
        if task is not _MISSING:
            d["task"] = task
        else:
            d["_status"] = _status

    @property  # type: ignore[override]
    def task(self) -> Task:
        d = self.__dict__
        t = d.get("task")
        if t is None:
            t = d["task"] = convert.task_from_pb(d.pop("_status"))
        return t  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScheduleResult):
            return (self.task_id, self.existing, self.task, self.outcome, self.superseded_task_ids) == (
                other.task_id,
                other.existing,
                other.task,
                other.outcome,
                other.superseded_task_ids,
            )
        return NotImplemented

    __hash__ = ScheduleResult.__hash__  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        return (ScheduleResult, (self.task_id, self.existing, self.task, self.outcome, self.superseded_task_ids))


_LazyScheduleResult.__name__ = _LazyScheduleResult.__qualname__ = "ScheduleResult"


def _schedule_result(res: Any) -> ScheduleResult:
    """A `ScheduleTaskResponse` as a (lazy) `ScheduleResult`."""
    return _LazyScheduleResult(
        res.task_id,
        res.existing,
        _MISSING,
        convert.schedule_outcome(res.outcome),
        tuple(res.superseded_task_ids),
        _status=res.status,
    )


class AsyncClient:
    """An asyncio client of one Switchyard server (or several addresses of
    it, tried in turn).

    - `address`: `host:port`, `http://host:port`, `https://host:port`, or
      several (a list, or comma-separated), such as the replicas of a
      cluster (`"http://a:50051,http://b:50051"`): a call that cannot
      connect is tried on the next one (see `connection`).
    - `token`: sent as `authorization: Bearer <token>` on every call;
      `metadata`: other headers for every call.
    - `tls`: `TLS(ca_file=..., cert_file=..., key_file=...)`, `True` for TLS
      with the system roots; default: TLS for `https://` addresses only.
    - `timeout`: the default deadline of each unary call, in seconds (30).
    - `channel_options`: extra grpc channel options.
    """

    def __init__(
        self,
        address: Union[str, Sequence[str]] = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        tls: Union[TLS, bool, None] = None,
        timeout: Optional[float] = 30.0,
        channel_options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.connection = Connection(address, token=token, metadata=metadata, tls=tls, channel_options=channel_options)
        self.timeout = timeout

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channels. Watches end."""
        await self.connection.close()

    async def wait_for_serving(self, timeout: float = 20.0) -> None:
        """Waits until the server's health check says SERVING."""
        await self.connection.wait_for_serving(timeout)

    async def _call(self, method: str, request: Any, timeout: Any, *, safe: bool = True) -> Any:
        return await self.connection.unary(method, request, self.timeout if timeout is DEFAULT else resolve_timeout(timeout, self.timeout), safe=safe)

    # Schedule.

    async def schedule(
        self,
        name: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        task_type: Union[TaskType, str] = TaskType.SIMPLE,
        priority: Optional[int] = None,
        attempts: Optional[int] = None,
        backoff: Optional[Backoff] = None,
        delay: Optional[DurationLike] = None,
        execution_timeout: Optional[DurationLike] = None,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        immediate: bool = False,
        idempotency_key: Optional[str] = None,
        idempotency_ttl: Optional[DurationLike] = None,
        debounce: Optional[Debounce] = None,
        labels: Optional[Mapping[str, str]] = None,
        cleanup: Optional[str] = None,
        retention: Optional[Retention] = None,
        queue: Optional[str] = None,
        workflow_type: Optional[str] = None,
        workflow_args: Optional[Sequence[Any]] = None,
        task_queue: Optional[str] = None,
        tracking_queue: Optional[str] = None,
        workflow_id: Optional[str] = None,
        webhook_url: Optional[str] = None,
        n8n_workflow_id: Optional[str] = None,
        integration_source: Optional[str] = None,
        timeout: Any = DEFAULT,
    ) -> ScheduleResult:
        """Schedules a task; returns once it is durably stored.

        `task_type` picks the target: SIMPLE (`queue`), COMPLEX
        (`workflow_type`, `workflow_args`, `task_queue`, `tracking_queue`,
        `workflow_id`) or INTEGRATION (`webhook_url` or `n8n_workflow_id`,
        `integration_source`). Priority runs -1000..1000 (higher first);
        `attempts` 1..100; `delay` and `execution_timeout` are durations
        (timedelta, seconds, or '30s'); `idempotency_key` makes a second
        schedule return the first task with `existing=True`, for
        `idempotency_ttl` after it if given (then the same key creates a new
        task); `debounce` (a `Debounce`) keeps only the last (or, throttling,
        the first) of a burst of tasks of one key; `retention` says how long
        the task is kept once it has ended. The result's `outcome` says what
        happened.
        """
        if (
            task_type is TaskType.SIMPLE
            and priority is None
            and attempts is None
            and backoff is None
            and delay is None
            and execution_timeout is None
            and retention is None
            and idempotency_ttl is None
            and debounce is None
            and not (user_id or session_id or immediate or idempotency_key or labels or cleanup or queue)
        ):
            # The common case, built without the general path's calls.
            if not isinstance(name, str):
                raise invalid_argument("name", f"must be a string, got {type(name).__name__}")
            req = opb.ScheduleTaskRequest(name=name, task_type=tpb.TASK_TYPE_SIMPLE)
            if payload is not None:
                convert.payload_to_struct(req.payload, payload)
            req.simple.SetInParent()
            conn = self.connection
            fn = conn.direct("ScheduleTask")
            if fn is None:
                res = await self._call("ScheduleTask", req, timeout, safe=False)
            else:
                try:
                    res = await fn(
                        req,
                        timeout=self.timeout if timeout is DEFAULT else resolve_timeout(timeout, self.timeout),
                        metadata=conn.metadata or None,
                    )
                except grpc.RpcError as err:
                    raise from_rpc_error(err, "ScheduleTask") from None
            return _schedule_result(res)
        req = self._schedule_request(
            name,
            payload,
            task_type=task_type,
            priority=priority,
            attempts=attempts,
            backoff=backoff,
            delay=delay,
            execution_timeout=execution_timeout,
            user_id=user_id,
            session_id=session_id,
            immediate=immediate,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            debounce=debounce,
            labels=labels,
            cleanup=cleanup,
            retention=retention,
            queue=queue,
            workflow_type=workflow_type,
            workflow_args=workflow_args,
            task_queue=task_queue,
            tracking_queue=tracking_queue,
            workflow_id=workflow_id,
            webhook_url=webhook_url,
            n8n_workflow_id=n8n_workflow_id,
            integration_source=integration_source,
        )
        res = await self._call("ScheduleTask", req, timeout, safe=bool(idempotency_key))
        return _schedule_result(res)

    async def schedule_tasks(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        timeout: Any = DEFAULT,
    ) -> List[BulkResult]:
        """Schedules up to 1,000 tasks in one call (`ScheduleTasks`); returns
        once the accepted ones are durably stored, together (one group
        commit).

        Each task is a mapping of what `schedule` takes: `name`, `payload`,
        and any of its keyword options (`priority`, `idempotency_key`,
        `task_type`, `queue`, ...). Each is checked on its own, as `schedule`
        checks one; the result has one `BulkResult` per task, in order, and
        a refused task (`error` set) does not stop the others. An empty list
        returns an empty list. Raises only for the call as a whole:
        `InvalidArgumentError` on `tasks` for more than 1,000,
        `ResourceExhaustedError` / `UnavailableError` when the server cannot
        store anything now (then nothing was scheduled).
        """
        if len(tasks) > MAX_BULK_TASKS:
            raise invalid_argument("tasks", f"must hold at most {MAX_BULK_TASKS} tasks, got {len(tasks)}", "ScheduleTasks")
        results: List[Optional[BulkResult]] = [None] * len(tasks)
        sent: List[int] = []
        req = opb.ScheduleTasksRequest()
        for index, t in enumerate(tasks):
            options = dict(t)
            name = options.pop("name", None)
            payload = options.pop("payload", None)
            options.setdefault("task_type", TaskType.SIMPLE)
            try:
                req.tasks.append(self._schedule_request(name, payload, **options))  # type: ignore[arg-type]
            except SwitchyardError as err:
                results[index] = BulkResult(index=index, error=err)
                continue
            except TypeError as err:
                results[index] = BulkResult(index=index, error=invalid_argument("tasks", str(err), "ScheduleTasks"))
                continue
            sent.append(index)
        if sent:
            res = await self._call("ScheduleTasks", req, timeout, safe=False)
            for r in res.results:
                if r.index >= len(sent):
                    continue
                index = sent[r.index]
                if r.HasField("scheduled"):
                    s = r.scheduled
                    results[index] = BulkResult(
                        index=index,
                        task_id=s.task_id,
                        existing=s.existing,
                        state=convert.task_state(s.state),
                        outcome=convert.schedule_outcome(s.outcome),
                        superseded_task_ids=tuple(s.superseded_task_ids),
                    )
                else:
                    e = r.error
                    code = _STATUS_BY_NUMBER.get(e.code, grpc.StatusCode.UNKNOWN)
                    results[index] = BulkResult(
                        index=index,
                        error=error_class(code)(
                            e.message,
                            status_code=code,
                            field_violations=[FieldViolation(v.field, v.description) for v in e.violations],
                            method="ScheduleTasks",
                        ),
                    )
        return [
            r
            if r is not None
            else BulkResult(index=i, error=SwitchyardError("the server gave no result for this task", method="ScheduleTasks"))
            for i, r in enumerate(results)
        ]

    @staticmethod
    def _schedule_request(
        name: str,
        payload: Optional[Mapping[str, Any]],
        *,
        task_type: Union[TaskType, str],
        queue: Optional[str] = None,
        workflow_type: Optional[str] = None,
        workflow_args: Optional[Sequence[Any]] = None,
        task_queue: Optional[str] = None,
        tracking_queue: Optional[str] = None,
        workflow_id: Optional[str] = None,
        webhook_url: Optional[str] = None,
        n8n_workflow_id: Optional[str] = None,
        integration_source: Optional[str] = None,
        **options: Any,
    ) -> opb.ScheduleTaskRequest:
        if not isinstance(name, str):
            raise invalid_argument("name", f"must be a string, got {type(name).__name__}")
        req = opb.ScheduleTaskRequest(name=name)
        convert.payload_to_struct(req.payload, payload)
        req.task_type = convert.task_type_to_pb(task_type)  # type: ignore[assignment]
        convert.fill_options(req.options, **options)
        if req.task_type == tpb.TASK_TYPE_SIMPLE:
            if queue:
                req.simple.queue = queue
            else:
                req.simple.SetInParent()
        elif req.task_type == tpb.TASK_TYPE_COMPLEX:
            c = req.complex
            c.SetInParent()
            if workflow_type:
                c.workflow_type = workflow_type
            if workflow_args is not None:
                if isinstance(workflow_args, (str, bytes, Mapping)) or not isinstance(workflow_args, Sequence):
                    raise invalid_argument("complex.workflow_args", "must be a list of JSON values")
                c.workflow_args.SetInParent()
                for i, arg in enumerate(workflow_args):
                    convert.set_value(c.workflow_args.values.add(), arg, f"complex.workflow_args[{i}]")
            if task_queue:
                c.task_queue = task_queue
            if tracking_queue:
                c.tracking_queue = tracking_queue
            if workflow_id:
                c.workflow_id = workflow_id
        elif req.task_type == tpb.TASK_TYPE_INTEGRATION:
            n = req.integration.n8n
            req.integration.SetInParent()
            n.SetInParent()
            if webhook_url:
                n.webhook_url = webhook_url
            if n8n_workflow_id:
                n.workflow_id = n8n_workflow_id
            if integration_source:
                n.integration_source = integration_source
        return req

    async def schedule_simple(self, name: str, payload: Optional[Mapping[str, Any]] = None, **options: Any) -> ScheduleResult:
        """A SIMPLE task: a queue job for a worker that registered `name`."""
        return await self.schedule(name, payload, task_type=TaskType.SIMPLE, **options)

    async def schedule_workflow(
        self,
        name: str,
        workflow_type: str,
        args: Optional[Sequence[Any]] = None,
        *,
        payload: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> ScheduleResult:
        """A COMPLEX task: a run of the workflow `workflow_type` with `args`."""
        return await self.schedule(
            name, payload, task_type=TaskType.COMPLEX, workflow_type=workflow_type, workflow_args=args if args is not None else [], **options
        )

    async def schedule_integration(
        self,
        name: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        webhook_url: Optional[str] = None,
        n8n_workflow_id: Optional[str] = None,
        integration_source: Optional[str] = None,
        **options: Any,
    ) -> ScheduleResult:
        """An INTEGRATION task: the server POSTs `payload` to `webhook_url` (or
        the n8n workflow `n8n_workflow_id`), retrying transient failures."""
        return await self.schedule(
            name,
            payload,
            task_type=TaskType.INTEGRATION,
            webhook_url=webhook_url,
            n8n_workflow_id=n8n_workflow_id,
            integration_source=integration_source,
            **options,
        )

    # Status, cancel, disconnect.

    async def status(self, task_id: str, *, timeout: Any = DEFAULT) -> Task:
        """The task's current status, with its `payload`. NotFoundError for an
        unknown id."""
        res = await self._call("GetTaskStatus", opb.GetTaskStatusRequest(task_id=task_id), timeout)
        return convert.task_from_pb(res.status, res.payload)

    async def cancel(self, task_id: str, *, reason: str = "", force: bool = False, timeout: Any = DEFAULT) -> CancelResult:
        """Cancels a task. `outcome` is CANCELLED (it was pending),
        CANCEL_REQUESTED (its worker was told to stop) or ALREADY_FINISHED."""
        res = await self._call("CancelTask", opb.CancelTaskRequest(task_id=task_id, reason=reason, force=force), timeout)
        return CancelResult(outcome=convert.cancel_outcome(res.outcome), task=convert.task_from_pb(res.status))

    async def retry_task(self, task_id: str, *, reason: str = "", timeout: Any = DEFAULT) -> Task:
        """Runs an ended (FAILED, CANCELLED, COMPENSATED) task again under
        the same id: back to PENDING with the next `run` and a new attempt
        budget, durable before it returns. NotFoundError for an unknown or
        removed id; FailedPreconditionError for a task in another state, a
        workflow's step, or a task run by the BullMQ or Temporal backend."""
        res = await self._call("RetryTask", opb.RetryTaskRequest(task_id=task_id, reason=reason), timeout, safe=False)
        return convert.task_from_pb(res.status)

    async def replay_workflow(self, task_id: str, from_step: str, *, reason: str = "", timeout: Any = DEFAULT) -> Task:
        """Runs an ended workflow (embedded engine) again from step
        `from_step`: earlier steps keep their outputs; it and later steps
        run again under the next `run`. InvalidArgumentError naming
        `from_step` for a step the definition lacks."""
        req = opb.ReplayWorkflowRequest(task_id=task_id, from_step=from_step, reason=reason)
        res = await self._call("ReplayWorkflow", req, timeout, safe=False)
        return convert.task_from_pb(res.status)

    async def disconnect(
        self, *, user_id: Optional[str] = None, session_id: Optional[str] = None, reason: str = "", timeout: Any = DEFAULT
    ) -> List[DisconnectReceipt]:
        """Cancels every active task of a user or a session (exactly one of
        the two) and returns a receipt per task."""
        if bool(user_id) == bool(session_id):
            raise invalid_argument("user_id" if not user_id else "session_id", "exactly one of user_id and session_id is required")
        req = opb.DisconnectRequest(user_id=user_id or "", session_id=session_id or "", reason=reason)
        res = await self._call("Disconnect", req, timeout)
        return [DisconnectReceipt(task_id=r.task_id, name=r.name, outcome=convert.cancel_outcome(r.outcome)) for r in res.receipts]

    async def wait(self, task_id: str, *, timeout: Optional[float] = None, poll: float = 0.05) -> Task:
        """Waits until the task is in a final state and returns it (watching
        its events; `timeout` in seconds raises `asyncio.TimeoutError`)."""

        async def run() -> Task:
            task = await self.status(task_id)
            if task.is_final:
                return task
            async for item in self.watch(task_ids=[task_id], after_sequence=task.sequence):
                if isinstance(item, TaskEvent) and item.task.is_final:
                    return item.task
                if isinstance(item, (WatchLive, WatchGap)):
                    current = await self.status(task_id)
                    if current.is_final:
                        return current
            raise UnavailableError("the watch ended")  # pragma: no cover

        return await asyncio.wait_for(run(), timeout)

    # Lists and logs.

    async def list_tasks(
        self,
        *,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        task_ids: StrOrMany = None,
        names: StrOrMany = None,
        task_types: Any = None,
        states: Any = None,
        sources: Any = None,
        error_kind: Optional[str] = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: Any = DEFAULT,
    ) -> TaskPage:
        """One page of tasks, newest first (`page_size` default 50, at most
        1000). Pass `next_page_token` back as `page_token` for the next.
        `error_kind` selects the tasks whose last error has that kind (with
        `states="FAILED"`: the failed tasks to retry)."""
        req = opb.ListTasksRequest(page_size=page_size, page_token=page_token)
        convert.fill_filter(
            req.filter,
            user_id=user_id,
            session_id=session_id,
            task_ids=task_ids,
            names=names,
            task_types=task_types,
            states=states,
            sources=sources,
            error_kind=error_kind,
        )
        res = await self._call("ListTasks", req, timeout)
        return TaskPage(tasks=[convert.task_from_pb(t) for t in res.tasks], next_page_token=res.next_page_token)

    async def iter_tasks(self, *, page_size: int = 0, timeout: Any = DEFAULT, **filter: Any) -> AsyncIterator[Task]:
        """Every matching task, newest first, page after page."""
        token = ""
        while True:
            page = await self.list_tasks(page_size=page_size, page_token=token, timeout=timeout, **filter)
            for t in page.tasks:
                yield t
            token = page.next_page_token
            if not token:
                return

    async def logs(self, task_id: str, *, after_line: int = 0, limit: int = 0, timeout: Any = DEFAULT) -> LogPage:
        """Lines of a task's log after `after_line`, oldest first (`limit`
        default 200, at most 5000)."""
        res = await self._call("GetTaskLogs", opb.GetTaskLogsRequest(task_id=task_id, after_line=after_line, limit=limit), timeout)
        return LogPage(lines=[convert.log_line(l) for l in res.lines], has_more=res.has_more)

    async def iter_logs(self, task_id: str, *, after_line: int = 0, limit: int = 0, timeout: Any = DEFAULT) -> AsyncIterator[LogLine]:
        """Every line of a task's log after `after_line`, page after page."""
        while True:
            page = await self.logs(task_id, after_line=after_line, limit=limit, timeout=timeout)
            for line in page.lines:
                yield line
                after_line = line.line
            if not page.has_more or not page.lines:
                return

    async def metrics(self, *, timeout: Any = DEFAULT) -> Metrics:
        """Counts, queue depths, throughput and latency percentiles."""
        return convert.metrics(await self._call("GetMetrics", opb.GetMetricsRequest(), timeout))

    # Workflows.

    async def signal(self, task_id: str, signal: str, payload: Optional[Mapping[str, Any]] = None, *, timeout: Any = DEFAULT) -> Task:
        """Delivers a named signal to a running workflow; returns its status."""
        req = opb.SignalTaskRequest(task_id=task_id, signal=signal)
        convert.payload_to_struct(req.payload, payload)
        res = await self._call("SignalTask", req, timeout)
        return convert.task_from_pb(res.status)

    async def register_workflow(
        self, definition: Union[Mapping[str, Any], str], *, format: Optional[str] = None, timeout: Any = DEFAULT
    ) -> RegisteredWorkflow:
        """Registers a workflow definition (a dict, or JSON/TOML text with
        `format="json"|"toml"`)."""
        if isinstance(definition, Mapping):
            text, fmt = json.dumps(definition), format or "json"
        elif isinstance(definition, str):
            text, fmt = definition, format or "json"
        else:
            raise invalid_argument("definition", "must be a dict or a JSON/TOML string")
        res = await self._call("RegisterWorkflow", opb.RegisterWorkflowRequest(definition=text, format=fmt), timeout)
        return RegisteredWorkflow(name=res.name, version=res.version, created=res.created)

    async def list_workflows(self, *, timeout: Any = DEFAULT) -> List[WorkflowInfo]:
        """The registered workflow definitions (latest version of each)."""
        res = await self._call("ListWorkflows", opb.ListWorkflowsRequest(), timeout)
        out = []
        for w in res.workflows:
            try:
                definition = json.loads(w.definition_json) if w.definition_json else {}
            except ValueError:
                definition = {"raw": w.definition_json}
            out.append(WorkflowInfo(name=w.name, version=w.version, definition=definition))
        return out

    # Schedules (ScheduleService).

    async def _schedule_call(self, method: str, request: Any, timeout: Any, *, safe: bool = True) -> Any:
        t = self.timeout if timeout is DEFAULT else resolve_timeout(timeout, self.timeout)
        return await self.connection.unary(method, request, t, safe=safe, service="ScheduleService")

    def _schedule_spec(
        self,
        spec: spb.ScheduleSpec,
        name: str,
        payload: Optional[Mapping[str, Any]],
        task: Optional[Mapping[str, Any]],
        **timing: Any,
    ) -> None:
        options = dict(task or {})
        options.setdefault("task_type", TaskType.SIMPLE)
        try:
            template = self._schedule_request(name, payload, **options)
        except InvalidArgumentError as err:
            # Named as the server names a template's fields.
            v = err.field_violations[0] if err.field_violations else FieldViolation("", str(err))
            raise invalid_argument(f"spec.task.{v.field}", v.description) from None
        except TypeError as err:
            raise invalid_argument("spec.task", str(err)) from None
        convert.fill_schedule_spec(spec, template, **timing)

    async def create_schedule(
        self,
        schedule_id: str,
        name: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        cron: Optional[str] = None,
        interval: Optional[DurationLike] = None,
        time_zone: Optional[str] = None,
        start_at: Optional[datetime] = None,
        end_at: Optional[datetime] = None,
        jitter: Optional[DurationLike] = None,
        overlap: Union[ScheduleOverlap, str, None] = None,
        catchup_window: Optional[DurationLike] = None,
        catchup: Union[ScheduleCatchUp, str, None] = None,
        task: Optional[Mapping[str, Any]] = None,
        paused: bool = False,
        timeout: Any = DEFAULT,
    ) -> Schedule:
        """Creates the schedule `schedule_id` (`CreateSchedule`): each tick
        schedules the task `name` with `payload`, as `schedule()` would.

        Exactly one of `cron` (5 fields, or 6 with seconds first, read in
        `time_zone`, an IANA name, default UTC) and `interval` (a duration,
        at least 1 s). `start_at` / `end_at` (timezone-aware datetimes)
        bound the ticks; `jitter` delays each fire by up to that much;
        `overlap` says what a tick does while the previous fire is active
        (SKIP by default); `catchup_window` (default 60 s) and `catchup`
        (ALL by default) say which ticks missed during downtime still fire.
        `task` holds the template's other options, the keyword arguments of
        `schedule()` (`task_type`, `queue`, `priority`, `workflow_type`,
        ...). `paused=True` creates it paused. Its first tick is the first
        after now. AlreadyExistsError for an existing id;
        InvalidArgumentError naming the field (`spec.cron`,
        `spec.time_zone`, `spec.task.name`, ...)."""
        req = spb.CreateScheduleRequest(schedule_id=schedule_id, paused=paused)
        self._schedule_spec(
            req.spec,
            name,
            payload,
            task,
            cron=cron,
            interval=interval,
            time_zone=time_zone,
            start_at=start_at,
            end_at=end_at,
            jitter=jitter,
            overlap=overlap,
            catchup_window=catchup_window,
            catchup=catchup,
        )
        res = await self._schedule_call("CreateSchedule", req, timeout, safe=False)
        return convert.schedule_from_pb(res.schedule)

    async def update_schedule(
        self,
        schedule_id: str,
        name: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        cron: Optional[str] = None,
        interval: Optional[DurationLike] = None,
        time_zone: Optional[str] = None,
        start_at: Optional[datetime] = None,
        end_at: Optional[datetime] = None,
        jitter: Optional[DurationLike] = None,
        overlap: Union[ScheduleOverlap, str, None] = None,
        catchup_window: Optional[DurationLike] = None,
        catchup: Union[ScheduleCatchUp, str, None] = None,
        task: Optional[Mapping[str, Any]] = None,
        create_if_missing: bool = False,
        timeout: Any = DEFAULT,
    ) -> ScheduleUpdate:
        """Replaces the whole spec of a schedule (`UpdateSchedule`; the
        arguments are `create_schedule`'s), keeping its counters and its
        previous fire; ticks of the new spec before now do not fire. With
        `create_if_missing`, an unknown id is created (not paused) instead
        of NotFoundError: BullMQ's `upsertJobScheduler`. `created` says
        which happened."""
        req = spb.UpdateScheduleRequest(schedule_id=schedule_id, create_if_missing=create_if_missing)
        self._schedule_spec(
            req.spec,
            name,
            payload,
            task,
            cron=cron,
            interval=interval,
            time_zone=time_zone,
            start_at=start_at,
            end_at=end_at,
            jitter=jitter,
            overlap=overlap,
            catchup_window=catchup_window,
            catchup=catchup,
        )
        res = await self._schedule_call("UpdateSchedule", req, timeout)
        return ScheduleUpdate(schedule=convert.schedule_from_pb(res.schedule), created=res.created)

    async def get_schedule(self, schedule_id: str, *, timeout: Any = DEFAULT) -> Schedule:
        """One schedule, with its next fire times. NotFoundError for an
        unknown id."""
        res = await self._schedule_call("GetSchedule", spb.GetScheduleRequest(schedule_id=schedule_id), timeout)
        return convert.schedule_from_pb(res.schedule)

    async def list_schedules(self, *, page_size: int = 0, page_token: str = "", timeout: Any = DEFAULT) -> SchedulePage:
        """One page of schedules, by id (`page_size` default 50, at most
        1000). Pass `next_page_token` back as `page_token` for the next."""
        req = spb.ListSchedulesRequest(page_size=page_size, page_token=page_token)
        res = await self._schedule_call("ListSchedules", req, timeout)
        return SchedulePage(schedules=[convert.schedule_from_pb(s) for s in res.schedules], next_page_token=res.next_page_token)

    async def iter_schedules(self, *, page_size: int = 0, timeout: Any = DEFAULT) -> AsyncIterator[Schedule]:
        """Every schedule, by id, page after page."""
        token = ""
        while True:
            page = await self.list_schedules(page_size=page_size, page_token=token, timeout=timeout)
            for s in page.schedules:
                yield s
            token = page.next_page_token
            if not token:
                return

    async def pause_schedule(self, schedule_id: str, *, note: str = "", timeout: Any = DEFAULT) -> Schedule:
        """Pauses a schedule: no tick fires until it is resumed
        (`trigger_schedule` still fires it). `note` says why (at most 1,024
        bytes)."""
        res = await self._schedule_call("PauseSchedule", spb.PauseScheduleRequest(schedule_id=schedule_id, note=note), timeout)
        return convert.schedule_from_pb(res.schedule)

    async def resume_schedule(self, schedule_id: str, *, note: str = "", timeout: Any = DEFAULT) -> Schedule:
        """Resumes a paused schedule. Ticks that fell while it was paused do
        not fire; the next tick after now does."""
        res = await self._schedule_call("ResumeSchedule", spb.ResumeScheduleRequest(schedule_id=schedule_id, note=note), timeout)
        return convert.schedule_from_pb(res.schedule)

    async def delete_schedule(self, schedule_id: str, *, timeout: Any = DEFAULT) -> None:
        """Deletes a schedule; the tasks it fired stay. NotFoundError for an
        unknown id."""
        await self._schedule_call("DeleteSchedule", spb.DeleteScheduleRequest(schedule_id=schedule_id), timeout)

    async def trigger_schedule(self, schedule_id: str, *, timeout: Any = DEFAULT) -> str:
        """Fires a schedule now, paused or not, whatever its overlap policy;
        returns the id of the task it scheduled (committed)."""
        res = await self._schedule_call("TriggerSchedule", spb.TriggerScheduleRequest(schedule_id=schedule_id), timeout, safe=False)
        return str(res.task_id)

    # Watch.

    async def watch(
        self,
        *,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        task_ids: StrOrMany = None,
        names: StrOrMany = None,
        task_types: Any = None,
        states: Any = None,
        sources: Any = None,
        after_sequence: int = 0,
        include_snapshot: bool = False,
        reconnect: bool = True,
        max_attempts: Optional[int] = None,
        initial_delay: float = 0.1,
        max_delay: float = 5.0,
        report_reconnects: bool = False,
    ) -> AsyncIterator[WatchItem]:
        """Task events matching a filter, live, as an async iterator of
        `TaskEvent`, `WatchGap` and `WatchLive` (and `WatchReconnecting` with
        `report_reconnects=True`).

        The iterator remembers the last sequence it has seen (from events,
        and from `WatchLive`, which covers events the filter skipped). When
        the stream breaks or the server restarts it reconnects with backoff
        (`initial_delay` .. `max_delay` seconds, with jitter) and asks for
        what came after that sequence: nothing is missed or repeated. When
        the server no longer keeps those events one by one, a `WatchGap` is
        yielded, then SNAPSHOT events. Errors a retry cannot fix
        (INVALID_ARGUMENT, ...) are raised. Stop by breaking out of the loop
        (or `aclose()`)."""
        req_filter = opb.TaskFilter()
        convert.fill_filter(
            req_filter, user_id=user_id, session_id=session_id, task_ids=task_ids, names=names, task_types=task_types, states=states, sources=sources
        )
        last = after_sequence
        streams = 0
        failures = 0
        conn = self.connection
        while True:
            resumed = streams > 0
            streams += 1
            start_after = last
            req = opb.WatchTasksRequest(after_sequence=start_after, include_snapshot=include_snapshot and start_after == 0)
            req.filter.CopyFrom(req_filter)
            index = conn.current
            call = conn.orchestrator(index).WatchTasks(req, metadata=conn.metadata)
            error: SwitchyardError
            try:
                async for res in call:
                    item = res.WhichOneof("item")
                    if item == "event":
                        ev = res.event
                        if ev.kind == opb.TASK_EVENT_KIND_SNAPSHOT:
                            # Snapshots (after a gap, or include_snapshot) come in no
                            # sequence order: the position moves on with `live`.
                            pass
                        elif ev.sequence <= last:
                            continue  # already seen: the server replays after `last`
                        else:
                            last = ev.sequence
                        yield TaskEvent(
                            sequence=ev.sequence,
                            kind=convert.event_kind(ev.kind),
                            time=convert.timestamp_to_datetime(ev, "time"),
                            task=convert.task_from_pb(ev.status),
                        )
                    elif item == "gap":
                        yield WatchGap(after_sequence=start_after, oldest_kept=res.gap.oldest_kept)
                    elif item == "live":
                        failures = 0
                        last = max(last, res.live.sequence)
                        yield WatchLive(sequence=last, resumed=resumed)
                # An OK end: the server drained or restarted. Resume as after an error.
                error = UnavailableError("the server ended the watch stream", method="WatchTasks")
            except grpc.RpcError as err:
                error = from_rpc_error(err, "WatchTasks")
            finally:
                call.cancel()
            if conn.closed:
                return
            if not reconnect or error.status_code in _WATCH_PERMANENT or (max_attempts is not None and failures >= max_attempts):
                raise error
            if error.status_code == grpc.StatusCode.UNAVAILABLE and len(conn.endpoints) > 1:
                conn.advance(index)
            failures += 1
            exp = min(max_delay, initial_delay * 2 ** (failures - 1))
            delay = exp / 2 + random.random() * exp / 2
            if report_reconnects:
                yield WatchReconnecting(attempt=failures, delay=timedelta(seconds=delay), after_sequence=last, error=error)
            await asyncio.sleep(delay)

    async def watch_events(self, **kwargs: Any) -> AsyncIterator[TaskEvent]:
        """`watch()`, yielding only the `TaskEvent`s."""
        async for item in self.watch(**kwargs):
            if isinstance(item, TaskEvent):
                yield item


