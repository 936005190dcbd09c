/**
 * `ExecutionManagerService` and `ExecutionTask`: the original design's
 * centralised execution manager.
 *
 * ```ts
 * class ScanTask extends ExecutionTask {}         // or import { ScanTask } from '@switchyard/client'
 * const task = new ScanTask(() => this.scanNetwork(config.target, userId), { userId, priority: 10 });
 * this.executionManager.submit(task);
 * return task.id;
 * ```
 *
 * `submit(task)` schedules a SIMPLE Switchyard task for it and runs
 * `task.run()` in this process's worker when Switchyard assigns it: under
 * Switchyard's priorities (`priority`, -1000..1000, higher first), on the
 * immediate lane for `isImmediate` tasks, tracked (status, logs, watch),
 * cancellable (`task.signal` fires), and stopped by `disconnect()`. The task
 * runs here because its work is a closure of this process: the task name is
 * this manager's own (`execution-manager.<sessionId>`), registered only by
 * this process's worker. If the process stops first, the task stays PENDING
 * (NO_WORKER) until `disconnect()` (or `disconnectOnShutdown`) cancels it.
 *
 * The manager owns one session: `defaults.sessionId` if configured,
 * otherwise `exec-<uuid>` made when it is created (one per process under
 * NestJS). `disconnect()` cancels the session's active tasks;
 * `disconnect(userId)` those of a user (on logout).
 */
import { randomUUID } from 'node:crypto';

import { NonRetryableError, SwitchyardError } from './errors.js';
import type { KindOptions, StandardizedOrchestratorService } from './orchestrator.service.js';
import type {
  DisconnectReceipt,
  DisconnectTarget,
  DurationLike,
  ScheduleResult,
  TaskInfo,
  TaskStatusName,
  TaskType,
  TaskTypeName,
} from './types.js';
import type { TaskContext, TaskHandlerFn } from './worker/context.js';
import type { SwitchyardWorker } from './worker/worker.js';

/** Options of `submit(name, payload, options)`: the original design's names, plus any `scheduleTask` option. */
export interface SubmitOptions extends KindOptions {
  /** The owner (`disconnect(userId)` stops the task). */
  userId?: string;
  /** -1000..1000, higher first. */
  priority?: number;
  /** Run on the immediate lane: reserved capacity, never behind long jobs (reads, quick CRUD). */
  isImmediate?: boolean;
  /** Default SIMPLE. */
  taskType?: TaskType | TaskTypeName;
}

/** Options of an {@link ExecutionTask}. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export interface ExecutionTaskOptions<T extends ExecutionTask<any> = ExecutionTask<any>> {
  /** The owner: `disconnect(userId)` stops the task. */
  userId?: string;
  /** The session. Default: the manager's (`disconnect()` stops it). */
  sessionId?: string;
  /** -1000..1000, higher first. Default 0. */
  priority?: number;
  /** Run on the immediate lane (reads, quick CRUD): reserved slots, never behind long tasks. */
  isImmediate?: boolean;
  /** The task's kind, shown in lists and logs. Default: the class name (`ScanTask`). */
  name?: string;
  /** Attempts in all (1..100). Default 1: `run()` is not retried unless asked. */
  attempts?: number;
  /** Time limit of one attempt (`'30s'`, `'5m'`, or ms): then `task.signal` fires. */
  timeout?: DurationLike;
  /** Extra labels on the Switchyard task. */
  labels?: Record<string, string>;
  /** Called when `run()` throws or the task is cancelled, before `onCleanup`. */
  onRollback?: (error: unknown, task: T) => unknown;
  /** Called after every attempt, whatever its outcome. */
  onCleanup?: (task: T) => unknown;
}

/**
 * A unit of work for the execution manager. Give the work as a function, or
 * extend the class and override `run()`; override `rollback(error)` and
 * `cleanup()` (or pass `onRollback` / `onCleanup`) to undo and release.
 *
 * While it runs, `task.signal` fires when the task is cancelled (cancel,
 * `disconnect()`, timeout, shutdown); `task.context` is the worker's
 * {@link TaskContext} (progress, logs).
 */
