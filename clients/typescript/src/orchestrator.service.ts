/**
 * `StandardizedOrchestratorService`: the original design's orchestrator API
 * (`scheduleTask`, `scheduleSimpleTask`, `scheduleComplexWorkflow`,
 * `scheduleExternalIntegration`, `getTaskStatus`, `cancelTask`) plus
 * `watchTasks`, `listTasks`, `getTaskLogs`, `getMetrics` and `disconnect`,
 * over Switchyard's OrchestratorService.
 *
 * A plain class: NestJS provides it through `SwitchyardModule` (inject it by
 * class), and `new SwitchyardClient({ url }).orchestrator` gives the same
 * object without NestJS.
 */
import { filter as rxFilter } from 'rxjs';

import type { CallSettings, SwitchyardConnection } from './connection.js';
import {
  cancelOutcomeName,
  scheduleOutcomeName,
  taskStateName,
  toJsonObject,
  toLogLine,
  toPbFilter,
  toScheduleRequest,
  toTaskInfo,
} from './convert.js';
import { grpcCodeName, SwitchyardError } from './errors.js';
import {
  CancelTaskRequest,
  DisconnectRequest,
  GetMetricsRequest,
  GetTaskLogsRequest,
  GetTaskStatusRequest,
  ListTasksRequest,
  ListWorkflowsRequest,
  RegisterWorkflowRequest,
  ReplayWorkflowRequest,
  RetryTaskRequest,
  type ScheduleTaskResponse,
  SignalTaskRequest,
} from './gen/switchyard/v1/orchestrator.js';
import type { TaskStatus } from './gen/switchyard/v1/task.js';
import type {
  BulkResult,
  BulkTask,
  CancelResult,
  DisconnectReceipt,
  DisconnectTarget,
  N8nOptions,
  RegisteredWorkflow,
  ScheduleDefaults,
  ScheduleResult,
  ScheduleTaskOptions,
  SwitchyardMetrics,
  TaskFilter,
  TaskInfo,
  TaskLogs,
  TaskPage,
  TaskWatchEvent,
  TaskWatchItem,
  TemporalOptions,
  WatchOptions,
  WorkflowInfo,
} from './types.js';
import { TaskHandle } from './handle.js';
import { asWatchStream, watchTasks, type WatchStream } from './watch.js';

/** Options of `scheduleSimpleTask`: every `scheduleTask` option but the type and the other kinds' targets. */
export type KindOptions = Omit<ScheduleTaskOptions, 'taskType' | 'temporal' | 'n8n'>;

/** Options of `scheduleComplexWorkflow`: `temporal` (the workflow) is required. */
export type ComplexWorkflowOptions = Omit<ScheduleTaskOptions, 'taskType' | 'n8n' | 'queue'> & { temporal: TemporalOptions };

/** Options of `scheduleExternalIntegration`: `n8n` (the webhook) is required. */
export type ExternalIntegrationOptions = Omit<ScheduleTaskOptions, 'taskType' | 'temporal' | 'queue'> & { n8n: N8nOptions };

/** Options of `cancelTask`. */
export interface CancelOptions {
  /** Recorded in the task's log. At most 1024 bytes. */
  reason?: string;
  /**
   * Stop without letting the task clean up: for Temporal, terminate instead of
   * requesting cancellation; on the embedded engine a running task is marked
   * CANCELLED at once and its worker told to stop.
   */
  force?: boolean;
  /**
   * `cancelTask` only: how long to wait, when the task was running, for the
   * cancel to settle (the worker's or engine's acknowledgement). Default: the
   * service's `cancelTimeoutMs` (10 000).
   */
  timeoutMs?: number;
}

/** The most tasks one `scheduleTasks` call takes. */
export const MAX_BULK_TASKS = 1000;

/** The default of `cancelTimeoutMs`. */
export const DEFAULT_CANCEL_TIMEOUT_MS = 10_000;

/** Settings of the service that are not per-task defaults. */
export interface OrchestratorSettings {
  /** How long `cancelTask` waits for a running task's cancel to settle. Default 10 000 ms. */
  cancelTimeoutMs?: number;
}

