/**
 * `TaskContext`: what a handler knows about its task, how it talks back
 * (progress, log lines) and how it learns it should stop (`signal`).
 */
import { TaskCancelledError } from '../errors.js';
import { taskTypeName } from '../convert.js';
import type { Assignment, WorkerMessage } from '../gen/switchyard/v1/worker.js';
import type { TaskTypeName } from '../types.js';

/** The most bytes of a progress message (`Progress.message`). */
const MAX_PROGRESS_MESSAGE_BYTES = 1024;
/** The most bytes of a log line the server keeps (`Log.message`). */
const MAX_LOG_BYTES = 8 * 1024;

/** A log level of `ctx.log`. */
export type TaskLogLevel = 'debug' | 'info' | 'warn' | 'error';

/** A task handler: gets the payload and the context, returns the result (any JSON value). */
export type TaskHandlerFn<P = any, R = unknown> = (payload: P, ctx: TaskContext) => R | Promise<R>;

/** Cuts a string to at most `max` UTF-8 bytes, on a character boundary. */
export function truncateUtf8(s: string, max: number): string {
  const buf = Buffer.from(s, 'utf8');
  if (buf.length <= max) {
    return s;
  }
  let end = max;
  // Back off continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && ((buf[end] as number) & 0xc0) === 0x80) {
    end -= 1;
  }
  return buf.subarray(0, end).toString('utf8');
}

/** The per-task state the worker keeps next to the context. */
export class TaskControl {
  readonly controller = new AbortController();
  byServer = false;
  finished = false;

  /** The server sent CancelAssignment: a handler that gives up is acknowledged with CancelAck. */
  cancelByServer(reason: string): void {
    this.byServer = true;
    if (!this.controller.signal.aborted) {
      this.controller.abort(new TaskCancelledError(reason, true));
    }
  }

  /** The worker stops the task itself (drain timeout, lost stream): nothing is reported. */
  cancelLocally(reason: string): void {
    if (!this.controller.signal.aborted) {
      this.controller.abort(new TaskCancelledError(reason, false));
    }
  }
}

/**
 * The context of one attempt of one task.
 *
 * ```ts
 * async function resize(payload: { url: string }, ctx: TaskContext) {
 *   ctx.progress(10, 'downloading');
 *   const res = await fetch(payload.url, { signal: ctx.signal });
 *   ctx.log('info', `got ${res.status}`);
 *   return { size: Number(res.headers.get('content-length')) };
 * }
 * ```
 */
export class TaskContext {
  /** The task id (UUIDv7). */
  readonly taskId: string;
  /** The task name. */
  readonly name: string;
  /** This attempt, from 1. */
  readonly attempt: number;
  /** The number of attempts allowed. */
  readonly maxAttempts: number;
  /**
   * `<task id>:<attempt>`: the same if this very attempt is delivered again
   * (after a lost lease or a server restart). Use it to deduplicate side
   * effects (as an idempotency key towards a payment API, for example).
   */
  readonly idempotencyKey: string;
  /** The owner, as scheduled. */
  readonly userId: string | undefined;
  /** The session, as scheduled. */
  readonly sessionId: string | undefined;
  /** The task's labels. */
  readonly labels: Readonly<Record<string, string>>;
  /** When this attempt times out, if it has a timeout (the server then cancels it with reason `timeout`). */
  readonly deadline: Date | undefined;
  /** Whether the task runs in the immediate lane. */
  readonly immediate: boolean;
  /** SIMPLE (also for a workflow step). */
  readonly taskType: TaskTypeName | 'UNSPECIFIED' | 'UNRECOGNIZED';
  /**
   * W3C trace context (`traceparent`) of this attempt, if any. With tracing
   * on in the server, its parent is the server's `task.run` span of this
   * attempt; otherwise it is the one the task was scheduled with. With
   * `@opentelemetry/api` (not a dependency of this package), continue the
   * trace in the handler:
   *
   * ```ts
   * import { context, propagation, trace } from '@opentelemetry/api';
   * const parent = propagation.extract(context.active(), { traceparent: ctx.traceparent ?? '' });
   * await trace.getTracer('my-worker').startActiveSpan('send-email', {}, parent, async (span) => {
   *   try { ... } finally { span.end(); }
   * });
   * ```
   *
   * (`propagation.extract` needs the W3C propagator registered, which the
   * Node SDK does by default.)
   */
  readonly traceparent: string | undefined;
  /** The assignment as received. */
  readonly assignment: Assignment;
  /**
   * Fires when the task should stop: the server's CancelAssignment (cancel,
   * Disconnect, timeout, server shutdown), the worker's drain timeout, or a
   * lost stream. `signal.reason` is a {@link TaskCancelledError}. Pass it to
   * fetch, timers and database drivers; then throw (or let them throw), and
   * the worker acknowledges the cancel.
   */
  readonly signal: AbortSignal;

