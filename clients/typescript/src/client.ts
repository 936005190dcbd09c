/**
 * `SwitchyardClient`: the whole API without NestJS. One connection, the
 * orchestrator service, the execution manager, and workers that share the
 * connection.
 *
 * ```ts
 * const client = new SwitchyardClient({ url: 'http://127.0.0.1:50051' });
 * const { taskId } = await client.orchestrator.scheduleSimpleTask('send-email', { to: 'a@b.c' });
 * console.log(await client.orchestrator.getTaskStatus(taskId));
 * client.close();
 * ```
 */
import type { ChannelCredentials, ChannelOptions } from '@grpc/grpc-js';

import { SwitchyardConnection, type SwitchyardTlsFiles } from './connection.js';
import { ExecutionManagerService, type ExecutionManagerSettings } from './execution-manager.service.js';
import { SwitchyardFlow } from './flow.js';
import { StandardizedOrchestratorService } from './orchestrator.service.js';
import { SwitchyardSchedules } from './schedules.js';
import type { ScheduleDefaults } from './types.js';
import { SwitchyardWorker, type CreateWorkerOptions } from './worker/worker.js';

/** Options of `SwitchyardClient` and `SwitchyardModule.forRoot`. */
export interface SwitchyardClientOptions {
  /**
   * `http://host:port` (plaintext), `https://host:port` (TLS), or a bare gRPC
   * target (`host:port`). Several replicas of one cluster: their URLs
   * comma-separated (`http://10.0.0.1:50051,http://10.0.0.2:50051`) or as an
   * array; each call goes to a replica that is up, and workers move to
   * another replica when theirs goes away (see
   * `SwitchyardConnectionOptions.url`).
   */
  url: string | readonly string[];
  /** Overrides the credentials the URL implies (mutual TLS, call credentials). */
  credentials?: ChannelCredentials;
  /** TLS files for `https://` URLs: a CA file, a client certificate (see `SwitchyardConnectionOptions.tls`). */
  tls?: SwitchyardTlsFiles;
  /** Applied to every scheduled task unless the call says otherwise. `defaults.sessionId` is also the execution manager's session. */
  defaults?: ScheduleDefaults;
  /** Metadata sent with every call (an authorization header, for example). */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** Deadline of each unary call, in milliseconds. Default 30 000. */
  callTimeoutMs?: number;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: ChannelOptions;
  /** How unary calls travel: straight over HTTP/2 (the default where it applies) or through grpc-js (see `SwitchyardConnectionOptions.transport`). */
  transport?: 'http2' | 'grpc-js';
  /** How long `cancelTask` waits for a running task's cancel to settle. Default 10 000 ms. */
  cancelTimeoutMs?: number;
  /** The worker that runs the execution manager's `ExecutionTask`s in this process. */
  executionManager?: ExecutionManagerSettings;
}

export class SwitchyardClient {
  readonly connection: SwitchyardConnection;
  readonly orchestrator: StandardizedOrchestratorService;
  readonly executionManager: ExecutionManagerService;
  /** Schedules: tasks fired on a cron expression or an interval (`upsertJobScheduler`). */
  readonly schedules: SwitchyardSchedules;
  /** Flow control: pause and resume queues, concurrency policies per key. */
  readonly flow: SwitchyardFlow;
  private readonly workers = new Set<SwitchyardWorker>();

  constructor(readonly options: SwitchyardClientOptions) {
    this.connection = new SwitchyardConnection({
      url: options.url,
      credentials: options.credentials,
      tls: options.tls,
      metadata: options.metadata,
      callTimeoutMs: options.callTimeoutMs,
      channelOptions: options.channelOptions,
      transport: options.transport,
    });
    this.orchestrator = new StandardizedOrchestratorService(this.connection, options.defaults ?? {}, {
      cancelTimeoutMs: options.cancelTimeoutMs,
    });
    this.schedules = new SwitchyardSchedules(this.connection);
    this.flow = new SwitchyardFlow(this.connection);
    this.executionManager = new ExecutionManagerService(
      this.orchestrator,
      options.defaults?.sessionId,
      (name, handler, settings) =>
        this.createWorker({ handlers: { [name]: handler }, concurrency: settings.concurrency, immediateSlots: settings.immediateSlots }),
      options.executionManager,
    );
  }