export class ExecutionTask<R = unknown> {
  /** This task's id, known at once (before `submit` resolves). The routes and `getTask` accept it. */
  readonly id: string = randomUUID();
  /** The kind of task (default the class name). */
  readonly name: string;
  userId: string | undefined;
  sessionId: string | undefined;
  priority: number;
  isImmediate: boolean;
  readonly attempts: number | undefined;
  readonly timeout: DurationLike | undefined;
  readonly labels: Record<string, string>;
  /** The Switchyard task id, once scheduled. */
  taskId: string | undefined;
  /** Where it is, as this process saw it last: PENDING, RUNNING, COMPLETED, FAILED or CANCELLED. */
  status: TaskStatusName = 'PENDING';
  /** What `run()` returned. */
  result: R | undefined;
  /** What `run()` (or scheduling) threw. */
  error: unknown;
  readonly createdAt = new Date();
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
  /** While running: fires when the task is cancelled. */
  signal: AbortSignal | undefined;
  /** While running: the worker's context (progress, logs). */
  context: TaskContext | undefined;
  /** Settles when `submit` has scheduled the task (with `id`), or failed to. */
  submitted: Promise<string> | undefined;
  private readonly work: ((task: ExecutionTask<R>) => R | Promise<R>) | undefined;
  private readonly hooks: Pick<ExecutionTaskOptions, 'onRollback' | 'onCleanup'>;

  constructor(work?: (task: ExecutionTask<R>) => R | Promise<R>, options: ExecutionTaskOptions<ExecutionTask<R>> = {}) {
    if (work !== undefined && typeof work !== 'function') {
      throw new TypeError('ExecutionTask takes the work as a function (or override run())');
    }
    this.work = work;
    this.name = options.name ?? this.constructor.name;
    this.userId = options.userId;
    this.sessionId = options.sessionId;
    this.priority = options.priority ?? 0;
    this.isImmediate = options.isImmediate ?? false;
    this.attempts = options.attempts;
    this.timeout = options.timeout;
    this.labels = { ...options.labels };
    this.hooks = { onRollback: options.onRollback as ExecutionTaskOptions['onRollback'], onCleanup: options.onCleanup as ExecutionTaskOptions['onCleanup'] };
  }

  /** The work. Default: the function given to the constructor. */
  run(_context?: TaskContext): R | Promise<R> {
    if (!this.work) {
      throw new NonRetryableError(`${this.name} has no work: pass a function to its constructor or override run()`);
    }
    return this.work(this);
  }

  /** Undoes what a failed or cancelled `run()` did. Default: the `onRollback` option. */
  rollback(error: unknown): unknown {
    return this.hooks.onRollback?.(error, this as ExecutionTask);
  }

  /** Releases what `run()` held, after every attempt. Default: the `onCleanup` option. */
  cleanup(): unknown {
    return this.hooks.onCleanup?.(this as ExecutionTask);
  }
}

/** Network scans. */
export class ScanTask<R = unknown> extends ExecutionTask<R> {}
/** Topology generation. */
export class TopologyTask<R = unknown> extends ExecutionTask<R> {}
/** User operations. */
export class UserTask<R = unknown> extends ExecutionTask<R> {}
/** Log processing. */
export class LogTask<R = unknown> extends ExecutionTask<R> {}
/** Scripts and utilities. */
export class UtilTask<R = unknown> extends ExecutionTask<R> {}

/** Settings of the manager's worker. */
export interface ExecutionManagerSettings {
  /** Normal slots for `run()`s at once. Default 10. */
  concurrency?: number;
  /** Slots reserved for `isImmediate` tasks. Default 2. */
  immediateSlots?: number;
  /** Finished tasks kept in memory for `getTask` and the routes. Default 1000. */
  keepFinished?: number;
}

