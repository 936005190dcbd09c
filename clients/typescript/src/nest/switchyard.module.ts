/**
 * `SwitchyardModule`: the NestJS face of the client.
 *
 * `forRoot({ url, credentials, defaults })` or `forRootAsync({ imports,
 * useFactory, inject })` provide `StandardizedOrchestratorService`,
 * `ExecutionManagerService`, `SwitchyardClient` and `SwitchyardConnection`
 * (inject them by class). When the application boots, the module finds every
 * provider method decorated with `@TaskHandler` and runs them in one worker;
 * on shutdown it drains the worker (`beforeApplicationShutdown`) and closes
 * the connection (`onApplicationShutdown`). Call `app.enableShutdownHooks()`
 * so SIGTERM runs those hooks.
 */
import {
  Inject,
  Injectable,
  Logger,
  Module,
  type BeforeApplicationShutdown,
  type DynamicModule,
  type InjectionToken,
  type ModuleMetadata,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
  type OptionalFactoryDependency,
  type Provider,
} from '@nestjs/common';
import { DiscoveryModule, DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';

import { SwitchyardClient, setDefaultSwitchyardClient, type SwitchyardClientOptions } from '../client.js';
import { SwitchyardConnection } from '../connection.js';
import { ExecutionManagerService } from '../execution-manager.service.js';
import { StandardizedOrchestratorService } from '../orchestrator.service.js';
import type { TaskHandlerFn } from '../worker/context.js';
import type { SwitchyardWorker, TaskHandlerRegistration } from '../worker/worker.js';
import { ExecutionManagerController } from './execution-manager.controller.js';
import {
  ON_TASK_EVENT_METADATA,
  PROCESSOR_METADATA,
  SwitchyardJob,
  SwitchyardQueue,
  getSwitchyardQueueToken,
  type ProcessorMetadata,
  type RegisterQueueOptions,
  type TaskEventName,
} from './queue.js';
import { TASK_HANDLER_METADATA, type TaskHandlerMetadata } from './task-handler.decorator.js';

/** The token of the module's options. */
export const SWITCHYARD_MODULE_OPTIONS = Symbol('SWITCHYARD_MODULE_OPTIONS');

/** Settings of the worker that runs the `@TaskHandler` methods. */
export interface SwitchyardWorkerModuleOptions {
  /** Run the discovered handlers. Default true (no handler, no worker). */
  enabled?: boolean;
  /** Slots shared by handlers without their own `concurrency`. Default 10. */
  concurrency?: number;
  /** Slots reserved for immediate tasks on that stream. Default 1. */
  immediateSlots?: number;
  /** `Register.worker_name`. Default `<hostname>-<pid>`. */
  name?: string;
  /** How long shutdown waits for running handlers before firing their signals. Default 30 000. */
  drainTimeoutMs?: number;
}

/** Options of `SwitchyardModule.forRoot` (and what `forRootAsync`'s factory returns). */
export interface SwitchyardModuleOptions extends SwitchyardClientOptions {
  /** The worker for `@TaskHandler` methods. */
  worker?: SwitchyardWorkerModuleOptions;
  /**
   * On application shutdown, cancel the execution manager's session
   * (`ExecutionManagerService.disconnect()`), as the original design does on
   * server stop. Default false.
   */
  disconnectOnShutdown?: boolean;
  /**
   * Serve the original design's `/internal/execution-manager/*` routes
   * (`ExecutionManagerController`) from this app. Default false.
   */
  executionManagerRoutes?: boolean;
}

/** Options of `SwitchyardModule.forRootAsync`. */
export interface SwitchyardModuleAsyncOptions extends Pick<ModuleMetadata, 'imports'> {
  /** Serve the `/internal/execution-manager/*` routes (known before the factory runs, so here). */
  executionManagerRoutes?: boolean;
  useFactory: (...args: any[]) => SwitchyardModuleOptions | Promise<SwitchyardModuleOptions>;
  inject?: (InjectionToken | OptionalFactoryDependency)[];
  /** Register the module globally (default true: import it once, in the root module). */
  isGlobal?: boolean;
}

/** Starts the `@TaskHandler` worker on bootstrap, drains it and closes the client on shutdown. */
@Injectable()
export class SwitchyardLifecycle implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly logger = new Logger('Switchyard');
  private worker: SwitchyardWorker | undefined;

  constructor(
    @Inject(SWITCHYARD_MODULE_OPTIONS) private readonly options: SwitchyardModuleOptions,
    private readonly client: SwitchyardClient,
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
  ) {}

  /** The worker running the `@TaskHandler` methods, once started. */
  get taskWorker(): SwitchyardWorker | undefined {
    return this.worker;
  }

  onApplicationBootstrap(): void {
    if (this.options.worker?.enabled === false) {
      return;
    }
    const handlers = this.discoverHandlers();
    const names = Object.keys(handlers);
    if (names.length === 0) {
      return;
    }
    const w = this.options.worker ?? {};
    this.worker = this.client.createWorker({
      handlers,
      concurrency: w.concurrency,
      immediateSlots: w.immediateSlots,
      name: w.name,
      drainTimeoutMs: w.drainTimeoutMs,
      logger: new Logger('SwitchyardWorker'),
    });
    this.logger.log(`worker started for ${names.sort().join(', ')}`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    if (this.worker) {
      await this.worker.close();
    }
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.options.disconnectOnShutdown) {
      try {
        const receipts = await this.client.executionManager.disconnect();
        this.logger.log(`disconnected session ${this.client.executionManager.sessionId}: ${receipts.length} task(s)`);
      } catch (err) {
        this.logger.warn(`disconnect on shutdown failed: ${(err as Error).message}`);
      }
    }
    await this.client.close();
  }

  /** Runs a `@Processor` class's `process(job)` and tells its `@OnTaskEvent` methods. */
  private processorHandler(instance: Record<string, unknown>, proto: object, queue: string): TaskHandlerFn {
    if (typeof instance.process !== 'function') {
      throw new Error(`@Processor('${queue}') ${proto.constructor.name} has no process(job) method`);
    }
    const listeners = new Map<TaskEventName, ((...args: unknown[]) => unknown)[]>();
    for (const method of this.scanner.getAllMethodNames(proto)) {
      const fn = instance[method];
      if (typeof fn !== 'function') {
        continue;
      }
      const event = this.reflector.get<TaskEventName | undefined>(ON_TASK_EVENT_METADATA, fn as never);
      if (event) {
        listeners.set(event, [...(listeners.get(event) ?? []), (...args) => (fn as (...a: unknown[]) => unknown).apply(instance, args)]);
      }
    }
    const emit = (event: TaskEventName, ...args: unknown[]): void => {
      for (const listener of listeners.get(event) ?? []) {
        try {
          void Promise.resolve(listener(...args)).catch((err: unknown) => this.logger.warn(`@OnTaskEvent('${event}') of ${queue} failed: ${String(err)}`));
        } catch (err) {
          this.logger.warn(`@OnTaskEvent('${event}') of ${queue} failed: ${String(err)}`);
        }
      }
    };
    const process = instance.process as (job: SwitchyardJob) => unknown;
    return async (payload, ctx) => {
      const job = new SwitchyardJob(payload, ctx, (j, progress) => emit('progress', j, progress));
      emit('active', job);
      try {
        const result = await process.call(instance, job);
        emit('completed', job, result);
        return result;
      } catch (err) {
        emit(ctx.signal.aborted ? 'cancelled' : 'failed', job, err);
        throw err;
      }
    };
  }

  /** Every `@TaskHandler` method of every static provider, bound to its instance. */
  private discoverHandlers(): Record<string, TaskHandlerRegistration> {
    const found: Record<string, TaskHandlerRegistration> = {};
    const owners = new Map<string, string>();
    for (const wrapper of this.discovery.getProviders()) {
      const instance: unknown = wrapper.instance;
      if (!instance || typeof instance !== 'object' || !wrapper.isDependencyTreeStatic()) {
        continue;
      }
      const proto = Object.getPrototypeOf(instance) as object | null;
      if (!proto) {
        continue;
      }
      const processor = this.reflector.get<ProcessorMetadata | undefined>(PROCESSOR_METADATA, proto.constructor as never);
      if (processor) {
        const owner = `${wrapper.name ?? proto.constructor.name}.process`;
        const previous = owners.get(processor.name);
        if (previous !== undefined) {
          throw new Error(`the queue '${processor.name}' has two handlers: ${previous} and ${owner}`);
        }
        owners.set(processor.name, owner);
        found[processor.name] = {
          handler: this.processorHandler(instance as Record<string, unknown>, proto, processor.name),
          concurrency: processor.concurrency,
          immediateSlots: processor.immediateSlots,
        };
      }
      for (const method of this.scanner.getAllMethodNames(proto)) {
        const fn = (instance as Record<string, unknown>)[method];
        if (typeof fn !== 'function') {
          continue;
        }
        const meta = this.reflector.get<TaskHandlerMetadata | undefined>(TASK_HANDLER_METADATA, fn);
        if (!meta) {
          continue;
        }
        const owner = `${wrapper.name ?? proto.constructor.name}.${method}`;
        const previous = owners.get(meta.name);
        if (previous !== undefined) {
          throw new Error(`@TaskHandler('${meta.name}') is declared twice: ${previous} and ${owner}`);
        }
        owners.set(meta.name, owner);
        const handler: TaskHandlerFn = (payload, ctx) => (fn as TaskHandlerFn).call(instance, payload, ctx);
        found[meta.name] = { handler, concurrency: meta.concurrency, immediateSlots: meta.immediateSlots };
      }
    }
    return found;
  }
}

