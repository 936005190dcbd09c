/**
 * Conversions between the public shapes (types.ts) and the generated
 * messages: enum numbers to names, durations, the schedule request, task
 * statuses and filters. A bad option becomes an `INVALID_ARGUMENT`
 * {@link SwitchyardError} naming the field the way the server would.
 */
import type { Duration } from './gen/google/protobuf/duration.js';
import {
  CancelOutcome,
  LogSource,
  ScheduleOutcome,
  TaskEventKind,
  type LogLine,
  ScheduleTaskRequest,
  TaskFilter as PbTaskFilter,
} from './gen/switchyard/v1/orchestrator.js';
import {
  Backoff_Kind,
  DebounceMode,
  StepState,
  TaskOptions,
  TaskSource,
  TaskState,
  TaskType as PbTaskType,
  WaitingReason,
  type StepStatus,
  type TaskStatus,
} from './gen/switchyard/v1/task.js';
import { SwitchyardError } from './errors.js';
import {
  FINAL_STATUSES,
  type BackoffOptions,
  type CancelOutcomeName,
  type DurationLike,
  type ScheduleDefaults,
  type ScheduleOutcomeName,
  type ScheduleTaskOptions,
  type StepInfo,
  type StepStateName,
  type TaskEventKindName,
  type TaskFilter,
  type TaskInfo,
  type TaskLogLine,
  type TaskSourceName,
  type TaskStatusName,
  type TaskTypeName,
  type WaitingReasonName,
} from './types.js';

type NumericEnum = Record<string, string | number>;

/** `TASK_STATE_PENDING` (value 1) → `PENDING`; an unknown number → `UNRECOGNIZED`. */
function nameOf<T extends string>(e: NumericEnum, prefix: string, value: number): T {
  const full = e[value];
  if (typeof full !== 'string' || full === 'UNRECOGNIZED') {
    return 'UNRECOGNIZED' as T;
  }
  return (full.startsWith(prefix) ? full.slice(prefix.length) : full) as T;
}

/** `PENDING` → 1; undefined when the name is not a value of the enum. */
function valueOf(e: NumericEnum, prefix: string, name: string): number | undefined {
  const v = e[`${prefix}${name.toUpperCase()}`];
  return typeof v === 'number' && v > 0 ? v : undefined;
}

export const taskStateName = (v: TaskState): TaskStatusName => nameOf(TaskState, 'TASK_STATE_', v);
export const taskSourceName = (v: TaskSource): TaskSourceName => nameOf(TaskSource, 'TASK_SOURCE_', v);
export const taskTypeName = (v: PbTaskType): TaskTypeName | 'UNSPECIFIED' | 'UNRECOGNIZED' => nameOf(PbTaskType, 'TASK_TYPE_', v);
export const cancelOutcomeName = (v: CancelOutcome): CancelOutcomeName => nameOf(CancelOutcome, 'CANCEL_OUTCOME_', v);
export const eventKindName = (v: TaskEventKind): TaskEventKindName => nameOf(TaskEventKind, 'TASK_EVENT_KIND_', v);
const waitingReasonName = (v: WaitingReason): WaitingReasonName | undefined =>
  v === WaitingReason.WAITING_REASON_UNSPECIFIED ? undefined : nameOf<WaitingReasonName>(WaitingReason, 'WAITING_REASON_', v);
const stepStateName = (v: StepState): StepStateName => nameOf(StepState, 'STEP_STATE_', v);
const logSourceName = (v: LogSource): TaskLogLine['source'] => nameOf(LogSource, 'LOG_SOURCE_', v);

