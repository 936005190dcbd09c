/**
 * The public shapes of the client API: the original design's option and
 * result objects, with names instead of proto enum numbers, milliseconds or
 * duration strings instead of `google.protobuf.Duration`, and Dates for
 * timestamps. The wire messages themselves are generated (see `pb`).
 */
import type { GetMetricsResponse, LogLine } from './gen/switchyard/v1/orchestrator.js';
import type { TaskStatus } from './gen/switchyard/v1/task.js';
import type { SwitchyardError } from './errors.js';

/** The three kinds of work. The kind picks the executor. */
export enum TaskType {
  /** A short queue job run by a worker that registered the task's name (BullMQ-style). */
  SIMPLE = 'SIMPLE',
  /** A stateful, long-running workflow with compensation (Temporal-style). */
  COMPLEX = 'COMPLEX',
  /** A call to an external webhook (n8n-style). */
  INTEGRATION = 'INTEGRATION',
}

/** A task type by name: `'SIMPLE' | 'COMPLEX' | 'INTEGRATION'`. */
export type TaskTypeName = `${TaskType}`;

/**
 * Where a task is in its life. PENDING, RUNNING and COMPENSATING are active;
 * the others are final. `UNSPECIFIED` only appears for a status the server
 * left empty; `UNRECOGNIZED` for a state newer than this client.
 */
export type TaskStatusName =
  | 'PENDING'
  | 'RUNNING'
  | 'COMPLETED'
  | 'FAILED'
  | 'CANCELLED'
  | 'COMPENSATING'
  | 'COMPENSATED'
  | 'UNSPECIFIED'
  | 'UNRECOGNIZED';

/** The final states: a task in one of them never changes again. */
export const FINAL_STATUSES: ReadonlySet<TaskStatusName> = new Set<TaskStatusName>([
  'COMPLETED',
  'FAILED',
  'CANCELLED',
  'COMPENSATED',
]);

/** The engine that runs, or will run, a task. */
export type TaskSourceName = 'EMBEDDED' | 'BULLMQ' | 'TEMPORAL' | 'N8N' | 'UNSPECIFIED' | 'UNRECOGNIZED';

/** Why a PENDING task is not running yet. */
export type WaitingReasonName =
  | 'QUEUED'
  | 'NO_WORKER'
  | 'DELAYED'
  | 'BACKING_OFF'
  | 'CAPACITY_FULL'
  | 'ENGINE_UNREACHABLE'
  | 'CONCURRENCY_LIMIT'
  | 'QUEUE_PAUSED'
  | 'RATE_LIMITED'
  | 'UNRECOGNIZED';

/** What a cancel did to one task. */
export type CancelOutcomeName = 'CANCELLED' | 'CANCEL_REQUESTED' | 'ALREADY_FINISHED' | 'UNRECOGNIZED';

/** What happened to a task, on a watch stream. */
export type TaskEventKindName =
  | 'SCHEDULED'
  | 'STARTED'
  | 'PROGRESS'
  | 'COMPLETED'
  | 'RETRYING'
  | 'FAILED'
  | 'CANCEL_REQUESTED'
  | 'CANCELLED'
  | 'REQUEUED'
  | 'UPDATED'
  | 'SNAPSHOT'
  | 'UNRECOGNIZED';

/**
 * A duration: a number of milliseconds, or a string such as `'250ms'`,
 * `'30s'`, `'5m'`, `'2h'`, `'1d'` (units may be combined: `'1m30s'`).
 */
export type DurationLike = number | string;

/**
 * How long to wait between attempts. A number is a fixed delay in
 * milliseconds (as BullMQ reads it); the object is BullMQ's shape plus a cap.
 */
export type BackoffOptions =
  | number
  | {
      /**
       * `exponential` (default): `delay * 2^(attempt-1)`, capped at `maxDelay`.
       * `fixed`: always `delay`. Typed as a string so BullMQ's `BackoffOptions`
       * spreads in; any other strategy (BullMQ's custom ones) is refused with
       * `INVALID_ARGUMENT` on `options.backoff.kind`.
       */
      type?: 'fixed' | 'exponential' | (string & {});
      /** The first delay. Server default 1 s; at most 24 h. */
      delay?: DurationLike;
      /** The largest delay (exponential only). Server default 5 min; at most 7 days. */
      maxDelay?: DurationLike;
      /** BullMQ's jitter: only 0 is accepted (Switchyard applies its own backoff). */
      jitter?: number;
    };