export class StandardizedOrchestratorService {
  constructor(
    /** The shared channel. */
    readonly connection: SwitchyardConnection,
    /** Applied to every `scheduleTask` unless the call says otherwise. */
    readonly defaults: ScheduleDefaults = {},
    /** `cancelTimeoutMs`. */
    readonly settings: OrchestratorSettings = {},
  ) {}

  /**
   * Schedules a task of any kind. The task is durably stored before this
   * resolves. The kind is `options.taskType`, or COMPLEX when `temporal` is
   * given, INTEGRATION when `n8n` is given, else SIMPLE.
   *
   * Rejects with a {@link SwitchyardError}: `INVALID_ARGUMENT` with
   * `fieldViolations` for a bad request, `FAILED_PRECONDITION` when the server
   * runs no executor for the kind, `UNAVAILABLE` while it drains.
   */
  async scheduleTask(name: string, payload: unknown, options: ScheduleTaskOptions = {}): Promise<ScheduleResult> {
    const res = await this.schedule(name, payload, options);
    const task = toTaskInfo(res.status);
    return {
      taskId: res.taskId,
      existing: res.existing,
      outcome: scheduleOutcomeName(res.outcome),
      supersededTaskIds: res.supersededTaskIds,
      status: task.status,
      task,
    };
  }

