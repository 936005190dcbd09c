/**
 * The Node worker: runs task handlers for Switchyard's WorkerService, the way
 * the Rust worker library (src/worker) does.
 *
 * Protocol, as this client plays it:
 * - Each stream's first message is `Register { worker_name, task_names,
 *   slots, immediate_slots }`; then it waits (up to 10 s) for `Registered`
 *   and sends `Heartbeat` every `heartbeat_interval` (else `lease_ttl / 3`,
 *   else 5 s; never under 100 ms) while the stream is open.
 * - The server pushes `Assignment`s up to the free slots (no polling). Each
 *   runs its handler; the outcome becomes:
 *   - a value → `Complete` (even if the task was cancelled meanwhile);
 *   - a throw after the server's `CancelAssignment` → `CancelAck`;
 *   - a throw after the worker stopped the task itself (drain timeout, lost
 *     stream) → nothing: the server requeues the task;
 *   - any other throw → `Fail`, retryable unless the error says
 *     `retryable: false` ({@link NonRetryableError}), with
 *     `retry_after` from {@link RetryableError}'s `retryAfterMs`.
 *   An assignment whose name has no handler fails for good (kind
 *   `no_handler`).
 * - `CancelAssignment` fires the task's AbortSignal (`ctx.signal`).
 * - A broken stream fires the signals of its running tasks (reason
 *   `connection_lost`; their outcomes are not reported, the server requeues
 *   them) and reconnects after 100 ms .. 5 s of backoff with jitter, as a new
 *   worker id (with several replicas' URLs, to the next one that is up).
 * - {@link SwitchyardWorker.close} sends `Drain`, waits for running tasks up
 *   to the drain timeout, fires the signals of the rest (reason
 *   `worker_shutdown`) and gives them 2 s, then closes its half of each
 *   stream and waits up to 5 s for the server's.
 *
 * Slots are per stream, so a handler registered with its own `concurrency`
 * gets a stream of its own (all streams share one HTTP/2 connection); the
 * other handlers share one stream with the worker's `concurrency`.
 */
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';

import type { ChannelCredentials } from '@grpc/grpc-js';

import { SwitchyardConnection, type SwitchyardTlsFiles, type WorkStream } from '../connection.js';
import { durationToMs, msToDuration, toJsonValue } from '../convert.js';
import { SwitchyardError, type GrpcCodeName } from '../errors.js';
import { WorkerMessage, type Assignment, type Fail, type Registered, type ServerMessage } from '../gen/switchyard/v1/worker.js';
import { TaskContext, TaskControl, truncateUtf8, type TaskHandlerFn } from './context.js';

/** Default of `concurrency`: normal slots of the shared stream. */
export const DEFAULT_CONCURRENCY = 10;
/** Default of `immediateSlots`. */
export const DEFAULT_IMMEDIATE_SLOTS = 1;
/** Default of `drainTimeoutMs`. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;

const REGISTER_TIMEOUT_MS = 10_000;
const CANCEL_GRACE_MS = 2_000;
const CLOSE_TIMEOUT_MS = 5_000;
const RECONNECT_FLOOR_MS = 100;
const RECONNECT_CAP_MS = 5_000;
const DEFAULT_HEARTBEAT_MS = 5_000;
const MIN_HEARTBEAT_MS = 100;
const MAX_DETAILS_BYTES = 8 * 1024;

/** A handler with its own settings. */
export interface TaskHandlerRegistration<P = any, R = unknown> {
  handler: TaskHandlerFn<P, R>;
  /** Tasks of this name run at most this many at once, on a stream of their own (1 to 10 000). */
  concurrency?: number;
  /** With `concurrency`: extra slots for immediate tasks on that stream (0 to 10 000). Default 1. */
  immediateSlots?: number;
}