/** `scheduleTask`'s `temporal` target: a workflow, as the original design passes it to Temporal. */
export interface TemporalOptions {
  /** The workflow type (definition name). Required for COMPLEX tasks. */
  workflowType: string;
  /** Arguments given to the workflow, as JSON values. */
  workflowArgs?: unknown[];
  /** Temporal's task queue for the workflow's work. */
  taskQueue?: string;
  /** A BullMQ queue that receives each state change of the workflow as a job. */
  trackingQueue?: string;
  /** The workflow id. Default: the task id. */
  workflowId?: string;
}

/** `scheduleTask`'s `n8n` target: the webhook an INTEGRATION task calls. */
export interface N8nOptions {
  /** An n8n workflow id, resolved by the server against its n8n base URL. */
  workflowId?: string;
  /** A full http(s) URL to POST to. Takes precedence over `workflowId`. */
  webhookUrl?: string;
  /** The system the integration concerns (github, jenkins, ...): recorded, and selects per-source settings. */
  integrationSource?: string;
}

/**
 * Options of `scheduleTask`. Every field is optional; the server's defaults
 * are in the proto (`TaskOptions`), and `SwitchyardModule.forRoot({ defaults })`
 * sets this client's.
 */
export interface ScheduleTaskOptions {
  /**
   * The kind of task. Default: COMPLEX when `temporal` is given, INTEGRATION
   * when `n8n` is given, else `defaults.taskType`, else SIMPLE.
   */
  taskType?: TaskType | TaskTypeName;
  /** -1000 (lowest) to 1000 (highest), default 0. Higher runs first (the original "priority 10"). */
  priority?: number;
  /** Attempts in all, first included: 1 to 100. Server default 1 (5 for INTEGRATION). */
  attempts?: number;
  /** Delay between attempts. */
  backoff?: BackoffOptions;
  /** Do not start before this delay. At most 365 days. */
  delay?: DurationLike;
  /** Time limit of one attempt (the proto's `execution_timeout`). At most 7 days. */
  timeout?: DurationLike;
  /** The owner: `disconnect({ userId })` stops the task. At most 256 bytes. */
  userId?: string;
  /** The session: `disconnect({ sessionId })` stops the task. At most 256 bytes. */
  sessionId?: string;
  /** Run on reserved capacity, ahead of normal tasks (reads, quick CRUD). */
  immediate?: boolean;
  /** Scheduling twice with the same key returns the first task (`existing: true`). */
  idempotencyKey?: string;
  /**
   * The deduplication window of `idempotencyKey`: the key matches this task
   * only for this long after it was scheduled; after it, the same key creates
   * a new task. Default: as long as the task is kept. At most 365 days.
   */
  idempotencyTtl?: DurationLike;
  /**
   * The concurrency key (a user, tenant or resource id): the server's
   * concurrency policies (`client.flow.setConcurrencyPolicy`) limit how many
   * tasks of one key run at once, on any engine, and keys take turns in
   * their queue. At most 256 bytes.
   */
  concurrencyKey?: string;
  /** Free-form labels, returned in status and usable in filters. */
  labels?: Record<string, string>;
  /** SIMPLE only: the queue (BullMQ queue name on the BullMQ backend). Default: the task name. */
  queue?: string;
  /** A task to schedule with the same payload when this one fails for good or is cancelled. */
  cleanupTask?: string;
  /**
   * How long the task is kept once it has ended, per final state, instead of
   * the server's `[retention]` policy (default 7 days after completion, 30
   * after failure or cancellation). `0` removes it at the next sweep (about a
   * second); after that, `getTaskStatus` answers NOT_FOUND and its
   * idempotency key (`jobId`) may be used again. At most 3,650 days each.
   */
  retention?: { completed?: DurationLike; failed?: DurationLike; cancelled?: DurationLike };
  /** COMPLEX target. */
  temporal?: TemporalOptions;
  /** INTEGRATION target. */
  n8n?: N8nOptions;
  /**
   * How long `cancelTask` waits for a running task's cancel to settle (see
   * `cancelTask`). Not sent; used by the `cancel()` of this task's handle.
   */
  cancelTimeoutMs?: number;