  /**
   * `ScheduleTask` as `scheduleTask` sends it, answering the raw reply: the
   * helpers that resolve with the id alone skip building the task's view.
   */
  private async schedule(
    name: string,
    payload: unknown,
    options: ScheduleTaskOptions,
  ): Promise<ScheduleTaskResponse & { status: TaskStatus }> {
    const res = await this.connection.unary('scheduleTask', toScheduleRequest(name, payload, options, this.defaults));
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'ScheduleTask answered without a status', method: 'ScheduleTask' });
    }
    return res as ScheduleTaskResponse & { status: TaskStatus };
  }

  /**
   * Schedules up to {@link MAX_BULK_TASKS} tasks in one call
   * (`ScheduleTasks`): each is checked on its own, exactly as `scheduleTask`
   * checks one, and the accepted ones are stored together (one group commit)
   * before this resolves. Resolves with one result per task, in order: a
   * refused task (`ok: false`, with the {@link SwitchyardError}
   * `scheduleTask` would have rejected it with) does not stop the others.
   * An empty list resolves with an empty list.
   *
   * Rejects only for the call as a whole: `INVALID_ARGUMENT` on `tasks` for
   * more than 1,000, `RESOURCE_EXHAUSTED` / `UNAVAILABLE` when the server
   * cannot store anything now; then nothing was scheduled.
   */
  async scheduleTasks(tasks: readonly BulkTask[]): Promise<BulkResult[]> {
    if (tasks.length > MAX_BULK_TASKS) {
      throw SwitchyardError.invalidArgument('tasks', `must hold at most ${MAX_BULK_TASKS} tasks, got ${tasks.length}`, 'ScheduleTasks');
    }
    const results: (BulkResult | undefined)[] = new Array(tasks.length);
    const sent: number[] = [];
    const requests = [];
    for (const [index, t] of tasks.entries()) {
      try {
        requests.push(toScheduleRequest(t.name, t.payload ?? {}, t.options ?? {}, this.defaults));
        sent.push(index);
      } catch (e) {
        // Refused here as scheduleTask would refuse it: that task's result.
        if (!(e instanceof SwitchyardError)) throw e;
        results[index] = { index, ok: false, error: e };
      }
    }
    if (requests.length > 0) {
      const res = await this.connection.unary('scheduleTasks', { tasks: requests });
      for (const r of res.results) {
        const index = sent[r.index];
        if (index === undefined) continue;
        if (r.scheduled) {
          results[index] = {
            index,
            ok: true,
            taskId: r.scheduled.taskId,
            existing: r.scheduled.existing,
            outcome: scheduleOutcomeName(r.scheduled.outcome),
            supersededTaskIds: r.scheduled.supersededTaskIds,
            status: taskStateName(r.scheduled.state),
          };
        } else {
          const e = r.error;
          results[index] = {
            index,
            ok: false,
            error: new SwitchyardError({
              code: grpcCodeName(e?.code ?? 13),
              details: e?.message ?? 'no outcome',
              fieldViolations: e?.violations.map((v) => ({ field: v.field, description: v.description })) ?? [],
              method: 'ScheduleTasks',
            }),
          };
        }
      }
    }
    return results.map(
      (r, index) =>
        r ?? { index, ok: false, error: new SwitchyardError({ code: 'INTERNAL', details: 'the server gave no result for this task', method: 'ScheduleTasks' }) },
    );
  }

  /**
   * Schedules a SIMPLE task (a queue job run by a worker that registered
   * `name`, or a BullMQ job on the BullMQ backend) and resolves with its id,
   * as the original design's helper does. `scheduleTask` gives the whole
   * result.
   */
  async scheduleSimpleTask(name: string, data: unknown, options: KindOptions = {}): Promise<string> {
    rejectTargets(options, 'scheduleSimpleTask', ['temporal', 'n8n']);
    return (await this.schedule(name, data, { ...options, taskType: 'SIMPLE' })).taskId;
  }

  /**
   * Schedules a COMPLEX task, a workflow, and resolves with its id. The
   * workflow is `options.temporal` (`workflowType` is required; its
   * arguments and queues as the original design passes them to Temporal);
   * `data` is the task's payload.
   *
   * ```ts
   * const id = await orchestrator.scheduleComplexWorkflow('migration', { projectId }, {
   *   temporal: { workflowType: 'migrationWorkflow', workflowArgs: [projectId], taskQueue: 'migrations' },
   * });
   * ```
   */
  async scheduleComplexWorkflow(name: string, data: unknown, options: ComplexWorkflowOptions): Promise<string> {
    if (!options?.temporal || typeof options.temporal !== 'object') {
      throw SwitchyardError.invalidArgument(
        'complex.workflow_type',
        'scheduleComplexWorkflow(name, data, { temporal: { workflowType, workflowArgs, taskQueue } }) needs options.temporal',
      );
    }
    rejectTargets(options, 'scheduleComplexWorkflow', ['n8n']);
    return (await this.schedule(name, data, { ...options, taskType: 'COMPLEX' })).taskId;
  }

  /**
   * Schedules an INTEGRATION task and resolves with its id: Switchyard POSTs
   * `data` to the webhook of `options.n8n` (`webhookUrl`, or the n8n
   * `workflowId` resolved against the server's n8n base URL), retrying as
   * configured, and records the response as the result.
   */
  async scheduleExternalIntegration(name: string, data: unknown, options: ExternalIntegrationOptions): Promise<string> {
    if (!options?.n8n || typeof options.n8n !== 'object') {
      throw SwitchyardError.invalidArgument(
        'integration.n8n',
        'scheduleExternalIntegration(name, data, { n8n: { workflowId | webhookUrl, integrationSource } }) needs options.n8n',
      );
    }
    rejectTargets(options, 'scheduleExternalIntegration', ['temporal']);
    return (await this.schedule(name, data, { ...options, taskType: 'INTEGRATION' })).taskId;
  }

  /** A handle on a task: its status, its result (awaited), cancel and signal. No call is made until used. */
  getHandle(taskId: string): TaskHandle {
    return new TaskHandle(this, taskId);
  }

  /** The task's status, with its payload. Rejects with `NOT_FOUND` for an unknown id. */
  async getTaskStatus(taskId: string, settings?: CallSettings): Promise<TaskInfo> {
    const res = await this.connection.unary('getTaskStatus', GetTaskStatusRequest.create({ taskId }), settings);
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'GetTaskStatus answered without a status', method: 'GetTaskStatus' });
    }
    return toTaskInfo(res.status, res.payload ?? {});
  }

  /**
   * Cancels a task and resolves `true` only once it is cancelled:
   * - a pending task is CANCELLED at once: `true`;
   * - a running task is asked to stop (its worker's `ctx.signal`, BullMQ's
   *   wrapped processor, Temporal's cancellation); this waits up to
   *   `options.timeoutMs` (default `cancelTimeoutMs`, 10 s) for it to settle:
   *   `true` if it ends CANCELLED (or COMPENSATED, a workflow rolled back),
   *   `false` if it ends otherwise (it completed or failed anyway, e.g. an
   *   unwrapped BullMQ processor) or is still running at the deadline (the
   *   cancel stays requested and may still take effect);
   * - a task that had already finished: `false`.
   * Rejects with `NOT_FOUND` for an unknown id. `cancelTaskWithOutcome`
   * answers at once with what the server did.
   */
  async cancelTask(taskId: string, options: CancelOptions = {}): Promise<boolean> {
    const { outcome } = await this.cancelTaskWithOutcome(taskId, options);
    if (outcome === 'CANCELLED') {
      return true;
    }
    if (outcome !== 'CANCEL_REQUESTED') {
      return false;
    }
    const timeoutMs = options.timeoutMs ?? this.settings.cancelTimeoutMs ?? DEFAULT_CANCEL_TIMEOUT_MS;
    try {
      const task = await this.waitForTask(taskId, { timeoutMs });
      return task.status === 'CANCELLED' || task.status === 'COMPENSATED';
    } catch (err) {
      if (err instanceof SwitchyardError && err.code === 'DEADLINE_EXCEEDED') {
        return false;
      }
      throw err;
    }
  }

  /** Cancels a task and says what happened: CANCELLED, CANCEL_REQUESTED or ALREADY_FINISHED. */
  async cancelTaskWithOutcome(taskId: string, options: CancelOptions = {}): Promise<CancelResult> {
    const res = await this.connection.unary(
      'cancelTask',
      CancelTaskRequest.create({ taskId, reason: options.reason ?? '', force: options.force ?? false }),
    );
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'CancelTask answered without a status', method: 'CancelTask' });
    }
    return { outcome: cancelOutcomeName(res.outcome), task: toTaskInfo(res.status) };
  }

  /**
   * Streams task events that match `filter` as an Observable. Items are
   * `event` (a task changed; `task` is its whole status), `live` (replay is
   * over), `gap` (history was lost while away: snapshots follow) and
   * `reconnecting` (the stream broke and is being resumed with
   * `after_sequence`, so no event is missed or repeated). Unsubscribe to stop.
   * Errors a retry cannot fix end it with a {@link SwitchyardError}.
   *
   * ```ts
   * orchestrator.watchTasks({ userId: 'u1' }).subscribe((item) => {
   *   if (item.type === 'event') console.log(item.task.id, item.task.status);
   * });
   * ```
   */
  watchTasks(filter: TaskFilter = {}, options: WatchOptions = {}): WatchStream<TaskWatchItem> {
    return watchTasks(this.connection, filter, options);
  }

  /** `watchTasks` narrowed to task events. */
  watchTaskEvents(filter: TaskFilter = {}, options: WatchOptions = {}): WatchStream<TaskWatchEvent> {
    return asWatchStream(this.watchTasks(filter, options).pipe(rxFilter((i): i is TaskWatchEvent => i.type === 'event')));
  }

  /**
   * Resolves with the task once it is in a final state (COMPLETED, FAILED,
   * CANCELLED, COMPENSATED). Watches first, then reads the status, so a
   * change in between is not missed. Rejects with `DEADLINE_EXCEEDED` after
   * `timeoutMs` (default: no limit).
   */
  async waitForTask(taskId: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<TaskInfo> {
    const controller = new AbortController();
    const cleanup: (() => void)[] = [];
    const abort = new Promise<never>((_, reject) => {
      if (options.timeoutMs !== undefined) {
        const t = setTimeout(
          () => reject(new SwitchyardError({ code: 'DEADLINE_EXCEEDED', details: `task ${taskId} was not final within ${options.timeoutMs} ms` })),
          options.timeoutMs,
        );
        cleanup.push(() => clearTimeout(t));
      }
      if (options.signal) {
        const onAbort = () => reject(new SwitchyardError({ code: 'CANCELLED', details: 'waitForTask was aborted' }));
        options.signal.addEventListener('abort', onAbort, { once: true });
        cleanup.push(() => options.signal?.removeEventListener('abort', onAbort));
      }
    });
    const items = this.watchTasks({ taskIds: [taskId] });
    let sub: { unsubscribe(): void } | undefined;
    try {
      const final = new Promise<TaskInfo>((resolve, reject) => {
        sub = items.subscribe({
          next: (item) => {
            if (item.type === 'live' && !item.resumed) {
              // Watching now: the current status cannot slip past us.
              this.getTaskStatus(taskId, { signal: controller.signal }).then((t) => t.isFinal && resolve(t), reject);
            } else if (item.type === 'event' && item.task.isFinal) {
              resolve(item.task);
            }
          },
          error: reject,
        });
      });
      return await Promise.race([final, abort]);
    } finally {
      controller.abort();
      sub?.unsubscribe();
      cleanup.forEach((f) => f());
    }
  }

  /** One page of tasks, newest first. */
  async listTasks(filter: TaskFilter = {}, page: { pageSize?: number; pageToken?: string } = {}): Promise<TaskPage> {
    const res = await this.connection.unary(
      'listTasks',
      ListTasksRequest.create({ filter: toPbFilter(filter), pageSize: page.pageSize ?? 0, pageToken: page.pageToken ?? '' }),
    );
    return { tasks: res.tasks.map((t) => toTaskInfo(t)), nextPageToken: res.nextPageToken || undefined };
  }

  /** Every matching task, newest first, page by page. */
  async *iterateTasks(filter: TaskFilter = {}, pageSize = 200): AsyncGenerator<TaskInfo> {
    let pageToken: string | undefined;
    do {
      const page = await this.listTasks(filter, { pageSize, pageToken });
      yield* page.tasks;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** The task's log, oldest first: state changes, attempts and the worker's own lines. */
  async getTaskLogs(taskId: string, page: { afterLine?: number; limit?: number } = {}): Promise<TaskLogs> {
    const res = await this.connection.unary(
      'getTaskLogs',
      GetTaskLogsRequest.create({ taskId, afterLine: page.afterLine ?? 0, limit: page.limit ?? 0 }),
    );
    return { lines: res.lines.map(toLogLine), hasMore: res.hasMore };
  }

  /** Counts by state, type and name, queue depths, throughput and latency percentiles. */
  getMetrics(): Promise<SwitchyardMetrics> {
    return this.connection.unary('getMetrics', GetMetricsRequest.create({}));
  }

  /**
   * Cancels every active task of a user (on logout) or of a session (on
   * server stop): `disconnect(userId)`, or exactly one of `userId` and
   * `sessionId`. Resolves with a
   * receipt per task that was active: CANCELLED, CANCEL_REQUESTED (running;
   * its worker was told) or ALREADY_FINISHED.
   */
  async disconnect(target: DisconnectTarget | string): Promise<DisconnectReceipt[]> {
    const t: Partial<{ userId: string; sessionId: string; reason: string }> =
      typeof target === 'string' ? { userId: target } : (target ?? {});
    const userId = t.userId ?? '';
    const sessionId = t.sessionId ?? '';
    if ((userId === '') === (sessionId === '')) {
      throw SwitchyardError.invalidArgument(
        userId === '' ? 'user_id' : 'session_id',
        'exactly one of userId and sessionId is required: disconnect(userId), disconnect({ userId }) or disconnect({ sessionId })',
      );
    }
    const res = await this.connection.unary('disconnect', DisconnectRequest.create({ userId, sessionId, reason: t.reason ?? '' }));
    return res.receipts.map((r) => ({ taskId: r.taskId, name: r.name, outcome: cancelOutcomeName(r.outcome) }));
  }

  /**
   * Runs an ended task again under the same id (BullMQ's `job.retry()`): a
   * FAILED, CANCELLED or COMPENSATED task goes back to PENDING with the next
   * run number (`run`) and a new attempt budget, keeping its payload, labels,
   * idempotency key and history. A workflow starts afresh (see
   * `replayWorkflow` to keep its earlier steps). Durable before it resolves.
   * Rejects with `NOT_FOUND` for an unknown (or removed) id and
   * `FAILED_PRECONDITION` for a task in another state, a workflow's step, or
   * a task run by the BullMQ or Temporal backend. To retry in bulk, list the
   * tasks (`listTasks({ statuses: ['FAILED'], errorKind })`) and retry each.
   */
  async retryTask(taskId: string, options: { reason?: string } = {}): Promise<TaskInfo> {
    const res = await this.connection.unary('retryTask', RetryTaskRequest.create({ taskId, reason: options.reason ?? '' }));
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'RetryTask answered without a status', method: 'RetryTask' });
    }
    return toTaskInfo(res.status);
  }

  /**
   * Runs an ended workflow (embedded engine) again from step `fromStep`: the
   * steps before it keep their outputs; it and the steps after it (and any
   * compensation) run again under the next run number. Durable before it
   * resolves. `INVALID_ARGUMENT` on `from_step` for a step the definition
   * lacks; `FAILED_PRECONDITION` for a workflow that has not ended, runs on
   * Temporal, or has an earlier step that did not complete.
   */
  async replayWorkflow(taskId: string, fromStep: string, options: { reason?: string } = {}): Promise<TaskInfo> {
    const res = await this.connection.unary(
      'replayWorkflow',
      ReplayWorkflowRequest.create({ taskId, fromStep, reason: options.reason ?? '' }),
    );
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'ReplayWorkflow answered without a status', method: 'ReplayWorkflow' });
    }
    return toTaskInfo(res.status);
  }

  /**
   * Delivers a named signal with a payload to a running workflow (a human
   * approval, an external event); it becomes the waiting `signal` step's
   * output. A workflow not waiting for it yet keeps it until a step does.
   * `FAILED_PRECONDITION` if the task is not an active COMPLEX task.
   */
  async signalTask(taskId: string, signal: string, payload: unknown = {}): Promise<TaskInfo> {
    const res = await this.connection.unary('signalTask', SignalTaskRequest.create({ taskId, signal, payload: toJsonObject(payload, 'payload') }));
    if (!res.status) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'SignalTask answered without a status', method: 'SignalTask' });
    }
    return toTaskInfo(res.status);
  }

  /**
   * Registers a workflow definition (the COMPLEX tasks' `workflowType`), or a
   * new version of one: a JSON object, or its text in `json` or `toml`. Runs
   * in progress finish on the version they started with. The schema is the
   * server's (see its workflow engine docs); a bad definition is
   * `INVALID_ARGUMENT` on `definition`.
   */
  async registerWorkflow(definition: string | object, format: 'json' | 'toml' = 'json'): Promise<RegisteredWorkflow> {
    const text = typeof definition === 'string' ? definition : JSON.stringify(definition);
    const res = await this.connection.unary('registerWorkflow', RegisterWorkflowRequest.create({ definition: text, format }));
    return { name: res.name, version: res.version, created: res.created };
  }

  /** The registered workflow definitions (latest version of each). */
  async listWorkflows(): Promise<WorkflowInfo[]> {
    const res = await this.connection.unary('listWorkflows', ListWorkflowsRequest.create({}));
    return res.workflows.map((w) => {
      let definition: unknown = w.definitionJson;
      try {
        definition = JSON.parse(w.definitionJson);
      } catch {
        // Kept as text.
      }
      return { name: w.name, version: w.version, definition };
    });
  }
}

/** A helper's options must not carry another kind's target. */
function rejectTargets(options: object, helper: string, keys: ('temporal' | 'n8n')[]): void {
  for (const key of keys) {
    if ((options as Record<string, unknown>)[key] !== undefined) {
      throw SwitchyardError.invalidArgument(`options.${key}`, `${helper} does not take ${key}: use scheduleTask, or the helper of that kind`);
    }
  }
}
