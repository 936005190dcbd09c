/**
 * An opt-in BullMQ processor wrapper that honours Switchyard's cancel of an
 * active job: the Node half of the BullMQ backend's cancel protocol.
 *
 * Open-source BullMQ cannot stop an active job from another process. When
 * Switchyard is asked to cancel a job that a worker holds, it answers
 * CANCEL_REQUESTED and, in one Redis pipeline (src/backend/bullmq/conn.rs):
 * - sets the marker `<prefix>:<queue>:<job id>:switchyard:cancel` (with a
 *   TTL, `bullmq.cancel_ttl`), for a worker that looks only when it starts;
 * - PUBLISHes the job id on `<prefix>:<queue>:switchyard:cancel`.
 * The job id is the Switchyard task id. When the job then fails, Switchyard
 * marks the task CANCELLED.
 *
 * {@link withSwitchyardCancellation} holds one subscriber connection for all
 * the jobs it runs, keeps an AbortController per running job, aborts it on a
 * matching message (or on the marker, checked once the subscription is live,
 * and again after every reconnect of the subscriber), and fails a cancelled
 * job with BullMQ's `UnrecoverableError` so that BullMQ does not retry it.
 *
 * ioredis and bullmq are optional peer dependencies: both are loaded with a
 * dynamic `import()` the first time a job runs, so this module costs nothing
 * to a user of the package who does not use BullMQ.
 */

/** The part of a BullMQ `Job` the wrapper reads. BullMQ 5's `Job` fits. */
export interface BullJobLike {
  /** The job id: Switchyard uses the task id. */
  id?: string;
  name: string;
  /** The queue's name (BullMQ's `job.queueName`). */
  queueName?: string;
  /** The key prefix (BullMQ's `job.prefix`). */
  prefix?: string;
  data: unknown;
}

/**
 * A BullMQ processor with an AbortSignal as its third argument, as BullMQ 5
 * passes it. The signal fires when Switchyard cancels the job (its reason is
 * a {@link SwitchyardCancelledError}) or when BullMQ's own signal fires
 * (`worker.cancelJob`; the reason is BullMQ's).
 */
export type CancellableProcessor<J extends BullJobLike = BullJobLike, R = unknown> = (
  job: J,
  token: string | undefined,
  signal: AbortSignal,
) => Promise<R>;

/**
 * Where the wrapper connects: a `redis://` or `rediss://` URL, ioredis
 * options (as for `new Redis(options)`), or an ioredis instance. An instance
 * is duplicated for the subscriber and used as it is for the marker check;
 * `close()` does not close it.
 */
export type SwitchyardRedisConnection = string | object;

/** Where the wrapper reports Redis trouble. NestJS's `Logger` and `console` fit. */
export interface SwitchyardCancellationLogger {
  warn(message: string): void;
}

/** Options of {@link withSwitchyardCancellation}. */
export interface SwitchyardCancellationOptions {
  /** The Redis Switchyard's BullMQ backend uses (`bullmq.url`). */
  connection: SwitchyardRedisConnection;
  /**
   * BullMQ's key prefix; it must match the backend's `bullmq.prefix`.
   * Default: the job's own (`job.prefix`), else `bull`.
   */
  prefix?: string;
  /** The queue's name. Default: the job's (`job.queueName`). */
  queue?: string;
  /**
   * How long a job's start waits for the subscription and the marker check
   * before it runs anyway (a reconnect checks again). Default 5 000 ms.
   */
  startTimeoutMs?: number;
  /** Default: warnings to the console. `false`: silent. */
  logger?: SwitchyardCancellationLogger | false;
}

/** The processor {@link withSwitchyardCancellation} returns: give it to `new Worker(...)`. */
export interface SwitchyardCancellableProcessor<J extends BullJobLike = BullJobLike, R = unknown> {
  (job: J, token?: string, signal?: AbortSignal): Promise<R>;
  /**
   * Subscribes now (to `options.queue`'s channel, which must be set), rather
   * than when the first job starts; rejects if Redis cannot be reached.
   */
  waitUntilReady(): Promise<void>;
  /**
   * Releases the subscriber (and the command connection it made). Call it
   * after `worker.close()`: jobs still running are no longer cancellable,
   * and a job that starts afterwards fails.
   */
  close(): Promise<void>;
}

