"""Conversions between plain Python values and the generated messages.

A bad value becomes an `InvalidArgumentError` naming the field the way the
server would (`payload`, `options.delay`, `task_type`, ...).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from ._gen.switchyard.v1 import orchestrator_pb2 as opb
from ._gen.switchyard.v1 import schedule_pb2 as spb
from ._gen.switchyard.v1 import task_pb2 as tpb
from .errors import invalid_argument
from .types import (
    Backoff,
    BackoffKind,
    CancelOutcome,
    Debounce,
    DurationLike,
    EventKind,
    LatencySummary,
    LogLine,
    LogSource,
    Metrics,
    QueueMetrics,
    Retention,
    Schedule,
    ScheduleCatchUp,
    ScheduleOverlap,
    StateCounts,
    StepState,
    StepStatus,
    Task,
    TaskError,
    TaskSource,
    TaskState,
    TaskType,
    WaitingReason,
)

E = TypeVar("E")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _enum_maps(pb_enum: Any, prefix: str, py_enum: Type[E]) -> tuple[Dict[int, E], Dict[str, int]]:
    to_py: Dict[int, E] = {}
    to_pb: Dict[str, int] = {}
    for name, number in pb_enum.items():
        short = name[len(prefix):] if name.startswith(prefix) else name
        try:
            member = py_enum(short)  # type: ignore[call-arg]
        except ValueError:
            continue
        to_py[number] = member
        if number != 0:
            to_pb[short] = number
    return to_py, to_pb


_TYPE_PY, _TYPE_PB = _enum_maps(tpb.TaskType, "TASK_TYPE_", TaskType)
_STATE_PY, _STATE_PB = _enum_maps(tpb.TaskState, "TASK_STATE_", TaskState)
_SOURCE_PY, _SOURCE_PB = _enum_maps(tpb.TaskSource, "TASK_SOURCE_", TaskSource)
_REASON_PY, _ = _enum_maps(tpb.WaitingReason, "WAITING_REASON_", WaitingReason)
_OUTCOME_PY, _ = _enum_maps(opb.CancelOutcome, "CANCEL_OUTCOME_", CancelOutcome)
_EVENT_PY, _ = _enum_maps(opb.TaskEventKind, "TASK_EVENT_KIND_", EventKind)
_LOG_SOURCE_PY, _ = _enum_maps(opb.LogSource, "LOG_SOURCE_", LogSource)
_STEP_PY, _ = _enum_maps(tpb.StepState, "STEP_STATE_", StepState)
_OVERLAP_PY, _OVERLAP_PB = _enum_maps(spb.ScheduleOverlapPolicy, "SCHEDULE_OVERLAP_POLICY_", ScheduleOverlap)
_CATCHUP_PY, _CATCHUP_PB = _enum_maps(spb.ScheduleCatchUp, "SCHEDULE_CATCH_UP_", ScheduleCatchUp)
_BACKOFF_PB = {"FIXED": tpb.Backoff.KIND_FIXED, "EXPONENTIAL": tpb.Backoff.KIND_EXPONENTIAL}


def _enum_value(value: Any, table: Mapping[str, int], field: str, what: str) -> int:
    name = getattr(value, "value", value)
    if isinstance(name, str):
        number = table.get(name.upper())
        if number is not None:
            return number
    expected = ", ".join(table)
    raise invalid_argument(field, f"unknown {what} {value!r}; expected one of {expected}")


def task_type_to_pb(value: Union[TaskType, str], field: str = "task_type") -> int:
    return _enum_value(value, _TYPE_PB, field, "task type")


def task_state_to_pb(value: Union[TaskState, str], field: str = "filter.states") -> int:
    return _enum_value(value, _STATE_PB, field, "state")


def task_source_to_pb(value: Union[TaskSource, str], field: str = "filter.sources") -> int:
    return _enum_value(value, _SOURCE_PB, field, "source")


def cancel_outcome(number: int) -> CancelOutcome:
    try:
        return _OUTCOME_PY[number]
    except KeyError:
        raise ValueError(f"unknown cancel outcome {number}") from None


def event_kind(number: int) -> EventKind:
    return _EVENT_PY.get(number, EventKind.UPDATED)


# JSON values.


def value_to_py(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        if n.is_integer() and abs(n) <= 9007199254740992:
            return int(n)
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [value_to_py(x) for x in v.list_value.values]
    return None


def struct_to_dict(s: struct_pb2.Struct) -> Dict[str, Any]:
    # Iterating the map's keys stays in C; its items() view is Python code.
    fields = s.fields
    return {k: value_to_py(fields[k]) for k in fields} if fields else {}


def set_value(v: struct_pb2.Value, obj: Any, field: str) -> None:
    t = type(obj)
    if t is str:  # the common cases first, by exact type
        v.string_value = obj
        return
    if t is int:
        v.number_value = float(obj)
        return
    if obj is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif obj is True or obj is False:
        v.bool_value = obj
    elif isinstance(obj, str):
        v.string_value = obj
    elif isinstance(obj, (int, float)):
        f = float(obj)
        if not math.isfinite(f):
            raise invalid_argument(field, f"must be JSON-serialisable: {obj!r} is not a finite number")
        v.number_value = f
    elif isinstance(obj, Mapping):
        fill_struct(v.struct_value, obj, field)
    elif isinstance(obj, (list, tuple)):
        lv = v.list_value
        lv.SetInParent()
        for i, item in enumerate(obj):
            set_value(lv.values.add(), item, f"{field}[{i}]")
    else:
        raise invalid_argument(field, f"must be JSON-serialisable: {type(obj).__name__} is not a JSON value")


def fill_struct(s: struct_pb2.Struct, obj: Mapping[str, Any], field: str) -> None:
    s.SetInParent()
    fields = s.fields
    for k, item in obj.items():
        if not isinstance(k, str):
            raise invalid_argument(field, f"must be JSON-serialisable: key {k!r} is not a string")
        set_value(fields[k], item, field)


def payload_to_struct(target: struct_pb2.Struct, payload: Any, field: str = "payload") -> None:
    if payload is None:
        return
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise invalid_argument(field, "must be a JSON object (a dict, not a list or a scalar)")
    fill_struct(target, payload, field)


def to_value(obj: Any, field: str = "result") -> struct_pb2.Value:
    v = struct_pb2.Value()
    set_value(v, obj, field)
    return v


# Durations and times.

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def to_seconds(value: DurationLike, field: str) -> float:
    """A duration as seconds: a timedelta, a number of seconds, or '500ms',
    '30s', '5m', '2h', '1d'."""
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, bool):
        raise invalid_argument(field, f"not a duration: {value!r}")
    elif isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise invalid_argument(field, f"not a duration: {value!r} (use seconds, a timedelta, or e.g. '500ms', '30s', '5m', '2h', '1d')")
        secs = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise invalid_argument(field, f"not a duration: {value!r}")
    if not math.isfinite(secs) or secs < 0:
        raise invalid_argument(field, f"must be a finite, non-negative duration, got {value!r}")
    return secs


def set_duration(d: duration_pb2.Duration, value: DurationLike, field: str) -> None:
    secs = to_seconds(value, field)
    whole = int(secs)
    d.seconds = whole
    d.nanos = int(round((secs - whole) * 1e9))
    if d.nanos >= 1_000_000_000:
        d.seconds += 1
        d.nanos -= 1_000_000_000


def duration_to_timedelta(d: duration_pb2.Duration) -> timedelta:
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def timestamp_to_datetime(msg: Any, field: str) -> Optional[datetime]:
    if not msg.HasField(field):
        return None
    return _ts(getattr(msg, field))


def _ts(ts: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


# Statuses.


def task_error(e: tpb.TaskError) -> TaskError:
    return TaskError(message=e.message, kind=e.kind, details=e.details, retryable=e.retryable, attempt=e.attempt)


def _step(s: tpb.StepStatus) -> StepStatus:
    return StepStatus(
        id=s.id,
        kind=s.kind,
        state=_STEP_PY.get(s.state, StepState.UNSPECIFIED),
        attempt=s.attempt,
        output=value_to_py(s.output) if s.HasField("output") else None,
        error=task_error(s.error) if s.HasField("error") else None,
        started_at=timestamp_to_datetime(s, "started_at"),
        finished_at=timestamp_to_datetime(s, "finished_at"),
        task_id=s.task_id,
        compensation_task_id=s.compensation_task_id,
        depends_on=list(s.depends_on),
    )


_TASK_NEW = object.__new__


def task_from_pb(s: tpb.TaskStatus, payload: Optional[struct_pb2.Struct] = None) -> Task:
    state = _STATE_PY.get(s.state)
    if state is None:
        raise ValueError(f"task {s.id}: unknown state {s.state}")
    has = s.HasField
    steps = s.steps
    labels = s.labels
    # A frozen dataclass's __init__ sets each of its 31 fields through
    # object.__setattr__; filling __dict__ at once builds the same object in
    # a third of the time (status, lists and watches convert many of them).
    t: Task = _TASK_NEW(Task)
    t.__dict__.update(
        id=s.id,
        name=s.name,
        task_type=_TYPE_PY.get(s.task_type),
        source=_SOURCE_PY.get(s.source, TaskSource.UNSPECIFIED),
        state=state,
        attempt=s.attempt,
        max_attempts=s.max_attempts,
        priority=s.priority,
        immediate=s.immediate,
        user_id=s.user_id,
        session_id=s.session_id,
        progress=s.progress,
        progress_message=s.progress_message,
        result=value_to_py(s.result) if has("result") else None,
        last_error=task_error(s.last_error) if has("last_error") else None,
        created_at=_ts(s.created_at) if has("created_at") else None,
        run_at=_ts(s.run_at) if has("run_at") else None,
        started_at=_ts(s.started_at) if has("started_at") else None,
        finished_at=_ts(s.finished_at) if has("finished_at") else None,
        external_id=s.external_id,
        waiting_reason=_REASON_PY.get(s.waiting_reason) if s.waiting_reason else None,
        cancel_requested=s.cancel_requested,
        labels=dict(labels) if labels else {},
        worker_id=s.worker_id,
        idempotency_key=s.idempotency_key,
        target=s.target,
        sequence=s.sequence,
        steps=[_step(x) for x in steps] if steps else [],
        workflow_version=s.workflow_version,
        parent_id=s.parent_id,
        run=s.run,
        payload=struct_to_dict(payload) if payload is not None else None,
    )
    return t


def log_line(line: opb.LogLine) -> LogLine:
    return LogLine(
        line=line.line,
        time=timestamp_to_datetime(line, "time"),
        source=_LOG_SOURCE_PY.get(line.source, LogSource.UNSPECIFIED),
        level=line.level,
        message=line.message,
        attempt=line.attempt,
    )


def _counts(c: opb.StateCounts) -> StateCounts:
    return StateCounts(
        pending=c.pending,
        running=c.running,
        completed=c.completed,
        failed=c.failed,
        cancelled=c.cancelled,
        compensating=c.compensating,
        compensated=c.compensated,
    )


def _latency(l: opb.LatencySummary) -> LatencySummary:
    ms = lambda x: timedelta(milliseconds=x)  # noqa: E731
    return LatencySummary(count=l.count, p50=ms(l.p50_ms), p90=ms(l.p90_ms), p99=ms(l.p99_ms), p999=ms(l.p999_ms), max=ms(l.max_ms))


def metrics(m: opb.GetMetricsResponse) -> Metrics:
    return Metrics(
        total=_counts(m.total),
        by_type={k: _counts(v) for k, v in m.by_type.items()},
        by_name={k: _counts(v) for k, v in m.by_name.items()},
        queues=[
            QueueMetrics(name=q.name, ready=q.ready, scheduled=q.scheduled, running=q.running, workers=q.workers, free_slots=q.free_slots)
            for q in m.queues
        ],
        throughput_per_sec=m.throughput_per_sec,
        schedule_to_start=_latency(m.schedule_to_start),
        run_time=_latency(m.run_time),
        workers_connected=m.workers_connected,
        started_at=timestamp_to_datetime(m, "started_at"),
        last_sequence=m.last_sequence,
    )


# Requests.


def _strings(value: Union[str, Iterable[str], None], field: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    out = list(value)
    for v in out:
        if not isinstance(v, str):
            raise invalid_argument(field, f"must be strings, got {v!r}")
    return out


def _many(value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def fill_filter(
    f: opb.TaskFilter,
    *,
    user_id: Optional[str] = None,
    session_id: Optional[str] = None,
    task_ids: Union[str, Iterable[str], None] = None,
    names: Union[str, Iterable[str], None] = None,
    task_types: Any = None,
    states: Any = None,
    sources: Any = None,
    error_kind: Optional[str] = None,
) -> None:
    if user_id:
        f.user_id = user_id
    if session_id:
        f.session_id = session_id
    if error_kind:
        f.error_kind = error_kind
    f.task_ids.extend(_strings(task_ids, "filter.task_ids"))
    f.names.extend(_strings(names, "filter.names"))
    f.task_types.extend([task_type_to_pb(t, "filter.task_types") for t in _many(task_types)])  # type: ignore[misc]
    f.states.extend([task_state_to_pb(s, "filter.states") for s in _many(states)])  # type: ignore[misc]
    f.sources.extend([task_source_to_pb(s, "filter.sources") for s in _many(sources)])  # type: ignore[misc]


def fill_options(
    o: tpb.TaskOptions,
    *,
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
) -> None:
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise invalid_argument("options.priority", f"must be an integer, got {priority!r}")
        o.priority = priority  # the server checks the range
    if attempts is not None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise invalid_argument("options.attempts", f"must be a non-negative integer, got {attempts!r}")
        o.attempts = min(attempts, 2**32 - 1)
    if backoff is not None:
        b = o.backoff
        b.SetInParent()
        if backoff.kind is not None:
            b.kind = _enum_value(backoff.kind, _BACKOFF_PB, "options.backoff.kind", "backoff kind")  # type: ignore[assignment]
        if backoff.base is not None:
            set_duration(b.base, backoff.base, "options.backoff.base")
        if backoff.max is not None:
            set_duration(b.max, backoff.max, "options.backoff.max")
    if delay is not None:
        set_duration(o.delay, delay, "options.delay")
    if execution_timeout is not None:
        set_duration(o.execution_timeout, execution_timeout, "options.execution_timeout")
    if user_id:
        o.user_id = user_id
    if session_id:
        o.session_id = session_id
    if immediate:
        o.immediate = True
    if idempotency_key:
        o.idempotency_key = idempotency_key
    if idempotency_ttl is not None:
        set_duration(o.idempotency_ttl, idempotency_ttl, "options.idempotency_ttl")
    if debounce is not None:
        if not isinstance(debounce, Debounce):
            raise invalid_argument("options.debounce", f"must be a Debounce, got {type(debounce).__name__}")
        d = o.debounce
        d.SetInParent()
        if not isinstance(debounce.key, str):
            raise invalid_argument("options.debounce.key", "must be a string")
        d.key = debounce.key
        set_duration(d.period, debounce.period, "options.debounce.period")
        mode = _DEBOUNCE_MODE_PB.get(str(debounce.mode).upper())
        if mode is None:
            raise invalid_argument("options.debounce.mode", f"must be DEBOUNCE or THROTTLE, got {debounce.mode!r}")
        d.mode = mode  # type: ignore[assignment]
    if labels:
        for k, v in labels.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise invalid_argument(f"options.labels[{k}]", "label keys and values must be strings")
            o.labels[k] = v
    if cleanup:
        o.cleanup.name = cleanup
    if retention is not None:
        if not isinstance(retention, Retention):
            raise invalid_argument("options.retention", f"must be a Retention, got {type(retention).__name__}")
        r = o.retention
        r.SetInParent()
        for field in ("completed", "failed", "cancelled"):
            value = getattr(retention, field)
            if value is not None:
                set_duration(getattr(r, field), value, f"options.retention.{field}")


_DEBOUNCE_MODE_PB = {"DEBOUNCE": tpb.DEBOUNCE_MODE_DEBOUNCE, "THROTTLE": tpb.DEBOUNCE_MODE_THROTTLE}


def schedule_outcome(number: int) -> str:
    """A `switchyard.v1.ScheduleOutcome` number as its word (`CREATED`, ...)."""
    try:
        return str(opb.ScheduleOutcome.Name(number)).removeprefix("SCHEDULE_OUTCOME_")
    except ValueError:
        return "UNRECOGNIZED"


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def ensure_str_list(value: Sequence[Any], field: str) -> List[str]:
    return _strings(value, field)


def task_state(number: int) -> Optional[TaskState]:
    """A `switchyard.v1.TaskState` number as a `TaskState` (None if unknown)."""
    return _STATE_PY.get(number)


# Schedules.


def _set_time(ts: timestamp_pb2.Timestamp, value: Any, field: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise invalid_argument(field, f"must be a timezone-aware datetime, got {value!r}")
    ts.FromDatetime(value.astimezone(timezone.utc))


def fill_schedule_spec(
    spec: spb.ScheduleSpec,
    task: opb.ScheduleTaskRequest,
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
) -> None:
    """Fills a `ScheduleSpec`: its timing (exactly one of `cron` and
    `interval`), its options and its task template. Bad values are named
    as the server names them (`spec.cron`, `spec.interval`, ...)."""
    if (cron is None) == (interval is None):
        raise invalid_argument("spec.cron", "exactly one of cron and interval is required")
    if cron is not None:
        if not isinstance(cron, str):
            raise invalid_argument("spec.cron", f"must be a string, got {type(cron).__name__}")
        spec.cron = cron
    else:
        spec.interval.SetInParent()  # set, even when zero (the server then says why)
        set_duration(spec.interval, interval, "spec.interval")  # type: ignore[arg-type]
    if time_zone:
        if not isinstance(time_zone, str):
            raise invalid_argument("spec.time_zone", f"must be a string, got {type(time_zone).__name__}")
        spec.time_zone = time_zone
    if start_at is not None:
        _set_time(spec.start_at, start_at, "spec.start_at")
    if end_at is not None:
        _set_time(spec.end_at, end_at, "spec.end_at")
    if jitter is not None:
        set_duration(spec.jitter, jitter, "spec.jitter")
    if overlap is not None:
        spec.overlap = _enum_value(overlap, _OVERLAP_PB, "spec.overlap", "overlap policy")  # type: ignore[assignment]
    if catchup_window is not None:
        set_duration(spec.catchup_window, catchup_window, "spec.catchup_window")
    if catchup is not None:
        spec.catchup = _enum_value(catchup, _CATCHUP_PB, "spec.catchup", "catch-up")  # type: ignore[assignment]
    spec.task.CopyFrom(task)


def schedule_from_pb(s: spb.ScheduleInfo) -> Schedule:
    spec = s.spec
    timing = spec.WhichOneof("timing")
    t = spec.task
    return Schedule(
        id=s.schedule_id,
        cron=spec.cron if timing == "cron" else None,
        interval=duration_to_timedelta(spec.interval) if timing == "interval" else None,
        time_zone=spec.time_zone,
        start_at=timestamp_to_datetime(spec, "start_at"),
        end_at=timestamp_to_datetime(spec, "end_at"),
        jitter=duration_to_timedelta(spec.jitter) if spec.HasField("jitter") else None,
        overlap=_OVERLAP_PY.get(spec.overlap) if spec.overlap else None,
        catchup_window=duration_to_timedelta(spec.catchup_window) if spec.HasField("catchup_window") else None,
        catchup=_CATCHUP_PY.get(spec.catchup) if spec.catchup else None,
        task_name=t.name,
        task_type=_TYPE_PY.get(t.task_type) if t.task_type else None,
        payload=struct_to_dict(t.payload),
        paused=s.paused,
        note=s.note,
        created_at=timestamp_to_datetime(s, "created_at"),
        updated_at=timestamp_to_datetime(s, "updated_at"),
        next_fires=[_ts(ts) for ts in s.next_fires],
        last_fire_at=timestamp_to_datetime(s, "last_fire_at"),
        last_task_id=s.last_task_id,
        fires=s.fires,
        skipped=s.skipped,
        missed=s.missed,
        last_error=s.last_error,
        buffered=s.buffered,
    )