  constructor(
    assignment: Assignment,
    private readonly control: TaskControl,
    private readonly send: (msg: WorkerMessage) => void,
  ) {
    this.assignment = assignment;
    this.taskId = assignment.taskId;
    this.name = assignment.name;
    this.attempt = assignment.attempt;
    this.maxAttempts = assignment.maxAttempts;
    this.idempotencyKey = assignment.idempotencyKey;
    this.userId = assignment.userId || undefined;
    this.sessionId = assignment.sessionId || undefined;
    this.labels = Object.freeze({ ...assignment.labels });
    this.deadline = assignment.deadline;
    this.immediate = assignment.immediate;
    this.taskType = taskTypeName(assignment.taskType);
    this.traceparent = assignment.traceparent || undefined;
    this.signal = control.controller.signal;
  }

  /** Whether the task has been asked to stop. */
  get isCancelled(): boolean {
    return this.signal.aborted;
  }

  /**
   * Why the task was asked to stop: `cancelled`, `disconnected`, `timeout`,
   * `shutdown` (from the server), or `worker_shutdown`, `connection_lost`
   * (from the worker itself); see {@link TaskCancelledError.reason}.
   * Undefined while not cancelled.
   */
  get cancelReason(): string | undefined {
    const reason: unknown = this.signal.reason;
    return this.signal.aborted ? (reason instanceof TaskCancelledError ? reason.reason : String(reason)) : undefined;
  }

  /** Throws the cancel reason (a {@link TaskCancelledError}) if the task was asked to stop. */
  throwIfCancelled(): void {
    this.signal.throwIfAborted();
  }

  /**
   * Reports progress: `percent` is clamped to 0..100, the message cut at
   * 1 KiB. Shown in the task's status and streamed to watchers. Ignored once
   * the handler has returned.
   */
  progress(percent: number, message = ''): void {
    const p = Number.isFinite(percent) ? Math.min(100, Math.max(0, percent)) : 0;
    this.emit({ progress: { taskId: this.taskId, attempt: this.attempt, percent: p, message: truncateUtf8(String(message), MAX_PROGRESS_MESSAGE_BYTES) } });
  }

  /**
   * Adds a line to the task's log (kept by the server, read with
   * `getTaskLogs`). `level` is `debug`, `info`, `warn` or `error`; the line is
   * cut at 8 KiB. Ignored once the handler has returned.
   */
  log(level: TaskLogLevel | string, message: string): void {
    let lvl = String(level ?? '').trim().toLowerCase();
    if (lvl === '' || lvl === 'log') {
      lvl = 'info';
    } else if (lvl === 'warning') {
      lvl = 'warn';
    }
    this.emit({ log: { taskId: this.taskId, attempt: this.attempt, level: lvl, message: truncateUtf8(String(message), MAX_LOG_BYTES) } });
  }

  private emit(msg: WorkerMessage): void {
    if (!this.control.finished) {
      this.send(msg);
    }
  }
}