const exported = [SwitchyardClient, SwitchyardConnection, StandardizedOrchestratorService, ExecutionManagerService, SwitchyardLifecycle];

function providers(): Provider[] {
  return [
    {
      provide: SwitchyardClient,
      useFactory: (options: SwitchyardModuleOptions) => {
        const client = new SwitchyardClient(options);
        // The module-level `standardizedOrchestrator` of the original design is this client's.
        setDefaultSwitchyardClient(client);
        return client;
      },
      inject: [SWITCHYARD_MODULE_OPTIONS],
    },
    { provide: SwitchyardConnection, useFactory: (c: SwitchyardClient) => c.connection, inject: [SwitchyardClient] },
    { provide: StandardizedOrchestratorService, useFactory: (c: SwitchyardClient) => c.orchestrator, inject: [SwitchyardClient] },
    { provide: ExecutionManagerService, useFactory: (c: SwitchyardClient) => c.executionManager, inject: [SwitchyardClient] },
    SwitchyardLifecycle,
  ];
}

@Module({})
export class SwitchyardModule {
  /**
   * Configures the client with static options.
   *
   * ```ts
   * @Module({
   *   imports: [SwitchyardModule.forRoot({ url: 'http://127.0.0.1:50051', defaults: { attempts: 3 } })],
   *   providers: [EmailHandlers],
   * })
   * export class AppModule {}
   * ```
   */
  static forRoot(options: SwitchyardModuleOptions & { isGlobal?: boolean }): DynamicModule {
    const { isGlobal, ...rest } = options;
    return {
      module: SwitchyardModule,
      global: isGlobal ?? true,
      imports: [DiscoveryModule],
      controllers: rest.executionManagerRoutes ? [ExecutionManagerController] : [],
      providers: [{ provide: SWITCHYARD_MODULE_OPTIONS, useValue: rest }, ...providers()],
      exports: exported,
    };
  }