/** A task type by name (case-insensitive) to the proto value. */
export function toPbTaskType(type: string, field = 'task_type'): PbTaskType {
  const v = valueOf(PbTaskType, 'TASK_TYPE_', String(type));
  if (v === undefined) {
    throw SwitchyardError.invalidArgument(field, `unknown task type ${JSON.stringify(type)}; expected SIMPLE, COMPLEX or INTEGRATION`);
  }
  return v;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds from a number of ms or a string like `1m30s`; throws INVALID_ARGUMENT on `field`. */
export function toMillis(value: DurationLike, field: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) {
      throw SwitchyardError.invalidArgument(field, `must be a finite, non-negative number of milliseconds, got ${value}`);
    }
    return value;
  }
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) {
    return Number(text);
  }
  const re = /(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    total += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
    matched = re.lastIndex;
  }
  if (text === '' || matched !== text.length) {
    throw SwitchyardError.invalidArgument(field, `not a duration: ${JSON.stringify(value)} (use milliseconds, or e.g. '500ms', '30s', '5m', '2h', '1d')`);
  }
  return total;
}

/** A `google.protobuf.Duration` from milliseconds. */
export function msToDuration(ms: number): Duration {
  let seconds = Math.floor(ms / 1000);
  let nanos = Math.round((ms - seconds * 1000) * 1e6);
  if (nanos >= 1e9) {
    seconds += 1;
    nanos -= 1e9;
  }
  return { seconds, nanos };
}

/** Milliseconds from a `google.protobuf.Duration`. */
export function durationToMs(d: Duration | undefined): number | undefined {
  return d === undefined ? undefined : d.seconds * 1000 + d.nanos / 1e6;
}

function toDuration(value: DurationLike | undefined, field: string): Duration | undefined {
  return value === undefined ? undefined : msToDuration(toMillis(value, field));
}

/**
 * BullMQ's `removeOnComplete`/`removeOnFail` as an age in milliseconds:
 * `true` is 0 (removed at the next sweep), `{ age }` is `age` seconds; `false`,
 * a count or `{ count }` set none (a count is the server's, per name).
 */
function bullmqAge(v: ScheduleTaskOptions['removeOnComplete'], field: string): number | undefined {
  if (v === true) {
    return 0;
  }
  if (v !== null && typeof v === 'object' && v.age !== undefined) {
    if (typeof v.age !== 'number' || !Number.isFinite(v.age) || v.age < 0) {
      throw SwitchyardError.invalidArgument(field, 'age must be a number of seconds, 0 or more');
    }
    return v.age * 1000;
  }
  return undefined;
}

function toRetention(options: ScheduleTaskOptions): TaskOptions['retention'] {
  const own = options.retention ?? {};
  const completed = own.completed ?? bullmqAge(options.removeOnComplete, 'options.retention.completed');
  const failed = own.failed ?? bullmqAge(options.removeOnFail, 'options.retention.failed');
  const cancelled = own.cancelled;
  if (completed === undefined && failed === undefined && cancelled === undefined) {
    return undefined;
  }
  return {
    completed: toDuration(completed, 'options.retention.completed'),
    failed: toDuration(failed, 'options.retention.failed'),
    cancelled: toDuration(cancelled, 'options.retention.cancelled'),
  };
}