  // BullMQ's job options, so that `scheduleTask(name, data, { ...jobOptions })`
  // (the original design's migration path from `queue.add`) compiles and does
  // what it can. See `BULLMQ_OPTIONS` in convert.ts for what each becomes.
  /** BullMQ's `jobId`: the idempotency key (adding the same id twice returns the first task). */
  jobId?: string;
  /**
   * BullMQ's retention of completed jobs, mapped onto `retention.completed`:
   * `true` removes the task at the next sweep, `{ age }` keeps it `age`
   * seconds. A count (`100`, `{ count }`) is per queue in BullMQ, so it is
   * not a task's to set: it is accepted and left to the server's count caps
   * (`[retention] max_completed`, or a `[[retention.rules]]` for the name).
   */
  removeOnComplete?: boolean | number | { age?: number; count?: number; limit?: number };
  /** BullMQ's retention of failed jobs, mapped onto `retention.failed` as `removeOnComplete` is. */
  removeOnFail?: boolean | number | { age?: number; count?: number; limit?: number };
  /** BullMQ's log retention: accepted; Switchyard keeps the task log itself. */
  keepLogs?: number;
  /** BullMQ's stack trace limit: accepted; Switchyard keeps the last error's details (at most 8 KiB). */
  stackTraceLimit?: number;
  /** BullMQ's payload size limit: accepted; the server enforces its own (`limits.max_payload_bytes`). */
  sizeLimit?: number;
  /** BullMQ's creation time: accepted and ignored (the server stamps `createdAt`). */
  timestamp?: number;
  /** BullMQ's telemetry metadata: accepted and ignored (Switchyard propagates `traceparent` itself). */
  telemetry?: unknown;
  /** BullMQ's LIFO order: only `false`; Switchyard orders by priority, then FIFO. */
  lifo?: boolean;
  /** BullMQ's repeatable jobs: refused (Switchyard has no repeat schedules). */
  repeat?: unknown;
  /** BullMQ flows: refused (use a COMPLEX workflow). */
  parent?: unknown;
  /**
   * BullMQ's deduplication, mapped onto Switchyard's: `{ id }` is the
   * idempotency key (kept as long as the task, where BullMQ frees it when the
   * job ends); `{ id, ttl }` (BullMQ's throttle mode) is the key with
   * `idempotencyTtl: ttl` ms; `{ id, ttl, extend: true, replace: true }`
   * (BullMQ's debounce mode) is `debounce: { key: id, period: ttl }`. Only
   * `extend` or only `replace` is refused.
   */
  deduplication?: { id: string; ttl?: number; extend?: boolean; replace?: boolean };
  /**
   * A debounce or throttle key (Switchyard's `{ key, period, mode }`): of the
   * tasks of one key scheduled closer together than `period`, DEBOUNCE (the
   * default) runs only the last (the earlier pending ones end CANCELLED with
   * `lastError.kind` `superseded`), THROTTLE only the first (the others answer
   * with its id, `outcome: 'THROTTLED'`). BullMQ's older `debounce: { id, ttl }`
   * is taken as `deduplication: { id, ttl }`. Not with `idempotencyKey`.
   */
  debounce?: DebounceOptions | { id: string; ttl?: number };
}

/** `ScheduleTaskOptions.debounce`. */
export interface DebounceOptions {
  /** The key, 1 to 256 bytes. */
  key: string;
  /** The quiet period (DEBOUNCE) or throttle period (THROTTLE): more than 0, at most 30 days. */
  period: DurationLike;
  /** `DEBOUNCE` (default) or `THROTTLE`. */
  mode?: 'DEBOUNCE' | 'THROTTLE';
}