  /**
   * Configures the client from other providers (ConfigService, secrets).
   *
   * ```ts
   * SwitchyardModule.forRootAsync({
   *   imports: [ConfigModule],
   *   inject: [ConfigService],
   *   useFactory: (config: ConfigService) => ({ url: config.getOrThrow('SWITCHYARD_URL') }),
   * })
   * ```
   */
  static forRootAsync(options: SwitchyardModuleAsyncOptions): DynamicModule {
    return {
      module: SwitchyardModule,
      global: options.isGlobal ?? true,
      imports: [DiscoveryModule, ...(options.imports ?? [])],
      controllers: options.executionManagerRoutes ? [ExecutionManagerController] : [],
      providers: [{ provide: SWITCHYARD_MODULE_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] }, ...providers()],
      exports: exported,
    };
  }

  /**
   * Provides a {@link SwitchyardQueue} bound to each queue, for
   * `@InjectSwitchyardQueue(name)`, as `@nestjs/bullmq`'s `registerQueue`.
   * Needs `SwitchyardModule.forRoot` (global) in the app.
   *
   * ```ts
   * @Module({ imports: [SwitchyardModule.registerQueue({ name: 'emails', defaults: { attempts: 3 } })] })
   * ```
   */
  static registerQueue(...queues: RegisterQueueOptions[]): DynamicModule {
    const providers: Provider[] = queues.map((q) => ({
      provide: getSwitchyardQueueToken(q.name),
      useFactory: (orchestrator: StandardizedOrchestratorService) => new SwitchyardQueue(q.name, orchestrator, q.defaults ?? {}),
      inject: [StandardizedOrchestratorService],
    }));
    return { module: SwitchyardQueueModule, providers, exports: providers };
  }
}

/** The module `registerQueue` returns. */
@Module({})
export class SwitchyardQueueModule {}