/** A task as the manager's routes show it: the original design's field names. */
export interface ExecutionTaskView {
  /** The execution task's id (`task.id`), or the Switchyard id for `submit(name, ...)` tasks. */
  id: string;
  /** The Switchyard task id. */
  taskId: string | undefined;
  name: string;
  status: TaskStatusName;
  userId: string | undefined;
  sessionId: string | undefined;
  priority: number;
  isImmediate: boolean;
  progress: number;
  attempt: number;
  error: string | undefined;
  createdAt: Date;
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
}

const TASK_ID_LABEL = 'execution-task-id';
const TASK_KIND_LABEL = 'execution-task';

/** A factory for the manager's worker: `SwitchyardClient.createWorker`. */
export type ExecutionWorkerFactory = (name: string, handler: TaskHandlerFn, settings: ExecutionManagerSettings) => SwitchyardWorker;

export class ExecutionManagerService {
  /** The session this manager tags its tasks with, and that `disconnect()` stops. */
  readonly sessionId: string;
  /** The Switchyard task name this process's worker runs `ExecutionTask`s under. */
  readonly taskName: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly tasks = new Map<string, ExecutionTask<any>>();
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly byTaskId = new Map<string, ExecutionTask<any>>();
  private worker: SwitchyardWorker | undefined;

  constructor(
    private readonly orchestrator: StandardizedOrchestratorService,
    sessionId?: string,
    private readonly workerFactory?: ExecutionWorkerFactory,
    private readonly settings: ExecutionManagerSettings = {},
  ) {
    this.sessionId = sessionId || orchestrator.defaults.sessionId || `exec-${randomUUID()}`;
    this.taskName = `execution-manager.${this.sessionId}`;
  }