function toBackoff(b: BackoffOptions | undefined): TaskOptions['backoff'] {
  if (b === undefined) {
    return undefined;
  }
  if (typeof b === 'number' || typeof b === 'string') {
    return { kind: Backoff_Kind.KIND_FIXED, base: toDuration(b, 'options.backoff.base'), max: undefined };
  }
  if (b.jitter !== undefined && b.jitter !== 0) {
    throw SwitchyardError.invalidArgument('options.backoff.jitter', 'BullMQ backoff jitter cannot be honoured: Switchyard applies its own backoff (remove jitter)');
  }
  let kind: Backoff_Kind;
  switch (b.type) {
    case undefined:
      kind = Backoff_Kind.KIND_UNSPECIFIED;
      break;
    case 'fixed':
      kind = Backoff_Kind.KIND_FIXED;
      break;
    case 'exponential':
      kind = Backoff_Kind.KIND_EXPONENTIAL;
      break;
    default:
      throw SwitchyardError.invalidArgument(
        'options.backoff.kind',
        `backoff type ${JSON.stringify(b.type)} cannot be honoured (custom BullMQ backoff strategies do not run in Switchyard); expected fixed or exponential`,
      );
  }
  return {
    kind,
    base: toDuration(b.delay, 'options.backoff.base'),
    max: toDuration(b.maxDelay, 'options.backoff.max'),
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    return false;
  }
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * A payload as the wire carries it: a JSON object. Class instances, Dates
 * and the like go through JSON (toJSON), as they would over HTTP.
 */
export function toJsonObject(payload: unknown, field: string): Record<string, unknown> {
  if (payload === undefined || payload === null) {
    return {};
  }
  let value: unknown = payload;
  if (!isPlainObject(payload) || !isJsonSafe(payload)) {
    try {
      value = JSON.parse(JSON.stringify(payload));
    } catch (err) {
      throw SwitchyardError.invalidArgument(field, `must be JSON-serialisable: ${(err as Error).message}`);
    }
  }
  if (!isPlainObject(value)) {
    throw SwitchyardError.invalidArgument(field, 'must be a JSON object (not an array or a scalar)');
  }
  return value;
}

/** Whether a value holds only what google.protobuf.Value carries (no Dates, Maps, NaN, undefined in arrays...). */
function isJsonSafe(v: unknown, depth = 0): boolean {
  if (depth > 64) {
    return false;
  }
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(v);
    case 'object':
      if (v === null) {
        return true;
      }
      if (Array.isArray(v)) {
        return v.every((x) => x !== undefined && isJsonSafe(x, depth + 1));
      }
      return isPlainObject(v) && Object.values(v).every((x) => x === undefined || isJsonSafe(x, depth + 1));
    default:
      return false;
  }
}

/** Any JSON value for a `google.protobuf.Value` (a handler's result), through JSON when needed. */
export function toJsonValue(value: unknown): unknown {
  if (value === undefined) {
    return null;
  }
  if (isJsonSafe(value)) {
    return value;
  }
  const text = JSON.stringify(value);
  return text === undefined ? null : JSON.parse(text);
}

/**
 * Every option `scheduleTask` knows. Anything else (a typo, or a BullMQ option
 * this client does not know) is refused with `INVALID_ARGUMENT` rather than
 * silently dropped.
 */
const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'taskType', 'priority', 'attempts', 'backoff', 'delay', 'timeout', 'userId', 'sessionId', 'immediate',
  'idempotencyKey', 'idempotencyTtl', 'concurrencyKey', 'labels', 'queue', 'cleanupTask', 'retention', 'temporal', 'n8n', 'cancelTimeoutMs',
  // BullMQ's JobsOptions that mean something here, or nothing harmful.
  'jobId', 'removeOnComplete', 'removeOnFail', 'keepLogs', 'stackTraceLimit', 'sizeLimit', 'timestamp', 'telemetry', 'lifo',
  // Mapped onto idempotencyKey/idempotencyTtl or Switchyard's debounce (toDedup).
  'deduplication', 'debounce',
  // BullMQ's JobsOptions that cannot be honoured: refused below with a reason.
  'repeat', 'parent',
]);

/** BullMQ options that cannot be honoured, with the reason given when one is set. */
const REFUSED_BULLMQ: Record<string, string> = {
  repeat: 'BullMQ repeatable jobs cannot be honoured: Switchyard has no repeat schedules (schedule each run, or use a COMPLEX workflow with a timer)',
  parent: 'BullMQ flows (parent jobs) cannot be honoured: use a COMPLEX workflow for dependent steps',
  failParentOnFailure: 'BullMQ flows (parent jobs) cannot be honoured: use a COMPLEX workflow for dependent steps',
  ignoreDependencyOnFailure: 'BullMQ flows (parent jobs) cannot be honoured: use a COMPLEX workflow for dependent steps',
  removeDependencyOnFailure: 'BullMQ flows (parent jobs) cannot be honoured: use a COMPLEX workflow for dependent steps',
  continueParentOnFailure: 'BullMQ flows (parent jobs) cannot be honoured: use a COMPLEX workflow for dependent steps',
  repeatJobKey: 'BullMQ repeatable jobs cannot be honoured: Switchyard has no repeat schedules',
  prevMillis: 'BullMQ repeatable jobs cannot be honoured: Switchyard has no repeat schedules',
};