/** The reason of the signal when Switchyard cancels the job. */
export class SwitchyardCancelledError extends Error {
  override name = 'SwitchyardCancelledError';
  /** The cancelled task: the BullMQ job id. */
  readonly taskId: string;
  /** The BullMQ queue. */
  readonly queue: string;
  /**
   * How the cancel reached the worker: `message` (Pub/Sub, while the job
   * ran) or `marker` (the key, set before the job started here or while the
   * subscriber was reconnecting).
   */
  readonly via: 'message' | 'marker';

  constructor(taskId: string, queue: string, via: 'message' | 'marker') {
    super(`task ${taskId} was cancelled through Switchyard (BullMQ queue ${queue})`);
    this.taskId = taskId;
    this.queue = queue;
    this.via = via;
  }
}

/** The channel Switchyard publishes the cancels of `queue`'s jobs on. */
export function switchyardCancelChannel(prefix: string, queue: string): string {
  return `${prefix}:${queue}:switchyard:cancel`;
}

/** The marker Switchyard sets when it cancels the active job `jobId`. */
export function switchyardCancelMarker(prefix: string, queue: string, jobId: string): string {
  return `${prefix}:${queue}:${jobId}:switchyard:cancel`;
}

const DEFAULT_START_TIMEOUT_MS = 5_000;

/** The few ioredis calls the wrapper makes. */
interface RedisClient {
  subscribe(...channels: string[]): Promise<unknown>;
  unsubscribe(...channels: string[]): Promise<unknown>;
  exists(...keys: string[]): Promise<number>;
  duplicate(): RedisClient;
  quit(): Promise<unknown>;
  disconnect(): void;
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
}

type RedisCtor = new (target: string | object) => RedisClient;

async function loadRedis(): Promise<RedisCtor> {
  try {
    const mod = (await import('ioredis')) as unknown as { Redis?: RedisCtor; default?: RedisCtor | { Redis?: RedisCtor } };
    const ctor = mod.Redis ?? (typeof mod.default === 'function' ? mod.default : mod.default?.Redis);
    if (typeof ctor !== 'function') {
      throw new Error('ioredis exports no Redis class');
    }
    return ctor;
  } catch (err) {
    throw new Error('withSwitchyardCancellation needs ioredis 5 (`npm install ioredis`)', { cause: err });
  }
}

type ErrorCtor = new (message: string) => Error;

/**
 * BullMQ's `UnrecoverableError` (a cancelled job must not be retried). BullMQ
 * also recognises the error by its name, so without the package an error
 * named so does the same.
 */
async function loadUnrecoverable(): Promise<ErrorCtor> {
  try {
    const mod = (await import('bullmq')) as unknown as { UnrecoverableError?: ErrorCtor };
    if (typeof mod.UnrecoverableError === 'function') {
      return mod.UnrecoverableError;
    }
  } catch {
    // Not installed here: fall through.
  }
  return class UnrecoverableError extends Error {
    override name = 'UnrecoverableError';
  };
}

function isRedisInstance(c: unknown): c is RedisClient {
  return typeof c === 'object' && c !== null && typeof (c as { duplicate?: unknown }).duplicate === 'function';
}

/** Rejects with `what` after `ms`, unless `p` settles first. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** A job this wrapper runs now. */
interface Running {
  controller: AbortController;
  jobId: string;
  queue: string;
  channel: string;
  marker: string;
}

