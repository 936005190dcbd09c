"""The plain Python values the client takes and returns.

Enums are `str` enums named as in the protos without their prefix
(`TaskState.PENDING == "PENDING"`); times are timezone-aware `datetime`s in
UTC; durations are `timedelta`s; payloads and results are JSON values (dicts,
lists, str, int, float, bool, None).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Tuple, Union


class _StrEnum(str, enum.Enum):
    """A `str` enum whose `str()` is its value (as `enum.StrEnum`, 3.11+)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class TaskType(_StrEnum):
    """The three kinds of work (`switchyard.v1.TaskType`)."""

    SIMPLE = "SIMPLE"
    COMPLEX = "COMPLEX"
    INTEGRATION = "INTEGRATION"


class TaskState(_StrEnum):
    """Where a task is in its life (`switchyard.v1.TaskState`)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"

    @property
    def is_final(self) -> bool:
        """COMPLETED, FAILED, CANCELLED and COMPENSATED never change again."""
        return self in _FINAL


_FINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.COMPENSATED})


class TaskSource(_StrEnum):
    """The engine that runs a task (`switchyard.v1.TaskSource`)."""

    UNSPECIFIED = "UNSPECIFIED"
    EMBEDDED = "EMBEDDED"
    BULLMQ = "BULLMQ"
    TEMPORAL = "TEMPORAL"
    N8N = "N8N"


class WaitingReason(_StrEnum):
    """Why a PENDING task is not running yet (`switchyard.v1.WaitingReason`)."""

    QUEUED = "QUEUED"
    NO_WORKER = "NO_WORKER"
    DELAYED = "DELAYED"
    BACKING_OFF = "BACKING_OFF"
    CAPACITY_FULL = "CAPACITY_FULL"
    ENGINE_UNREACHABLE = "ENGINE_UNREACHABLE"
    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"
    QUEUE_PAUSED = "QUEUE_PAUSED"
    RATE_LIMITED = "RATE_LIMITED"


class CancelOutcome(_StrEnum):
    """What a cancel did (`switchyard.v1.CancelOutcome`)."""

    CANCELLED = "CANCELLED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    ALREADY_FINISHED = "ALREADY_FINISHED"


class EventKind(_StrEnum):
    """What happened to a task (`switchyard.v1.TaskEventKind`)."""

    SCHEDULED = "SCHEDULED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    COMPLETED = "COMPLETED"
    RETRYING = "RETRYING"
    FAILED = "FAILED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CANCELLED = "CANCELLED"
    REQUEUED = "REQUEUED"
    UPDATED = "UPDATED"
    SNAPSHOT = "SNAPSHOT"


class LogSource(_StrEnum):
    """Who wrote a log line (`switchyard.v1.LogSource`)."""

    UNSPECIFIED = "UNSPECIFIED"
    SYSTEM = "SYSTEM"
    WORKER = "WORKER"
    ENGINE = "ENGINE"


class StepState(_StrEnum):
    """Where a workflow step is (`switchyard.v1.StepState`)."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


class BackoffKind(_StrEnum):
    """How the delay between attempts grows (`switchyard.v1.Backoff.Kind`)."""

    FIXED = "FIXED"
    EXPONENTIAL = "EXPONENTIAL"


class ScheduleOverlap(_StrEnum):
    """What a schedule's tick does while its previous fire is still active
    (`switchyard.v1.ScheduleOverlapPolicy`; Temporal's names)."""

    SKIP = "SKIP"
    BUFFER_ONE = "BUFFER_ONE"
    ALLOW_ALL = "ALLOW_ALL"
    CANCEL_OTHER = "CANCEL_OTHER"


class ScheduleCatchUp(_StrEnum):
    """Which missed ticks fire after downtime (`switchyard.v1.ScheduleCatchUp`):
    every one in the catch-up window, or only the latest."""

    ALL = "ALL"
    ONE = "ONE"


#: A JSON value: what payloads, results and signal payloads are made of.
JSON = Union[Dict[str, Any], List[Any], str, int, float, bool, None]
#: A duration: a `timedelta`, a number of seconds, or a string such as
#: `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`.
DurationLike = Union[timedelta, int, float, str]


@dataclass(frozen=True)
class Backoff:
    """How long to wait between attempts. Unset fields take the server's
    defaults (exponential from 1 s, capped at 5 min)."""

    kind: Union[BackoffKind, str, None] = None
    base: Optional[DurationLike] = None
    max: Optional[DurationLike] = None