/** Refuses options that are unknown or cannot be honoured, naming them. */
function checkOptionKeys(options: ScheduleTaskOptions): void {
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) {
      continue;
    }
    const refused = REFUSED_BULLMQ[key];
    if (refused !== undefined) {
      throw SwitchyardError.invalidArgument(`options.${key}`, refused);
    }
    if (!KNOWN_OPTIONS.has(key)) {
      throw SwitchyardError.invalidArgument(`options.${key}`, `unknown option ${JSON.stringify(key)}`);
    }
  }
  if (options.lifo === true) {
    throw SwitchyardError.invalidArgument('options.lifo', 'BullMQ LIFO order cannot be honoured: Switchyard runs by priority, then first in first out');
  }
  if (options.jobId !== undefined && options.idempotencyKey !== undefined && String(options.jobId) !== options.idempotencyKey) {
    throw SwitchyardError.invalidArgument('options.idempotency_key', 'jobId and idempotencyKey are the same setting: give one, or the same value');
  }
}

/**
 * The idempotency key, its window and the debounce key of `options`: its own
 * `idempotencyKey` (or `jobId`), `idempotencyTtl` and `debounce`, or BullMQ's
 * `deduplication` / older `debounce: { id, ttl }` mapped onto them.
 */
function toDedup(options: ScheduleTaskOptions): Pick<TaskOptions, 'idempotencyKey' | 'idempotencyTtl' | 'debounce'> {
  let idempotencyKey = options.idempotencyKey ?? (options.jobId === undefined ? '' : String(options.jobId));
  let idempotencyTtl = toDuration(options.idempotencyTtl, 'options.idempotency_ttl');
  let debounce: TaskOptions['debounce'];
  let dedup = options.deduplication;
  const d = options.debounce;
  if (d !== undefined && d !== null && typeof d === 'object' && 'id' in d) {
    if (dedup !== undefined) {
      throw SwitchyardError.invalidArgument('options.debounce', 'give BullMQ\'s deduplication or debounce, not both');
    }
    dedup = { id: d.id, ttl: d.ttl };
  } else if (d !== undefined && d !== null) {
    if (typeof d !== 'object' || typeof d.key !== 'string') {
      throw SwitchyardError.invalidArgument('options.debounce.key', 'must be a string');
    }
    const mode = d.mode ?? 'DEBOUNCE';
    if (mode !== 'DEBOUNCE' && mode !== 'THROTTLE') {
      throw SwitchyardError.invalidArgument('options.debounce.mode', 'must be DEBOUNCE or THROTTLE');
    }
    debounce = {
      key: d.key,
      period: toDuration(d.period, 'options.debounce.period'),
      mode: mode === 'THROTTLE' ? DebounceMode.DEBOUNCE_MODE_THROTTLE : DebounceMode.DEBOUNCE_MODE_DEBOUNCE,
    };
  }
  if (dedup !== undefined && dedup !== null) {
    if (typeof dedup !== 'object' || typeof dedup.id !== 'string' || dedup.id === '') {
      throw SwitchyardError.invalidArgument('options.deduplication.id', 'must be a non-empty string');
    }
    if (idempotencyKey !== '' || debounce !== undefined) {
      throw SwitchyardError.invalidArgument('options.deduplication', 'is the idempotency key (or debounce): give one of jobId, idempotencyKey, deduplication and debounce');
    }
    if (Boolean(dedup.extend) !== Boolean(dedup.replace)) {
      throw SwitchyardError.invalidArgument('options.deduplication', 'extend and replace map onto Switchyard\'s debounce only together (the newest task wins after a quiet period of ttl)');
    }
    if (dedup.extend && dedup.replace) {
      if (dedup.ttl === undefined) {
        throw SwitchyardError.invalidArgument('options.deduplication.ttl', 'is required with extend and replace (it is the quiet period)');
      }
      debounce = {
        key: dedup.id,
        period: toDuration(dedup.ttl, 'options.deduplication.ttl'),
        mode: DebounceMode.DEBOUNCE_MODE_DEBOUNCE,
      };
    } else {
      idempotencyKey = dedup.id;
      idempotencyTtl = toDuration(dedup.ttl, 'options.deduplication.ttl');
    }
  }
  return { idempotencyKey, idempotencyTtl, debounce };
}

