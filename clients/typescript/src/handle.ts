/**
 * `TaskHandle`: one task, the way `@temporalio/client`'s workflow handle and
 * BullMQ's `Job` are used: `describe()`, `result()` (awaits the end and
 * throws a typed error when the task did not complete), `cancel()` and
 * `signal()`. Get one with `orchestrator.getHandle(taskId)`; it holds only
 * the id.
 */
import type { CancelOptions, StandardizedOrchestratorService } from './orchestrator.service.js';
import type { CancelResult, TaskInfo, TaskLogs } from './types.js';

/** `handle.result()` found the task FAILED, CANCELLED or COMPENSATED instead of COMPLETED. */
export class TaskFailedError extends Error {
  override readonly name: string = 'TaskFailedError';
  /** The task id. */
  readonly taskId: string;
  /** The final status: FAILED, CANCELLED or COMPENSATED. */
  readonly status: TaskInfo['status'];
  /** The last error's kind (`TimeoutError`, `PaymentDeclined`, `lease_expired`...), if any. */
  readonly kind: string | undefined;
  /** The task as it ended. */
  readonly task: TaskInfo;

  constructor(task: TaskInfo) {
    const why = task.lastError?.message ?? (task.status === 'CANCELLED' ? 'cancelled' : 'no error recorded');
    super(`task ${task.id} (${task.name}) ended ${task.status}: ${why}`);
    this.taskId = task.id;
    this.status = task.status;
    this.kind = task.lastError?.kind || undefined;
    this.task = task;
  }
}

export class TaskHandle<R = unknown> {
  constructor(
    private readonly orchestrator: StandardizedOrchestratorService,
    /** The task id. */
    readonly id: string,
  ) {}

  /** The task's status now (`getTaskStatus`). */
  describe(): Promise<TaskInfo> {
    return this.orchestrator.getTaskStatus(this.id);
  }

  /**
   * Waits for the task to end and resolves with its result when it
   * COMPLETED; rejects with {@link TaskFailedError} when it ended FAILED,
   * CANCELLED or COMPENSATED, and with `DEADLINE_EXCEEDED` after `timeoutMs`.
   */
  async result(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<R> {
    const task = await this.orchestrator.waitForTask(this.id, options);
    if (task.status !== 'COMPLETED') {
      throw new TaskFailedError(task);
    }
    return task.result as R;
  }

  /** `cancelTask`: `true` once the task is cancelled (see there). */
  cancel(options?: CancelOptions): Promise<boolean> {
    return this.orchestrator.cancelTask(this.id, options);
  }

  /** `cancelTaskWithOutcome`: what the server did, at once. */
  cancelWithOutcome(options?: CancelOptions): Promise<CancelResult> {
    return this.orchestrator.cancelTaskWithOutcome(this.id, options);
  }

  /** Runs the ended task again under its id (`retryTask`). */
  retry(options: { reason?: string } = {}): Promise<TaskInfo> {
    return this.orchestrator.retryTask(this.id, options);
  }

  /** Delivers a named signal to the running workflow (`signalTask`). */
  signal(name: string, payload: unknown = {}): Promise<TaskInfo> {
    return this.orchestrator.signalTask(this.id, name, payload);
  }

  /** The task's log (`getTaskLogs`). */
  logs(page?: { afterLine?: number; limit?: number }): Promise<TaskLogs> {
    return this.orchestrator.getTaskLogs(this.id, page);
  }
}