/** Where the worker writes what happens. NestJS's `Logger` fits. */
export interface WorkerLogger {
  log(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  debug?(message: string): void;
}

/** Options of {@link createWorker}. */
export interface CreateWorkerOptions {
  /**
   * The server, as for `SwitchyardClient` (ignored when `connection` is
   * given): several replicas' URLs comma-separated or as an array; a stream
   * that breaks reconnects to the next replica that is up and registers
   * again.
   */
  url?: string | readonly string[];
  /** TLS or call credentials for `url`. */
  credentials?: ChannelCredentials;
  /** TLS files for an `https://` `url`: a CA file, a client certificate. */
  tls?: SwitchyardTlsFiles;
  /** An existing connection to share (it is not closed by `close()`). */
  connection?: SwitchyardConnection;
  /** One handler per task name; a function, or `{ handler, concurrency }`. */
  handlers: Record<string, TaskHandlerFn | TaskHandlerRegistration>;
  /** Normal slots of the stream shared by handlers without their own `concurrency`. Default 10. */
  concurrency?: number;
  /** Slots reserved for immediate tasks on that stream. Default 1. */
  immediateSlots?: number;
  /** A stable name for the server's logs (`Register.worker_name`). Default `<hostname>-<pid>`. */
  name?: string;
  /** How long `close()` waits for running tasks before firing their signals. Default 30 000. */
  drainTimeoutMs?: number;
  /** Connect at once. Default true; otherwise call `start()`. */
  autoStart?: boolean;
  /** Default: warnings and errors to the console. `false`: silent. */
  logger?: WorkerLogger | false;
}

/** What happened to one attempt, as the `task` event reports it. */
export interface TaskOutcomeEvent {
  taskId: string;
  name: string;
  attempt: number;
  /** `abandoned`: stopped by the worker itself; the server requeues the task. */
  outcome: 'completed' | 'failed' | 'cancelled' | 'abandoned';
  error?: unknown;
}

/** Codes of a refused registration that a retry cannot fix. */
const PERMANENT: ReadonlySet<GrpcCodeName> = new Set<GrpcCodeName>([
  'INVALID_ARGUMENT',
  'FAILED_PRECONDITION',
  'PERMISSION_DENIED',
  'UNAUTHENTICATED',
  'UNIMPLEMENTED',
  'ALREADY_EXISTS',
  'OUT_OF_RANGE',
]);

const consoleLogger: WorkerLogger = {
  log: () => undefined,
  warn: (m) => console.warn(`[switchyard-worker] ${m}`),
  error: (m) => console.error(`[switchyard-worker] ${m}`),
};
const silentLogger: WorkerLogger = { log: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * Starts a worker with handlers by task name.
 *
 * ```ts
 * const worker = createWorker({
 *   url: 'http://127.0.0.1:50051',
 *   concurrency: 8,
 *   handlers: {
 *     'send-email': async (payload, ctx) => {
 *       ctx.progress(50, 'rendering');
 *       await mailer.send(payload, { signal: ctx.signal });
 *       return { sent: true };
 *     },
 *     'scan-repository': { concurrency: 2, handler: scan },
 *   },
 * });
 * process.on('SIGTERM', () => worker.close());
 * ```
 */
export function createWorker(options: CreateWorkerOptions): SwitchyardWorker {
  return new SwitchyardWorker(options);
}

interface Group {
  handlers: Map<string, TaskHandlerFn>;
  slots: number;
  immediateSlots: number;
}

/**
 * A running worker: one or more WorkerService streams. Events: `registered`
 * (`{ workerId, taskNames }`), `disconnected` (`{ reason }`), `task`
 * ({@link TaskOutcomeEvent}) and `error` (a registration the server refuses
 * for good; emitted only when listened to, logged otherwise).
 */
export class SwitchyardWorker extends EventEmitter {
  readonly name: string;
  readonly drainTimeoutMs: number;
  /** The task names this worker handles. */
  readonly taskNames: readonly string[];
  private readonly connection: SwitchyardConnection;
  private readonly ownsConnection: boolean;
  private readonly logger: WorkerLogger;
  private readonly streams: WorkerStream[];
  private started = false;
  private closing: Promise<void> | undefined;
  /** @internal State changes (`state`) and finished tasks (`task_done`), kept off the public events. */
  readonly internal = new EventEmitter();

  constructor(options: CreateWorkerOptions) {
    super();
    const groups = planGroups(options);
    this.name = options.name ?? `${hostname()}-${process.pid}`;
    if (Buffer.byteLength(this.name) > 200) {
      throw SwitchyardError.invalidArgument('worker_name', 'must be at most 200 bytes');
    }
    this.drainTimeoutMs = options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
    this.logger = options.logger === false ? silentLogger : (options.logger ?? consoleLogger);
    if (options.connection) {
      this.connection = options.connection;
      this.ownsConnection = false;
    } else {
      if (!options.url) {
        throw SwitchyardError.invalidArgument('url', 'createWorker needs a url or a connection');
      }
      this.connection = new SwitchyardConnection({ url: options.url, credentials: options.credentials, tls: options.tls });
      this.ownsConnection = true;
    }
    this.streams = groups.map((g) => new WorkerStream(this, this.connection, g, this.logger));
    this.taskNames = groups.flatMap((g) => [...g.handlers.keys()]).sort();
    if (options.autoStart ?? true) {
      this.start();
    }
  }

  /** Connects and registers (does nothing if already started). */
  start(): this {
    if (!this.started && !this.closing) {
      this.started = true;
      for (const s of this.streams) {
        s.start();
      }
    }
    return this;
  }

  /** The worker ids the server gave the streams that are registered now. */
  get workerIds(): string[] {
    return this.streams.map((s) => s.workerId).filter((id): id is string => id !== undefined);
  }

  /** How many handlers are running. */
  get runningTasks(): number {
    return this.streams.reduce((n, s) => n + s.running.size, 0);
  }

  /** Whether every stream is registered. */
  get isRegistered(): boolean {
    return this.streams.every((s) => s.workerId !== undefined);
  }

  /**
   * Resolves with the worker ids once every stream is registered. Rejects
   * when the server refuses a registration for good, when the worker is
   * closed first, or after `timeoutMs`.
   */
  waitUntilRegistered(timeoutMs = 10_000): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      const check = (): boolean => {
        const fatal = this.streams.find((s) => s.fatal)?.fatal;
        if (fatal) {
          done();
          reject(fatal);
          return true;
        }
        if (this.isRegistered) {
          done();
          resolve(this.workerIds);
          return true;
        }
        if (this.closing) {
          done();
          reject(new SwitchyardError({ code: 'CANCELLED', details: 'the worker was closed before it registered' }));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new SwitchyardError({ code: 'DEADLINE_EXCEEDED', details: `the worker did not register within ${timeoutMs} ms` }));
      }, timeoutMs);
      const onChange = (): void => void check();
      const done = (): void => {
        clearTimeout(timer);
        this.internal.off('state', onChange);
      };
      this.internal.on('state', onChange);
      check();
    });
  }

  /**
   * Shuts down gracefully: `Drain` (the server assigns nothing more), waits
   * for running handlers up to `drainTimeoutMs`, fires the signals of the
   * rest (reason `worker_shutdown`) and gives them 2 s, then closes the
   * streams (and the connection, if the worker made it). Safe to call twice.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    this.internal.emit('state');
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    for (const s of this.streams) {
      s.beginDrain();
    }
    const idle = () => this.runningTasks === 0;
    if (!idle()) {
      this.logger.log(`draining: ${this.runningTasks} task(s) running, waiting up to ${this.drainTimeoutMs} ms`);
      await this.waitFor(idle, this.drainTimeoutMs);
    }
    if (!idle()) {
      this.logger.warn(`drain timeout passed; cancelling ${this.runningTasks} task(s)`);
      for (const s of this.streams) {
        s.cancelAll('worker_shutdown');
      }
      await this.waitFor(idle, CANCEL_GRACE_MS);
      if (!idle()) {
        this.logger.warn(`${this.runningTasks} task(s) still running after their cancel; the server requeues them`);
      }
    }
    await Promise.all(this.streams.map((s) => s.stop()));
    if (this.ownsConnection) {
      this.connection.close();
    }
    this.internal.emit('state');
  }

  private waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.internal.off('task_done', onChange);
        resolve();
      };
      const onChange = (): void => {
        if (cond()) {
          finish();
        }
      };
      const timer = setTimeout(finish, timeoutMs);
      this.internal.on('task_done', onChange);
      onChange();
    });
  }

  /** @internal Reports a fatal stream error. */
  reportError(err: SwitchyardError): void {
    if (this.listenerCount('error') > 0) {
      this.emit('error', err);
    } else {
      this.logger.error(err.message);
    }
  }

  /** @internal */
  get isClosing(): boolean {
    return this.closing !== undefined;
  }
}