/** `SCHEDULE_OUTCOME_CREATED` → `CREATED`. */
export const scheduleOutcomeName = (v: ScheduleOutcome): ScheduleOutcomeName =>
  nameOf(ScheduleOutcome, 'SCHEDULE_OUTCOME_', v);

/** Builds the ScheduleTaskRequest for `scheduleTask(name, payload, options)`. */
export function toScheduleRequest(
  name: string,
  payload: unknown,
  options: ScheduleTaskOptions = {},
  defaults: ScheduleDefaults = {},
): ScheduleTaskRequest {
  if (typeof name !== 'string') {
    throw SwitchyardError.invalidArgument('name', 'must be a string');
  }
  checkOptionKeys(options);
  const typeName = options.taskType ?? (options.temporal ? 'COMPLEX' : options.n8n ? 'INTEGRATION' : (defaults.taskType ?? 'SIMPLE'));
  const taskType = toPbTaskType(typeName);
  const labels = { ...defaults.labels, ...options.labels };
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== 'string') {
      throw SwitchyardError.invalidArgument(`options.labels[${k}]`, 'label values must be strings');
    }
  }
  // Whole message literals (every field set), not `create()`: its
  // `fromPartial` copies each nested message again, on every call.
  const req: ScheduleTaskRequest = {
    name,
    payload: toJsonObject(payload, 'payload'),
    taskType,
    options: {
      priority: options.priority ?? defaults.priority ?? 0,
      attempts: options.attempts ?? defaults.attempts ?? 0,
      backoff: toBackoff(options.backoff ?? defaults.backoff),
      delay: toDuration(options.delay, 'options.delay'),
      executionTimeout: toDuration(options.timeout ?? defaults.timeout, 'options.execution_timeout'),
      userId: options.userId ?? defaults.userId ?? '',
      sessionId: options.sessionId ?? defaults.sessionId ?? '',
      immediate: options.immediate ?? false,
      ...toDedup(options),
      concurrencyKey: options.concurrencyKey ?? '',
      labels,
      cleanup: options.cleanupTask ? { name: options.cleanupTask } : undefined,
      retention: toRetention(options),
    },
  };
  // The target goes with the type; a mismatch is left to the server, which
  // names the field.
  if (options.temporal) {
    const t = options.temporal;
    req.complex = {
      workflowType: t.workflowType ?? '',
      workflowArgs: t.workflowArgs === undefined ? undefined : (toJsonValue(t.workflowArgs) as unknown[]),
      taskQueue: t.taskQueue ?? '',
      trackingQueue: t.trackingQueue ?? '',
      workflowId: t.workflowId ?? '',
    };
  } else if (options.n8n) {
    const n = options.n8n;
    req.integration = {
      n8n: { workflowId: n.workflowId ?? '', webhookUrl: n.webhookUrl ?? '', integrationSource: n.integrationSource ?? '' },
    };
  } else if (options.queue !== undefined || taskType === PbTaskType.TASK_TYPE_SIMPLE) {
    req.simple = { queue: options.queue ?? '' };
  }
  return req;
}

const opt = (s: string): string | undefined => (s === '' ? undefined : s);