/**
 * What scheduling did: `CREATED`, `EXISTING` (the idempotency key matched),
 * `SUPERSEDED_OTHERS` (created; the older pending task of its debounce key was
 * cancelled), `THROTTLED` (the throttle key's first task is within its period).
 */
export type ScheduleOutcomeName = 'CREATED' | 'EXISTING' | 'SUPERSEDED_OTHERS' | 'THROTTLED' | 'UNSPECIFIED' | 'UNRECOGNIZED';

/** What the module or client applies to every `scheduleTask` unless the call says otherwise. */
export interface ScheduleDefaults {
  taskType?: TaskType | TaskTypeName;
  priority?: number;
  attempts?: number;
  backoff?: BackoffOptions;
  timeout?: DurationLike;
  userId?: string;
  sessionId?: string;
  /** Merged under each call's labels. */
  labels?: Record<string, string>;
}

/** The error of the last failed attempt. */
export interface TaskErrorInfo {
  message: string;
  /** The error's kind or class (for example `TimeoutError`, `lease_expired`). */
  kind: string;
  /** A stack trace or response excerpt; at most 8 KiB. */
  details: string;
  /** Whether the error allowed another attempt. */
  retryable: boolean;
  /** The attempt that failed. */
  attempt: number;
}

/** Where a workflow step is. `UNSPECIFIED`: not started, its dependencies have not completed. */
export type StepStateName =
  | 'UNSPECIFIED'
  | 'PENDING'
  | 'RUNNING'
  | 'COMPLETED'
  | 'FAILED'
  | 'CANCELLED'
  | 'SKIPPED'
  | 'COMPENSATING'
  | 'COMPENSATED'
  | 'COMPENSATION_FAILED'
  | 'UNRECOGNIZED';

/** One step of a workflow run (COMPLEX tasks). */
export interface StepInfo {
  /** The step id from the definition. */
  id: string;
  /** `task`, `webhook`, `timer` or `signal`. */
  kind: string;
  state: StepStateName;
  /** Attempts made (tasks and webhooks). */
  attempt: number;
  /** The step's output (a task's result, a signal's payload). */
  output?: unknown;
  error?: TaskErrorInfo;
  startedAt?: Date;
  finishedAt?: Date;
  /** The task that runs (or ran) the step. */
  taskId?: string;
  /** The task that runs (or ran) its compensation. */
  compensationTaskId?: string;
  /** The steps it waits for. */
  dependsOn: string[];
}

/** A registered workflow definition (latest version). */
export interface WorkflowInfo {
  /** The workflow type (`temporal.workflowType`). */
  name: string;
  version: number;
  /** The definition, parsed from the server's canonical JSON. */
  definition: unknown;
}

/** What `registerWorkflow` did. */
export interface RegisteredWorkflow {
  name: string;
  /** 1 for the first, +1 for each changed definition. */
  version: number;
  /** False when the definition was identical to the latest version. */
  created: boolean;
}