  /** Starts a worker on this client's connection (see `createWorker`). `close()` drains it. */
  createWorker(options: Omit<CreateWorkerOptions, 'url' | 'credentials' | 'tls' | 'connection'>): SwitchyardWorker {
    const worker = new SwitchyardWorker({ ...options, connection: this.connection });
    this.workers.add(worker);
    return worker;
  }

  /** Waits until the server's health check says SERVING. */
  waitForServing(timeoutMs = 10_000): Promise<void> {
    return this.connection.waitForServing(timeoutMs);
  }

  /** Drains the workers made by `createWorker`, then closes the connection. */
  async close(): Promise<void> {
    await Promise.all([...this.workers].map((w) => w.close()));
    this.workers.clear();
    this.connection.close();
  }
}

let defaultClient: SwitchyardClient | undefined;
let defaultOptions: SwitchyardClientOptions | undefined;

/**
 * Sets the options of the process-wide client behind `standardizedOrchestrator`
 * and `executionManager` (the original design's module-level instances).
 * Without it they use `SWITCHYARD_URL` (default `http://127.0.0.1:50051`;
 * several replicas' URLs comma-separated).
 * `SwitchyardModule.forRoot` calls it, so code outside Nest's injection sees
 * the module's server. Must be called before their first use.
 */
export function configureSwitchyard(options: SwitchyardClientOptions): void {
  if (defaultClient && !defaultClient.connection.isClosed) {
    if (defaultOptions && sameUrl(defaultOptions.url, options.url)) {
      return;
    }
    void defaultClient.close();
  }
  defaultClient = undefined;
  defaultOptions = options;
}

function sameUrl(a: string | readonly string[], b: string | readonly string[]): boolean {
  return a === b || (typeof a !== 'string' && typeof b !== 'string' && a.length === b.length && a.every((u, i) => u === b[i]));
}

/** The process-wide client (see `configureSwitchyard`), made on first use. */
export function defaultSwitchyardClient(): SwitchyardClient {
  if (!defaultClient || defaultClient.connection.isClosed) {
    defaultClient = new SwitchyardClient(defaultOptions ?? { url: process.env.SWITCHYARD_URL || 'http://127.0.0.1:50051' });
  }
  return defaultClient;
}

/**
 * Makes `client` the process-wide one behind `standardizedOrchestrator` and
 * `executionManager` (`SwitchyardModule` does this with its own client).
 */
export function setDefaultSwitchyardClient(client: SwitchyardClient): void {
  defaultClient = client;
  defaultOptions = client.options;
}

/** Closes the process-wide client, if it was made. */
export async function closeDefaultSwitchyardClient(): Promise<void> {
  const c = defaultClient;
  defaultClient = undefined;
  await c?.close();
}

/** An object that forwards every property to the process-wide client's `pick(client)`, made on first use. */
function lazy<T extends object>(pick: (c: SwitchyardClient) => T): T {
  return new Proxy({} as T, {
    get(_target, prop) {
      const real = pick(defaultSwitchyardClient()) as Record<PropertyKey, unknown>;
      const value = real[prop];
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(real) : value;
    },
    has: (_target, prop) => prop in pick(defaultSwitchyardClient()),
    getPrototypeOf: () => Object.getPrototypeOf(pick(defaultSwitchyardClient())) as object | null,
  });
}

/**
 * The original design's module-level orchestrator, for code outside NestJS:
 * `import { standardizedOrchestrator, TaskType } from '@switchyard/client'`.
 * Talks to the server of `configureSwitchyard` / `SwitchyardModule.forRoot`,
 * else `SWITCHYARD_URL`, else `http://127.0.0.1:50051`.
 */
export const standardizedOrchestrator: StandardizedOrchestratorService = lazy((c) => c.orchestrator);

/** The module-level execution manager (same client as `standardizedOrchestrator`). */
export const executionManager: ExecutionManagerService = lazy((c) => c.executionManager);