/** The public view of a generated TaskStatus. */
export function toTaskInfo(s: TaskStatus, payload?: Record<string, unknown>): TaskInfo {
  const status = taskStateName(s.state);
  const info: TaskInfo = {
    id: s.id,
    name: s.name,
    taskType: taskTypeName(s.taskType),
    status,
    source: taskSourceName(s.source),
    attempt: s.attempt,
    maxAttempts: s.maxAttempts,
    priority: s.priority,
    immediate: s.immediate,
    userId: opt(s.userId),
    sessionId: opt(s.sessionId),
    progress: s.progress,
    progressMessage: opt(s.progressMessage),
    result: s.result ?? undefined,
    error: s.lastError?.message,
    lastError: s.lastError ? { ...s.lastError } : undefined,
    createdAt: s.createdAt ?? new Date(0),
    runAt: s.runAt,
    startedAt: s.startedAt,
    finishedAt: s.finishedAt,
    externalId: opt(s.externalId),
    waitingReason: waitingReasonName(s.waitingReason),
    hold: s.hold
      ? {
          rule: s.hold.rule,
          concurrencyKey: opt(s.hold.concurrencyKey),
          limit: s.hold.limit,
          running: s.hold.running,
          ahead: s.hold.ahead,
          ...(s.hold.nextStartAt
            ? {
                nextStartAt: s.hold.nextStartAt,
                rate: s.hold.rate,
                intervalMs: s.hold.interval ? s.hold.interval.seconds * 1000 + Math.floor(s.hold.interval.nanos / 1e6) : 0,
                burst: s.hold.burst,
              }
            : {}),
        }
      : undefined,
    concurrencyKey: opt(s.concurrencyKey ?? ''),
    cancelRequested: s.cancelRequested,
    labels: { ...s.labels },
    workerId: opt(s.workerId),
    idempotencyKey: opt(s.idempotencyKey),
    target: opt(s.target),
    sequence: s.sequence,
    steps: (s.steps ?? []).map(toStepInfo),
    workflowVersion: s.workflowVersion || undefined,
    parentId: opt(s.parentId ?? ''),
    run: s.run,
    isFinal: FINAL_STATUSES.has(status),
    raw: s,
  };
  if (payload !== undefined) {
    info.payload = payload;
  }
  return info;
}

function toStepInfo(s: StepStatus): StepInfo {
  return {
    id: s.id,
    kind: s.kind,
    state: stepStateName(s.state),
    attempt: s.attempt,
    output: s.output ?? undefined,
    error: s.error ? { ...s.error } : undefined,
    startedAt: s.startedAt,
    finishedAt: s.finishedAt,
    taskId: opt(s.taskId),
    compensationTaskId: opt(s.compensationTaskId),
    dependsOn: [...s.dependsOn],
  };
}

/** The generated TaskFilter from the public one. */
export function toPbFilter(f: TaskFilter = {}): PbTaskFilter {
  return PbTaskFilter.create({
    userId: f.userId ?? '',
    sessionId: f.sessionId ?? '',
    scheduleId: f.scheduleId ?? '',
    errorKind: f.errorKind ?? '',
    taskIds: f.taskIds ?? [],
    names: f.names ?? [],
    taskTypes: (f.taskTypes ?? []).map((t) => toPbTaskType(t, 'filter.task_types')),
    states: (f.statuses ?? []).map((s) => {
      const v = valueOf(TaskState, 'TASK_STATE_', s);
      if (v === undefined) {
        throw SwitchyardError.invalidArgument('filter.states', `unknown status ${JSON.stringify(s)}`);
      }
      return v;
    }),
    sources: (f.sources ?? []).map((s) => {
      const v = valueOf(TaskSource, 'TASK_SOURCE_', s);
      if (v === undefined) {
        throw SwitchyardError.invalidArgument('filter.sources', `unknown source ${JSON.stringify(s)}`);
      }
      return v;
    }),
  });
}

/** The public view of a log line. */
export function toLogLine(l: LogLine): TaskLogLine {
  return {
    line: l.line,
    time: l.time,
    source: logSourceName(l.source),
    level: l.level,
    message: l.message,
    attempt: l.attempt,
    raw: l,
  };
}