function planGroups(options: CreateWorkerOptions): Group[] {
  const entries = Object.entries(options.handlers ?? {});
  if (entries.length === 0) {
    throw SwitchyardError.invalidArgument('handlers', 'the worker has no handler: register at least one task name');
  }
  const slots = (v: number | undefined, def: number, field: string, min: number): number => {
    const n = v ?? def;
    if (!Number.isInteger(n) || n < min || n > 10_000) {
      throw SwitchyardError.invalidArgument(field, `must be an integer from ${min} to 10000, got ${v}`);
    }
    return n;
  };
  const shared: Group = {
    handlers: new Map(),
    slots: slots(options.concurrency, DEFAULT_CONCURRENCY, 'concurrency', 1),
    immediateSlots: slots(options.immediateSlots, DEFAULT_IMMEDIATE_SLOTS, 'immediateSlots', 0),
  };
  const own: Group[] = [];
  for (const [name, h] of entries) {
    if (typeof h === 'function') {
      shared.handlers.set(name, h);
    } else if (h && typeof h.handler === 'function') {
      if (h.concurrency === undefined) {
        shared.handlers.set(name, h.handler);
      } else {
        own.push({
          handlers: new Map([[name, h.handler]]),
          slots: slots(h.concurrency, DEFAULT_CONCURRENCY, `handlers.${name}.concurrency`, 1),
          immediateSlots: slots(h.immediateSlots, DEFAULT_IMMEDIATE_SLOTS, `handlers.${name}.immediateSlots`, 0),
        });
      }
    } else {
      throw SwitchyardError.invalidArgument(`handlers.${name}`, 'must be a function or { handler, concurrency }');
    }
  }
  return shared.handlers.size > 0 ? [shared, ...own] : own;
}