/** Everything Switchyard knows about a task: `getTaskStatus`'s answer, and every watch event's. */
export interface TaskInfo {
  /** The task id (UUIDv7). */
  id: string;
  name: string;
  taskType: TaskTypeName | 'UNSPECIFIED' | 'UNRECOGNIZED';
  status: TaskStatusName;
  /** The engine that runs it. */
  source: TaskSourceName;
  /** The current or last attempt, from 1; 0 before the first. */
  attempt: number;
  maxAttempts: number;
  /** -1000..1000, higher first. */
  priority: number;
  immediate: boolean;
  userId?: string;
  sessionId?: string;
  /** 0 to 100, as the worker last reported it. */
  progress: number;
  progressMessage?: string;
  /** The result of a COMPLETED task (any JSON value). */
  result?: unknown;
  /** The last failed attempt's error message; none once the task COMPLETED (its log keeps every attempt's). */
  error?: string;
  /** The last failed attempt's error in full; none once the task COMPLETED. */
  lastError?: TaskErrorInfo;
  createdAt: Date;
  /** When it may start (creation plus delay, or the end of a backoff). */
  runAt?: Date;
  startedAt?: Date;
  finishedAt?: Date;
  /** The engine's own id (BullMQ job id, Temporal run id, n8n execution id). */
  externalId?: string;
  /** While PENDING: why it waits. */
  waitingReason?: WaitingReasonName;
  /**
   * While held by a flow rule (`CONCURRENCY_LIMIT`, `QUEUE_PAUSED`, `RATE_LIMITED`): the rule and its
   * figures. `RATE_LIMITED` adds when the task may start (`nextStartAt`) and the rate limit's `rate`
   * per `intervalMs` with its `burst`.
   */
  hold?: {
    rule: string;
    concurrencyKey?: string;
    limit: number;
    running: number;
    ahead?: number;
    nextStartAt?: Date;
    rate?: number;
    intervalMs?: number;
    burst?: number;
  };
  /** The concurrency key, as scheduled. */
  concurrencyKey?: string;
  /** A cancel was asked for and not yet acknowledged (the status stays RUNNING until it is). */
  cancelRequested: boolean;
  labels: Record<string, string>;
  /** The worker running the current attempt, while RUNNING. */
  workerId?: string;
  idempotencyKey?: string;
  /** The queue, workflow type or webhook the task targets, for display. */
  target?: string;
  /** The sequence number of the last event about this task. */
  sequence: number;
  /** COMPLEX tasks: every step of the workflow, in definition order (empty otherwise). */
  steps: StepInfo[];
  /** COMPLEX tasks: the definition version this run uses. */
  workflowVersion?: number;
  /** A workflow step's task: the id of its workflow task. */
  parentId?: string;
  /** The run: 0 for the first, one more each time `retryTask` or `replayWorkflow` ran it again. */
  run: number;
  /** Whether the status is final (COMPLETED, FAILED, CANCELLED, COMPENSATED). */
  isFinal: boolean;
  /** The payload, as scheduled (`getTaskStatus` only). */
  payload?: Record<string, unknown>;
  /** The generated message, for fields newer than this shape. */
  raw: TaskStatus;
}

/** `scheduleTask`'s answer. */
export interface ScheduleResult {
  /** The task id (UUIDv7). */
  taskId: string;
  /** True when the idempotency key matched an existing task: nothing new was scheduled. */
  existing: boolean;
  /** What happened (see {@link ScheduleOutcomeName}). */
  outcome: ScheduleOutcomeName;
  /** `SUPERSEDED_OTHERS`: the ids of the tasks this one superseded (CANCELLED). */
  supersededTaskIds: string[];
  /** The status right after scheduling (usually PENDING). */
  status: TaskStatusName;
  /** The whole task right after scheduling. */
  task: TaskInfo;
}

/** One task of `scheduleTasks`: what `scheduleTask` takes, as an object. */
export interface BulkTask {
  /** The task name. */
  name: string;
  /** The input, a JSON object. Default `{}`. */
  payload?: unknown;
  /** As `scheduleTask`'s options (the service's defaults apply too). */
  options?: ScheduleTaskOptions;
}

/**
 * The outcome of one task of `scheduleTasks` (or one job of `addBulk`), at
 * its index in the list given: `ok` with its id, or the error
 * `scheduleTask` would have rejected it with (a {@link SwitchyardError}:
 * `code`, `fieldViolations`).
 */
export type BulkResult =
  | {
      index: number;
      ok: true;
      /** The task id (UUIDv7). */
      taskId: string;
      /** True when the idempotency key matched an existing task (or an earlier item of the same call). */
      existing: boolean;
      /** What happened (see {@link ScheduleOutcomeName}). */
      outcome: ScheduleOutcomeName;
      /** `SUPERSEDED_OTHERS`: the ids of the tasks this item superseded. */
      supersededTaskIds: string[];
      /** Its status right after scheduling. */
      status: TaskStatusName;
    }
  | {
      index: number;
      ok: false;
      /** Why it was refused; nothing of it was stored. */
      error: SwitchyardError;
    };

/** What `cancelTaskWithOutcome` reports. */
export interface CancelResult {
  outcome: CancelOutcomeName;
  task: TaskInfo;
}