  /**
   * Submits an {@link ExecutionTask}: resolves with `task.id` once the task
   * is scheduled. It need not be awaited (`task.id` is known at once); a
   * scheduling failure is then recorded on the task (`status` FAILED,
   * `error`) rather than thrown.
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  submit(task: ExecutionTask<any>): Promise<string>;
  /**
   * Submits work by name: a SIMPLE task (unless `taskType` says otherwise)
   * in this manager's session, run by whichever worker registered `name`.
   */
  submit(name: string, payload: unknown, options?: SubmitOptions): Promise<ScheduleResult>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  submit(what: ExecutionTask<any> | string, payload?: unknown, options: SubmitOptions = {}): Promise<string | ScheduleResult> {
    if (what instanceof ExecutionTask) {
      return this.submitTask(what);
    }
    if (typeof what !== 'string') {
      return Promise.reject(SwitchyardError.invalidArgument('task', 'submit takes an ExecutionTask, or (name, payload, options)'));
    }
    const { isImmediate, taskType, ...rest } = options;
    return this.orchestrator.scheduleTask(what, payload, {
      ...rest,
      taskType: taskType ?? 'SIMPLE',
      immediate: isImmediate ?? rest.immediate ?? false,
      sessionId: rest.sessionId ?? this.sessionId,
    });
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private submitTask(task: ExecutionTask<any>): Promise<string> {
    if (task.submitted) {
      return Promise.reject(SwitchyardError.invalidArgument('task', `task ${task.id} was already submitted`));
    }
    this.ensureWorker();
    this.tasks.set(task.id, task);
    const submitted = this.orchestrator
      .scheduleTask(
        this.taskName,
        { executionTaskId: task.id, name: task.name },
        {
          taskType: 'SIMPLE',
          priority: task.priority,
          immediate: task.isImmediate,
          userId: task.userId,
          sessionId: task.sessionId ?? this.sessionId,
          attempts: task.attempts ?? 1,
          timeout: task.timeout,
          idempotencyKey: `execution-task:${task.id}`,
          labels: { ...task.labels, [TASK_ID_LABEL]: task.id, [TASK_KIND_LABEL]: task.name },
        },
      )
      .then(
        (res) => {
          task.taskId = res.taskId;
          this.byTaskId.set(res.taskId, task);
          return task.id;
        },
        (err: unknown) => {
          task.status = 'FAILED';
          task.error = err;
          task.finishedAt = new Date();
          this.forgetOld();
          throw err;
        },
      );
    // The original design does not await submit(task): a failure must not
    // become an unhandled rejection. It is on the task, and thrown to whoever awaits.
    submitted.catch(() => undefined);
    task.submitted = submitted;
    return submitted;
  }

  private ensureWorker(): void {
    if (this.worker || !this.workerFactory) {
      if (!this.workerFactory) {
        throw SwitchyardError.invalidArgument('task', 'this ExecutionManagerService has no worker: get it from SwitchyardClient or SwitchyardModule');
      }
      return;
    }
    this.worker = this.workerFactory(this.taskName, (payload, ctx) => this.execute(payload, ctx), {
      concurrency: this.settings.concurrency ?? 10,
      immediateSlots: this.settings.immediateSlots ?? 2,
    });
  }

  private async execute(payload: { executionTaskId?: string }, ctx: TaskContext): Promise<unknown> {
    const task = this.tasks.get(String(payload?.executionTaskId));
    if (!task) {
      throw new NonRetryableError(`execution task ${payload?.executionTaskId} is not held by this process (it restarted since submit)`, {
        kind: 'execution_task_lost',
      });
    }
    if (task.taskId === undefined) {
      task.taskId = ctx.taskId;
      this.byTaskId.set(ctx.taskId, task);
    }
    task.status = 'RUNNING';
    task.startedAt = new Date();
    task.signal = ctx.signal;
    task.context = ctx;
    try {
      const result = await task.run(ctx);
      task.result = result;
      task.status = 'COMPLETED';
      return result;
    } catch (err) {
      task.error = err;
      task.status = ctx.signal.aborted ? 'CANCELLED' : 'FAILED';
      try {
        await task.rollback(err);
      } catch (rollbackErr) {
        ctx.log('error', `rollback failed: ${(rollbackErr as Error)?.message ?? String(rollbackErr)}`);
      }
      throw err;
    } finally {
      try {
        await task.cleanup();
      } catch (cleanupErr) {
        ctx.log('error', `cleanup failed: ${(cleanupErr as Error)?.message ?? String(cleanupErr)}`);
      }
      task.finishedAt = new Date();
      task.signal = undefined;
      task.context = undefined;
      this.forgetOld();
    }
  }

  /** Keeps at most `keepFinished` finished tasks in memory. */
  private forgetOld(): void {
    const keep = this.settings.keepFinished ?? 1000;
    let finished = 0;
    for (const t of this.tasks.values()) {
      if (t.finishedAt) {
        finished += 1;
      }
    }
    for (const [id, t] of this.tasks) {
      if (finished <= keep) {
        break;
      }
      if (t.finishedAt) {
        this.tasks.delete(id);
        if (t.taskId) {
          this.byTaskId.delete(t.taskId);
        }
        finished -= 1;
      }
    }
  }

  /** The Switchyard task id for an execution task id (or a Switchyard id, returned as is). */
  resolveTaskId(id: string): string {
    return this.tasks.get(id)?.taskId ?? id;
  }

  /** The execution task submitted here with this id (its own or Switchyard's), if this process still holds it. */
  getLocalTask(id: string): ExecutionTask | undefined {
    return this.tasks.get(id) ?? this.byTaskId.get(id);
  }

  /** A task as the routes show it (execution task id or Switchyard id). Rejects with `NOT_FOUND`. */
  async getTask(id: string): Promise<ExecutionTaskView> {
    const local = this.getLocalTask(id);
    if (local && local.taskId === undefined) {
      return this.view(undefined, local);
    }
    const info = await this.orchestrator.getTaskStatus(local?.taskId ?? id);
    return this.view(info, local);
  }

  /** The session's tasks that are running or waiting (the `/tasks` route), highest priority first. */
  async listTasks(): Promise<ExecutionTaskView[]> {
    const out: ExecutionTaskView[] = [];
    for await (const info of this.orchestrator.iterateTasks({ sessionId: this.sessionId, statuses: ['PENDING', 'RUNNING'] })) {
      out.push(this.view(info, this.byTaskId.get(info.id)));
    }
    return out.sort((a, b) => b.priority - a.priority || a.createdAt.getTime() - b.createdAt.getTime());
  }

  /**
   * Cancels a task (execution task id or Switchyard id): `true` once it is
   * cancelled (see `cancelTask`).
   */
  cancel(id: string, options?: { reason?: string; timeoutMs?: number }): Promise<boolean> {
    return this.orchestrator.cancelTask(this.resolveTaskId(id), options);
  }

  /**
   * The execution log: the log lines of one task, or, without an id, of the
   * session's most recent tasks (at most `limit` tasks), oldest first.
   */
  async getLogs(options: { id?: string; limit?: number } = {}): Promise<{ taskId: string; id: string; time: Date | undefined; level: string; message: string; attempt: number }[]> {
    const ids: string[] = [];
    if (options.id) {
      ids.push(this.resolveTaskId(options.id));
    } else {
      const page = await this.orchestrator.listTasks({ sessionId: this.sessionId }, { pageSize: options.limit ?? 20 });
      ids.push(...page.tasks.map((t) => t.id));
    }
    const lines = await Promise.all(
      ids.map(async (taskId) => {
        const local = this.byTaskId.get(taskId);
        const { lines: l } = await this.orchestrator.getTaskLogs(taskId, { limit: 1000 });
        return l.map((x) => ({ taskId, id: local?.id ?? taskId, time: x.time, level: x.level, message: x.message, attempt: x.attempt }));
      }),
    );
    return lines.flat().sort((a, b) => (a.time?.getTime() ?? 0) - (b.time?.getTime() ?? 0));
  }

  /** Global metrics: this manager's tasks by status, and the server's metrics. */
  async getMetrics(): Promise<{ sessionId: string; tasks: Record<string, number>; running: number; server: unknown }> {
    const tasks: Record<string, number> = {};
    for (const t of this.tasks.values()) {
      tasks[t.status] = (tasks[t.status] ?? 0) + 1;
    }
    return { sessionId: this.sessionId, tasks, running: this.worker?.runningTasks ?? 0, server: await this.orchestrator.getMetrics() };
  }

  /**
   * Cancels the active tasks of this manager's session (no argument), of a
   * user (`disconnect(userId)`, on logout), or of the given user or session.
   * Resolves with a receipt per task: CANCELLED, CANCEL_REQUESTED (running;
   * its `task.signal` fired) or ALREADY_FINISHED.
   */
  disconnect(target?: DisconnectTarget | string): Promise<DisconnectReceipt[]> {
    return this.orchestrator.disconnect(target ?? { sessionId: this.sessionId });
  }

  private view(info: TaskInfo | undefined, local: ExecutionTask | undefined): ExecutionTaskView {
    const err = local?.error ?? info?.error;
    return {
      id: local?.id ?? info?.labels[TASK_ID_LABEL] ?? info?.id ?? '',
      taskId: info?.id ?? local?.taskId,
      name: local?.name ?? info?.labels[TASK_KIND_LABEL] ?? info?.name ?? '',
      status: info?.status ?? local?.status ?? 'UNSPECIFIED',
      userId: info?.userId ?? local?.userId,
      sessionId: info?.sessionId ?? local?.sessionId,
      priority: info?.priority ?? local?.priority ?? 0,
      isImmediate: info?.immediate ?? local?.isImmediate ?? false,
      progress: info?.progress ?? 0,
      attempt: info?.attempt ?? 0,
      error: err === undefined ? undefined : typeof err === 'string' ? err : ((err as Error)?.message ?? String(err)),
      createdAt: info?.createdAt ?? local?.createdAt ?? new Date(0),
      startedAt: info?.startedAt ?? local?.startedAt,
      finishedAt: info?.finishedAt ?? local?.finishedAt,
    };
  }
}