interface Running {
  control: TaskControl;
  session: number;
}

type SessionEnd = { kind: 'lost'; reason: string } | { kind: 'fatal'; error: SwitchyardError } | { kind: 'stopped' };

/** One WorkerService stream and its reconnect loop. */
class WorkerStream {
  readonly running = new Map<string, Running>();
  workerId: string | undefined;
  fatal: SwitchyardError | undefined;
  private current: { call: WorkStream; done: Promise<SessionEnd> } | undefined;
  private session = 0;
  private draining = false;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly worker: SwitchyardWorker,
    private readonly connection: SwitchyardConnection,
    private readonly group: Group,
    private readonly logger: WorkerLogger,
  ) {}

  start(): void {
    this.loop ??= this.run();
  }

  /** Sends Drain (if registered) and stops reconnecting. */
  beginDrain(): void {
    this.draining = true;
    this.wake?.();
    if (this.current && this.workerId !== undefined) {
      this.write(this.session, { drain: {} });
    } else if (this.current) {
      // Not registered yet: nothing to drain.
      this.current.call.cancel();
    }
  }

  cancelAll(reason: string): void {
    for (const r of this.running.values()) {
      r.control.cancelLocally(reason);
    }
  }

  /** Closes our half of the stream, waits (5 s at most) for the server to close its own, and ends the loop. */
  async stop(): Promise<void> {
    this.draining = true;
    this.stopped = true;
    this.wake?.();
    const current = this.current;
    if (current) {
      current.call.end();
      const timer = setTimeout(() => current.call.cancel(), CLOSE_TIMEOUT_MS);
      await current.done;
      clearTimeout(timer);
    }
    await this.loop;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.draining) {
      if (this.connection.isClosed) {
        this.logger.warn('the connection was closed; the worker stops');
        break;
      }
      const end = await this.connectOnce(() => {
        failures = 0;
      });
      this.current = undefined;
      if (end.kind === 'stopped' || this.draining) {
        break;
      }
      if (end.kind === 'fatal') {
        this.fatal = end.error;
        this.worker.reportError(end.error);
        this.worker.internal.emit('state');
        break;
      }
      failures += 1;
      const exp = Math.min(RECONNECT_CAP_MS, RECONNECT_FLOOR_MS * 2 ** (failures - 1));
      const delay = Math.round(exp / 2 + Math.random() * (exp / 2));
      this.logger.warn(`connection to the server lost (${end.reason}); reconnecting in ${delay} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** One stream: register, serve, and resolve with how it ended. */
  private connectOnce(onRegistered: () => void): Promise<SessionEnd> {
    let call: WorkStream;
    try {
      call = this.connection.work();
    } catch (err) {
      return Promise.resolve({ kind: 'lost', reason: SwitchyardError.from(err).message });
    }
    this.session += 1;
    const session = this.session;
    const done = new Promise<SessionEnd>((resolve) => {
      let heartbeat: NodeJS.Timeout | undefined;
      let registered = false;
      let ended = false;
      const registerTimer = setTimeout(() => finish({ kind: 'lost', reason: `no Registered within ${REGISTER_TIMEOUT_MS / 1000}s` }), REGISTER_TIMEOUT_MS);

      const finish = (end: SessionEnd): void => {
        if (ended) {
          return;
        }
        ended = true;
        clearTimeout(registerTimer);
        if (heartbeat) {
          clearInterval(heartbeat);
        }
        const wasRegistered = this.workerId !== undefined;
        this.workerId = undefined;
        call.cancel();
        // The results of this stream's tasks can no longer be reported: the
        // server requeues them.
        for (const r of this.running.values()) {
          if (r.session === session) {
            r.control.cancelLocally('connection_lost');
          }
        }
        if (wasRegistered && end.kind === 'lost') {
          this.worker.emit('disconnected', { reason: end.reason });
        }
        this.worker.internal.emit('state');
        resolve(end);
      };

      call.on('data', (msg: ServerMessage) => {
        if (!registered) {
          if (msg.registered) {
            registered = true;
            clearTimeout(registerTimer);
            onRegistered();
            this.workerId = msg.registered.workerId;
            const every = heartbeatPeriod(msg.registered);
            heartbeat = setInterval(() => this.write(session, { heartbeat: {} }), every);
            this.logger.log(`registered as ${this.workerId} for ${[...this.group.handlers.keys()].join(', ')}; heartbeat every ${every} ms`);
            this.worker.emit('registered', { workerId: this.workerId, taskNames: [...this.group.handlers.keys()] });
            this.worker.internal.emit('state');
            if (this.draining) {
              this.write(session, { drain: {} });
            }
          } else if (msg.rejected) {
            finish({
              kind: 'fatal',
              error: new SwitchyardError({
                code: toCodeName(msg.rejected.code),
                details: `the server rejected the registration: ${msg.rejected.message}`,
                method: 'Work',
              }),
            });
          } else {
            finish({ kind: 'fatal', error: new SwitchyardError({ code: 'INTERNAL', details: 'protocol error: the first server message was not Registered', method: 'Work' }) });
          }
          return;
        }
        if (msg.assignment) {
          this.startTask(msg.assignment, session);
        } else if (msg.cancel) {
          const r = this.running.get(`${msg.cancel.taskId}:${msg.cancel.attempt}`);
          if (r) {
            this.logger.log(`the server cancels task ${msg.cancel.taskId} (${msg.cancel.reason || 'cancelled'})`);
            r.control.cancelByServer(msg.cancel.reason || 'cancelled');
          }
        } else if (msg.rejected) {
          this.logger.warn(`the server rejected a message about task ${msg.rejected.taskId}: ${msg.rejected.code} ${msg.rejected.message}`);
        }
      });
      call.on('error', (err: unknown) => {
        const e = SwitchyardError.from(err, 'Work');
        if (!registered && PERMANENT.has(e.code)) {
          finish({ kind: 'fatal', error: e });
        } else if (this.stopped || (this.draining && !registered)) {
          finish({ kind: 'stopped' });
        } else {
          finish({ kind: 'lost', reason: e.message });
        }
      });
      call.on('end', () => finish(this.stopped ? { kind: 'stopped' } : { kind: 'lost', reason: 'the server closed the stream' }));
    });
    this.current = { call, done };
    // Sent before anything comes back: the server waits for it before answering.
    this.write(session, {
      register: {
        workerName: this.worker.name,
        taskNames: [...this.group.handlers.keys()].sort(),
        slots: this.group.slots,
        immediateSlots: this.group.immediateSlots,
      },
    });
    return done;
  }

  private write(session: number, msg: Partial<WorkerMessage>): boolean {
    const call = this.current?.call;
    if (!call || session !== this.session || call.writableEnded || call.destroyed) {
      return false;
    }
    try {
      call.write(WorkerMessage.fromPartial(msg));
      return true;
    } catch (err) {
      this.logger.debug?.(`write failed: ${(err as Error).message}`);
      return false;
    }
  }

  private startTask(a: Assignment, session: number): void {
    const key = `${a.taskId}:${a.attempt}`;
    if (this.running.has(key)) {
      this.logger.warn(`ignoring a duplicate assignment of task ${a.taskId} attempt ${a.attempt}`);
      return;
    }
    const handler = this.group.handlers.get(a.name);
    if (!handler) {
      this.write(session, {
        fail: failMessage(a, { message: `this worker has no handler for ${JSON.stringify(a.name)}`, kind: 'no_handler', retryable: false }),
      });
      return;
    }
    const control = new TaskControl();
    const ctx = new TaskContext(a, control, (m) => this.write(session, m));
    this.running.set(key, { control, session });
    const payload = a.payload ?? {};
    const event = { taskId: a.taskId, name: a.name, attempt: a.attempt };
    Promise.resolve()
      .then(() => handler(payload, ctx))
      .then(
        (result) => {
          control.finished = true;
          let value: unknown;
          try {
            value = toJsonValue(result);
          } catch (err) {
            this.write(session, {
              fail: failMessage(a, { message: `the result is not JSON-serialisable: ${(err as Error).message}`, kind: 'invalid_result', retryable: false }),
            });
            this.worker.emit('task', { ...event, outcome: 'failed', error: err } satisfies TaskOutcomeEvent);
            return;
          }
          this.write(session, { complete: { taskId: a.taskId, attempt: a.attempt, result: value } });
          this.worker.emit('task', { ...event, outcome: 'completed' } satisfies TaskOutcomeEvent);
        },
        (err: unknown) => {
          control.finished = true;
          if (control.byServer) {
            this.write(session, { cancelAck: { taskId: a.taskId, attempt: a.attempt } });
            this.worker.emit('task', { ...event, outcome: 'cancelled', error: err } satisfies TaskOutcomeEvent);
          } else if (control.controller.signal.aborted) {
            this.logger.log(`task ${a.taskId} stopped by the worker (${ctx.cancelReason}); the server requeues it`);
            this.worker.emit('task', { ...event, outcome: 'abandoned', error: err } satisfies TaskOutcomeEvent);
          } else {
            this.write(session, { fail: failMessage(a, describeError(err)) });
            this.worker.emit('task', { ...event, outcome: 'failed', error: err } satisfies TaskOutcomeEvent);
          }
        },
      )
      .catch((err: unknown) => this.logger.error(`reporting task ${a.taskId} failed: ${String(err)}`))
      .finally(() => {
        this.running.delete(key);
        this.worker.internal.emit('task_done');
      });
  }
}

interface ErrorDescription {
  message: string;
  kind: string;
  details?: string;
  retryable: boolean;
  retryAfterMs?: number;
}

/** What a thrown value says about the failure: NonRetryableError and RetryableError, or anything with `retryable`, `kind`, `details`, `retryAfterMs`. */
function describeError(err: unknown): ErrorDescription {
  const e = (typeof err === 'object' && err !== null ? err : {}) as {
    message?: unknown;
    name?: unknown;
    kind?: unknown;
    details?: unknown;
    stack?: unknown;
    retryable?: unknown;
    retryAfterMs?: unknown;
  };
  const message = typeof e.message === 'string' && e.message !== '' ? e.message : String(err);
  const kind = typeof e.kind === 'string' && e.kind !== '' ? e.kind : typeof e.name === 'string' && e.name !== '' ? e.name : 'Error';
  const details = typeof e.details === 'string' ? e.details : typeof e.stack === 'string' ? e.stack : undefined;
  const retryable = e.retryable !== false;
  const retryAfterMs = typeof e.retryAfterMs === 'number' && Number.isFinite(e.retryAfterMs) && e.retryAfterMs >= 0 ? e.retryAfterMs : undefined;
  return { message, kind, details, retryable, retryAfterMs };
}

function failMessage(a: Assignment, d: ErrorDescription): Fail {
  return {
    taskId: a.taskId,
    attempt: a.attempt,
    message: d.message,
    kind: d.kind,
    details: truncateUtf8(d.details ?? '', MAX_DETAILS_BYTES),
    retryable: d.retryable,
    retryAfter: d.retryable && d.retryAfterMs !== undefined ? msToDuration(d.retryAfterMs) : undefined,
  };
}

/** The heartbeat period from Registered: its interval, else a third of the lease, else 5 s; never under 100 ms. */
export function heartbeatPeriod(r: Registered): number {
  const positive = (ms: number | undefined) => (ms !== undefined && ms > 0 ? ms : undefined);
  const interval = positive(durationToMs(r.heartbeatInterval));
  const ttl = positive(durationToMs(r.leaseTtl));
  return Math.max(MIN_HEARTBEAT_MS, Math.round(interval ?? (ttl !== undefined ? ttl / 3 : DEFAULT_HEARTBEAT_MS)));
}

function toCodeName(code: string): GrpcCodeName {
  const upper = code.toUpperCase();
  const known: GrpcCodeName[] = ['INVALID_ARGUMENT', 'FAILED_PRECONDITION', 'PERMISSION_DENIED', 'UNAUTHENTICATED', 'UNIMPLEMENTED', 'ALREADY_EXISTS', 'OUT_OF_RANGE', 'RESOURCE_EXHAUSTED', 'UNAVAILABLE', 'INTERNAL', 'NOT_FOUND'];
  return known.find((k) => k === upper) ?? 'UNKNOWN';
}