@dataclass(frozen=True)
class Retention:
    """How long a task is kept once it has ended, per final state, instead
    of the server's `[retention]` policy (by default 7 days after
    completion, 30 after failure or cancellation). Zero removes it at the
    next sweep (about a second); then `status` raises `NotFound`. Unset
    fields take the policy."""

    completed: Optional[DurationLike] = None
    failed: Optional[DurationLike] = None
    cancelled: Optional[DurationLike] = None


@dataclass(frozen=True)
class TaskError:
    """An error as reported by a worker or an engine."""

    message: str
    kind: str
    details: str
    retryable: bool
    attempt: int


@dataclass(frozen=True)
class StepStatus:
    """One step of a workflow run."""

    id: str
    kind: str
    state: StepState
    attempt: int
    output: Any
    error: Optional[TaskError]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    task_id: str
    compensation_task_id: str
    depends_on: List[str]


@dataclass(frozen=True)
class Task:
    """Everything the server knows about a task at one moment
    (`switchyard.v1.TaskStatus`). `payload` is set by `status()` only."""

    id: str
    name: str
    task_type: Optional[TaskType]
    source: TaskSource
    state: TaskState
    attempt: int
    max_attempts: int
    priority: int
    immediate: bool
    user_id: str
    session_id: str
    progress: float
    progress_message: str
    result: Any
    last_error: Optional[TaskError]
    created_at: Optional[datetime]
    run_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    external_id: str
    waiting_reason: Optional[WaitingReason]
    cancel_requested: bool
    labels: Dict[str, str]
    worker_id: str
    idempotency_key: str
    target: str
    sequence: int
    steps: List[StepStatus] = field(default_factory=list)
    workflow_version: int = 0
    parent_id: str = ""
    payload: Optional[Dict[str, Any]] = None
    #: The run: 0 for the first, one more each time `retry_task` or
    #: `replay_workflow` ran the task again (each run has its own attempts).
    run: int = 0

    @property
    def is_final(self) -> bool:
        """Whether the state is final (it never changes again)."""
        return self.state.is_final


@dataclass(frozen=True)
class Debounce:
    """A debounce or throttle key (`schedule(debounce=...)`). Of the tasks of
    one `key` scheduled closer together than `period` (a duration: timedelta,
    seconds, or '5s'; more than 0, at most 30 days), mode `"DEBOUNCE"` (the
    default) runs only the last: each newer one supersedes the pending older
    one, which ends CANCELLED with `last_error.kind == "superseded"`, and the
    newest starts once `period` has passed without a newer one. Mode
    `"THROTTLE"` runs only the first: for `period` after it, scheduling
    another task of the key creates nothing and returns the first's id
    (`outcome == "THROTTLED"`). Keys are at most 256 bytes."""

    key: str
    period: DurationLike
    mode: str = "DEBOUNCE"


@dataclass(frozen=True)
class ScheduleResult:
    """The accepted task. `existing` is true when the idempotency key (or a
    throttle key) matched an earlier task, whose id this is. `outcome` says
    what happened: `CREATED`, `EXISTING`, `SUPERSEDED_OTHERS` (created; the
    older pending task of its debounce key, in `superseded_task_ids`, was
    cancelled) or `THROTTLED`."""

    task_id: str
    existing: bool
    task: Task
    outcome: str = "CREATED"
    superseded_task_ids: Tuple[str, ...] = ()


@dataclass(frozen=True)
class BulkResult:
    """The outcome of one task of `schedule_tasks`, at its `index` in the
    list given: `task_id` (with `existing` and `state`) when it was accepted,
    else `error`, the `SwitchyardError` that `schedule` would have raised for
    it (nothing of it was stored)."""

    index: int
    task_id: Optional[str] = None
    existing: bool = False
    state: Optional["TaskState"] = None
    error: Optional[Exception] = None
    #: What happened, as `ScheduleResult.outcome` (empty when refused).
    outcome: str = ""
    superseded_task_ids: Tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the task was accepted."""
        return self.error is None


@dataclass(frozen=True)
class CancelResult:
    """What a cancel did, and the task after it."""

    outcome: CancelOutcome
    task: Task

    @property
    def cancelled(self) -> bool:
        """True when the task is now CANCELLED or its worker was asked to stop."""
        return self.outcome is not CancelOutcome.ALREADY_FINISHED


@dataclass(frozen=True)
class DisconnectReceipt:
    """What `disconnect()` did to one task."""

    task_id: str
    name: str
    outcome: CancelOutcome


@dataclass(frozen=True)
class TaskPage:
    """One page of `list_tasks()`, newest first. `next_page_token` is empty on
    the last page."""

    tasks: List[Task]
    next_page_token: str


@dataclass(frozen=True)
class LogLine:
    """One line of a task's log."""

    line: int
    time: Optional[datetime]
    source: LogSource
    level: str
    message: str
    attempt: int


