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

import { SwitchyardConnection } from './connection.js';
import { ExecutionManagerService } from './execution-manager.service.js';
import { StandardizedOrchestratorService } from './orchestrator.service.js';
import type { ScheduleDefaults } from './types.js';
import { SwitchyardWorker, type CreateWorkerOptions } from './worker/worker.js';

/** Options of `SwitchyardClient` and `SwitchyardModule.forRoot`. */
export interface SwitchyardClientOptions {
  /** `http://host:port` (plaintext), `https://host:port` (TLS), or a bare gRPC target (`host:port`). */
  url: string;
  /** Overrides the credentials the URL implies (mutual TLS, call credentials). */
  credentials?: ChannelCredentials;
  /** Applied to every scheduled task unless the call says otherwise. `defaults.sessionId` is also the execution manager's session. */
  defaults?: ScheduleDefaults;
  /** Metadata sent with every call (an authorization header, for example). */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** Deadline of each unary call, in milliseconds. Default 30 000. */
  callTimeoutMs?: number;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: ChannelOptions;
}

export class SwitchyardClient {
  readonly connection: SwitchyardConnection;
  readonly orchestrator: StandardizedOrchestratorService;
  readonly executionManager: ExecutionManagerService;
  private readonly workers = new Set<SwitchyardWorker>();

  constructor(readonly options: SwitchyardClientOptions) {
    this.connection = new SwitchyardConnection({
      url: options.url,
      credentials: options.credentials,
      metadata: options.metadata,
      callTimeoutMs: options.callTimeoutMs,
      channelOptions: options.channelOptions,
    });
    this.orchestrator = new StandardizedOrchestratorService(this.connection, options.defaults ?? {});
    this.executionManager = new ExecutionManagerService(this.orchestrator, options.defaults?.sessionId);
  }

  /** Starts a worker on this client's connection (see `createWorker`). `close()` drains it. */
  createWorker(options: Omit<CreateWorkerOptions, 'url' | 'credentials' | 'connection'>): SwitchyardWorker {
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