/** Which tasks to list or watch. Fields combine with AND; empty lists mean any. */
export interface TaskFilter {
  userId?: string;
  sessionId?: string;
  taskIds?: string[];
  names?: string[];
  taskTypes?: (TaskType | TaskTypeName)[];
  /** Only tasks now in these states. */
  statuses?: TaskStatusName[];
  sources?: TaskSourceName[];
  /** Only the fires of this schedule (see `client.schedules`). */
  scheduleId?: string;
  /** Only tasks whose last error has this kind (`timeout`, `worker_lost`, a worker's own). */
  errorKind?: string;
}

/** One page of `listTasks`. */
export interface TaskPage {
  /** Newest first. */
  tasks: TaskInfo[];
  /** Pass as `pageToken` for the next page; undefined on the last page. */
  nextPageToken?: string;
}

/** One line of a task's log. */
export interface TaskLogLine {
  /** Increasing within the task; pass the last one as `afterLine` to page. */
  line: number;
  time?: Date;
  /** Who wrote it. */
  source: 'SYSTEM' | 'WORKER' | 'ENGINE' | 'UNSPECIFIED' | 'UNRECOGNIZED';
  /** `info`, `warn`, `error` or `debug`. */
  level: string;
  message: string;
  /** The attempt it concerns; 0 if none. */
  attempt: number;
  raw: LogLine;
}

/** One page of `getTaskLogs`. */
export interface TaskLogs {
  /** Oldest first. */
  lines: TaskLogLine[];
  /** More lines follow: call again with `afterLine` = the last line. */
  hasMore: boolean;
}

/** `getMetrics`'s answer: the generated message (numbers and Dates already). */
export type SwitchyardMetrics = GetMetricsResponse;

/** What `disconnect` did to one task. */
export interface DisconnectReceipt {
  taskId: string;
  name: string;
  outcome: CancelOutcomeName;
}

/** Whose tasks `disconnect` stops: exactly one of the two. */
export type DisconnectTarget = { userId: string; sessionId?: undefined; reason?: string } | { sessionId: string; userId?: undefined; reason?: string };

/** An item of a `watchTasks` stream. */
export type TaskWatchItem = TaskWatchEvent | TaskWatchGap | TaskWatchLive | TaskWatchReconnecting;

/** A task changed. */
export interface TaskWatchEvent {
  type: 'event';
  /** Strictly increasing, not contiguous. */
  sequence: number;
  kind: TaskEventKindName;
  /** When the change was committed. */
  time?: Date;
  /** The whole task after the change. */
  task: TaskInfo;
}

/**
 * Events between `afterSequence` and `oldestKept` are no longer kept one by
 * one (the client was away too long). The events that follow give the latest
 * status of every matching task that changed since, each once (kind
 * SNAPSHOT), then live events resume. Refresh anything derived from events.
 */
export interface TaskWatchGap {
  type: 'gap';
  /** The sequence the stream was resumed after. */
  afterSequence: number;
  /** The oldest sequence still kept event by event. */
  oldestKept: number;
}

/** Replay is over; what follows is live. */
export interface TaskWatchLive {
  type: 'live';
  /** The last sequence covered so far. */
  sequence: number;
  /** False for the first stream, true after each reconnect. */
  resumed: boolean;
}

/** The stream broke; the client reconnects after `delayMs` and resumes after `afterSequence`. */
export interface TaskWatchReconnecting {
  type: 'reconnecting';
  /** 1 for the first reconnect in a row. */
  attempt: number;
  delayMs: number;
  afterSequence: number;
  /** Why the stream broke. */
  error: Error;
}

/** Options of `watchTasks`. */
export interface WatchOptions {
  /** Resume after this sequence (the last one seen), replaying what was missed. Default 0: live only. */
  afterSequence?: number;
  /** With no `afterSequence`: first send the current status of every active matching task. */
  includeSnapshot?: boolean;
  /**
   * Reconnect when the stream breaks (server restart, network), resuming
   * after the last sequence seen. Default true, with 100 ms .. 5 s of backoff
   * and no attempt limit. Errors a retry cannot fix (INVALID_ARGUMENT, ...)
   * always end the Observable with a SwitchyardError.
   */
  reconnect?: boolean | { initialDelayMs?: number; maxDelayMs?: number; maxAttempts?: number };
}