@dataclass(frozen=True)
class LogPage:
    """Lines of a task's log, oldest first."""

    lines: List[LogLine]
    has_more: bool


@dataclass(frozen=True)
class StateCounts:
    """A count per state."""

    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    compensating: int = 0
    compensated: int = 0


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles, as `timedelta`s."""

    count: int
    p50: timedelta
    p90: timedelta
    p99: timedelta
    p999: timedelta
    max: timedelta


@dataclass(frozen=True)
class QueueMetrics:
    """One task name's queue."""

    name: str
    ready: int
    scheduled: int
    running: int
    workers: int
    free_slots: int


@dataclass(frozen=True)
class Metrics:
    """Counts, queue depths, throughput and latency percentiles."""

    total: StateCounts
    by_type: Dict[str, StateCounts]
    by_name: Dict[str, StateCounts]
    queues: List[QueueMetrics]
    throughput_per_sec: float
    schedule_to_start: LatencySummary
    run_time: LatencySummary
    workers_connected: int
    started_at: Optional[datetime]
    last_sequence: int


@dataclass(frozen=True)
class WorkflowInfo:
    """A registered workflow definition (its latest version)."""

    name: str
    version: int
    definition: Dict[str, Any]


@dataclass(frozen=True)
class RegisteredWorkflow:
    """The answer to `register_workflow()`. `created` is false when the
    definition was identical to the latest version."""

    name: str
    version: int
    created: bool


@dataclass(frozen=True)
class Schedule:
    """A schedule as the server reports it (`switchyard.v1.ScheduleInfo`).

    Exactly one of `cron` (read in `time_zone`; empty means UTC) and
    `interval` is set. The spec is as the server resolved it: defaults
    filled in (`overlap` SKIP, `catchup` ALL, `catchup_window` 60 s,
    `jitter` 0). The template is `task_name`, `task_type` and `payload`. `next_fires` holds up to 5 times (none while
    paused or after `end_at`); `fires` counts triggers too."""

    id: str
    cron: Optional[str]
    interval: Optional[timedelta]
    time_zone: str
    start_at: Optional[datetime]
    end_at: Optional[datetime]
    jitter: Optional[timedelta]
    overlap: Optional[ScheduleOverlap]
    catchup_window: Optional[timedelta]
    catchup: Optional[ScheduleCatchUp]
    task_name: str
    task_type: Optional[TaskType]
    payload: Dict[str, Any]
    paused: bool
    note: str
    created_at: Optional[datetime]
    updated_at: Optional[datetime]
    next_fires: List[datetime]
    last_fire_at: Optional[datetime]
    last_task_id: str
    fires: int
    skipped: int
    missed: int
    last_error: str
    buffered: bool


@dataclass(frozen=True)
class SchedulePage:
    """One page of `list_schedules()`, by id. `next_page_token` is empty on
    the last page."""

    schedules: List[Schedule]
    next_page_token: str


@dataclass(frozen=True)
class ScheduleUpdate:
    """The answer to `update_schedule()`: the schedule, and whether
    `create_if_missing` created it."""

    schedule: Schedule
    created: bool


# Watch items.


@dataclass(frozen=True)
class TaskEvent:
    """A task changed. `task` is its whole status after the change."""

    sequence: int
    kind: EventKind
    time: Optional[datetime]
    task: Task


@dataclass(frozen=True)
class WatchGap:
    """The events between `after_sequence` and `oldest_kept` are no longer
    kept one by one: SNAPSHOT events of every matching task that changed
    since follow."""

    after_sequence: int
    oldest_kept: int


@dataclass(frozen=True)
class WatchLive:
    """Replay is over; the stream is live. `resumed` is true after a
    reconnect."""

    sequence: int
    resumed: bool


@dataclass(frozen=True)
class WatchReconnecting:
    """The stream broke (`error`); it resumes after `after_sequence` in
    `delay`. Only yielded with `watch(..., report_reconnects=True)`."""

    attempt: int
    delay: timedelta
    after_sequence: int
    error: BaseException


WatchItem = Union[TaskEvent, WatchGap, WatchLive, WatchReconnecting]