/**
 * Wraps a BullMQ processor so that Switchyard's cancel of the job fires the
 * processor's `signal`:
 *
 * ```ts
 * import { Worker } from 'bullmq';
 * import { withSwitchyardCancellation } from '@switchyard/client/bullmq';
 *
 * const processor = withSwitchyardCancellation(async (job, token, signal) => {
 *   await send(job.data, { signal }); // rejects once signal fires
 * }, { connection: 'redis://127.0.0.1:6379' });
 * const worker = new Worker('emails', processor, { connection, prefix: 'bull' });
 * // on shutdown
 * await worker.close();
 * await processor.close();
 * ```
 *
 * The processor should stop and throw once the signal fires; the wrapper
 * then fails the job with BullMQ's `UnrecoverableError` (its `cause` is what
 * the processor threw), so BullMQ does not retry it and Switchyard marks the
 * task CANCELLED. If the processor resolves anyway, the job completes and so
 * does the task. A job whose marker is set when it starts fails at once,
 * without calling the processor.
 *
 * BullMQ 5 passes its own AbortSignal to a processor of three parameters
 * (`worker.cancelJob`): the wrapper declares three, and forwards an abort of
 * BullMQ's signal to the processor's, leaving the error as the processor
 * throws it (BullMQ's retries apply, as without the wrapper).
 *
 * One subscriber connection serves every job of the wrapper, whatever their
 * queue; use one wrapper per worker. Sandboxed (file) processors are not
 * supported.
 */
export function withSwitchyardCancellation<J extends BullJobLike, R>(
  processor: CancellableProcessor<J, R>,
  options: SwitchyardCancellationOptions,
): SwitchyardCancellableProcessor<J, R> {
  if (typeof processor !== 'function') {
    throw new TypeError('withSwitchyardCancellation: processor must be a function (sandboxed processors are not supported)');
  }
  if (options?.connection === undefined || options.connection === null) {
    throw new TypeError('withSwitchyardCancellation: options.connection is required (a Redis URL, ioredis options or an ioredis instance)');
  }
  const startTimeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const logger: SwitchyardCancellationLogger =
    options.logger === false
      ? { warn: () => undefined }
      : (options.logger ?? { warn: (m) => console.warn(`[switchyard-bullmq] ${m}`) });

  // One entry per running job, by marker key (it names prefix, queue and id).
  const running = new Map<string, Running>();
  // The channels subscribed to (or being), with the promise of their SUBSCRIBE.
  const channels = new Map<string, Promise<void>>();
  let connections: Promise<{ sub: RedisClient; cmd: RedisClient; ownCmd: boolean }> | undefined;
  let unrecoverable: Promise<ErrorCtor> | undefined;
  let closed = false;
  let everReady = false;

  const abort = (entry: Running, via: 'message' | 'marker'): void => {
    if (!entry.controller.signal.aborted) {
      entry.controller.abort(new SwitchyardCancelledError(entry.jobId, entry.queue, via));
    }
  };

  const checkMarker = async (cmd: RedisClient, entry: Running): Promise<void> => {
    if ((await cmd.exists(entry.marker)) > 0) {
      abort(entry, 'marker');
    }
  };

  const connect = (): Promise<{ sub: RedisClient; cmd: RedisClient; ownCmd: boolean }> => {
    connections ??= (async () => {
      const given = options.connection;
      let sub: RedisClient;
      let cmd: RedisClient;
      let ownCmd: boolean;
      if (isRedisInstance(given)) {
        sub = given.duplicate();
        cmd = given;
        ownCmd = false;
      } else {
        const Redis = await loadRedis();
        sub = new Redis(given);
        cmd = new Redis(given);
        ownCmd = true;
        cmd.on('error', (err: Error) => logger.warn(`Redis (marker checks): ${err.message}`));
      }
      sub.on('error', (err: Error) => logger.warn(`Redis (cancel subscriber): ${err.message}`));
      sub.on('message', (channel: string, jobId: string) => {
        for (const entry of running.values()) {
          if (entry.jobId === jobId && entry.channel === channel) {
            abort(entry, 'message');
          }
        }
      });
      // After a reconnect ioredis subscribes again; a cancel published in
      // between was missed, so subscribe (its reply says the subscription is
      // live) and then look at the markers of the running jobs.
      sub.on('ready', () => {
        if (!everReady) {
          everReady = true;
          return;
        }
        if (closed || channels.size === 0) {
          return;
        }
        void (async () => {
          try {
            await sub.subscribe(...channels.keys());
            await Promise.all([...running.values()].map((entry) => checkMarker(cmd, entry)));
          } catch (err) {
            logger.warn(`cannot check for cancels after a reconnect: ${(err as Error).message}`);
          }
        })();
      });
      return { sub, cmd, ownCmd };
    })();
    return connections;
  };

  const subscribe = (channel: string): Promise<void> => {
    let p = channels.get(channel);
    if (!p) {
      p = connect().then(async ({ sub }) => {
        await sub.subscribe(channel);
      });
      // A failed SUBSCRIBE is tried again by the next job.
      p.catch(() => channels.delete(channel));
      channels.set(channel, p);
    }
    return p;
  };

  const wrapped = async function switchyardCancellable(job: J, token?: string, signal?: AbortSignal): Promise<R> {
    if (closed) {
      throw new Error('withSwitchyardCancellation: the wrapper was closed; it runs no more jobs');
    }
    const controller = new AbortController();
    const forward = (): void => controller.abort(signal?.reason);
    if (signal?.aborted) {
      forward();
    } else {
      signal?.addEventListener('abort', forward, { once: true });
    }
    const jobId = job.id;
    const queue = options.queue ?? job.queueName;
    if (!queue) {
      signal?.removeEventListener('abort', forward);
      throw new TypeError('withSwitchyardCancellation: the job names no queue; set options.queue');
    }
    const prefix = options.prefix ?? job.prefix ?? 'bull';
    const channel = switchyardCancelChannel(prefix, queue);
    let entry: Running | undefined;
    if (jobId !== undefined) {
      entry = { controller, jobId, queue, channel, marker: switchyardCancelMarker(prefix, queue, jobId) };
      running.set(entry.marker, entry);
    }
    try {
      if (entry) {
        unrecoverable ??= loadUnrecoverable();
        // Subscribed first, then the marker: a cancel is seen one way or the
        // other (Switchyard sets the marker before it publishes).
        try {
          await within(subscribe(channel), startTimeoutMs, 'subscribing to the cancel channel');
          const { cmd } = await connect();
          await within(checkMarker(cmd, entry), startTimeoutMs, 'checking the cancel marker');
        } catch (err) {
          logger.warn(`job ${jobId}: runs without a cancel check now (${(err as Error).message}); a reconnect checks again`);
        }
        if (controller.signal.reason instanceof SwitchyardCancelledError) {
          throw await cancelled(controller.signal.reason, undefined);
        }
      }
      try {
        return await processor(job, token, controller.signal);
      } catch (err) {
        if (controller.signal.reason instanceof SwitchyardCancelledError) {
          throw await cancelled(controller.signal.reason, err);
        }
        throw err;
      }
    } finally {
      signal?.removeEventListener('abort', forward);
      if (entry && running.get(entry.marker) === entry) {
        running.delete(entry.marker);
      }
    }
  };

  const cancelled = async (reason: SwitchyardCancelledError, cause: unknown): Promise<Error> => {
    const Unrecoverable = await (unrecoverable ??= loadUnrecoverable());
    const err = new Unrecoverable(reason.message);
    (err as { cause?: unknown }).cause = cause ?? reason;
    return err;
  };

  const waitUntilReady = async (): Promise<void> => {
    if (!options.queue) {
      throw new TypeError('withSwitchyardCancellation: waitUntilReady() needs options.queue');
    }
    await subscribe(switchyardCancelChannel(options.prefix ?? 'bull', options.queue));
  };

  const close = async (): Promise<void> => {
    if (closed) {
      return;
    }
    closed = true;
    if (!connections) {
      return;
    }
    let conns: Awaited<typeof connections>;
    try {
      conns = await connections;
    } catch {
      return;
    }
    const { sub, cmd, ownCmd } = conns;
    await Promise.allSettled([...channels.values()]);
    channels.clear();
    const quit = async (c: RedisClient): Promise<void> => {
      try {
        await within(c.quit(), 2_000, 'QUIT');
      } catch {
        c.disconnect();
      }
    };
    await Promise.all([quit(sub), ownCmd ? quit(cmd) : Promise.resolve()]);
  };

  return Object.assign(wrapped, { waitUntilReady, close });
}
