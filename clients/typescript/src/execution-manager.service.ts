/**
 * `ExecutionManagerService`: the original design's execution manager, with
 * `submit` and `disconnect`.
 *
 * It owns one session: `defaults.sessionId` if configured, otherwise an id
 * made when the service is created (`exec-<uuid>`), so one per process when
 * NestJS provides it. Every task it submits carries that session id (unless
 * the call names another), and `disconnect()` cancels the session's active
 * tasks, which is what the original design does on server stop. To cancel
 * what a user started (on logout), pass `disconnect({ userId })`.
 */
import { randomUUID } from 'node:crypto';

import type { KindOptions, StandardizedOrchestratorService } from './orchestrator.service.js';
import type { DisconnectReceipt, DisconnectTarget, ScheduleResult, TaskType, TaskTypeName } from './types.js';

/** Options of `submit`: the original design's names, plus any `scheduleTask` option. */
export interface SubmitOptions extends KindOptions {
  /** The owner (`disconnect({ userId })` stops the task). */
  userId?: string;
  /** -1000..1000, higher first. */
  priority?: number;
  /** Run on the immediate lane: reserved capacity, never behind long jobs (reads, quick CRUD). */
  isImmediate?: boolean;
  /** Default SIMPLE. */
  taskType?: TaskType | TaskTypeName;
}

export class ExecutionManagerService {
  /** The session this manager tags its tasks with, and that `disconnect()` stops. */
  readonly sessionId: string;

  constructor(
    private readonly orchestrator: StandardizedOrchestratorService,
    sessionId?: string,
  ) {
    this.sessionId = sessionId || orchestrator.defaults.sessionId || `exec-${randomUUID()}`;
  }

  /**
   * Submits work for execution: a SIMPLE task (unless `taskType` says
   * otherwise) in this manager's session. `isImmediate` puts it on the
   * immediate lane.
   */
  submit(name: string, payload: unknown, options: SubmitOptions = {}): Promise<ScheduleResult> {
    const { isImmediate, taskType, ...rest } = options;
    return this.orchestrator.scheduleTask(name, payload, {
      ...rest,
      taskType: taskType ?? 'SIMPLE',
      immediate: isImmediate ?? rest.immediate ?? false,
      sessionId: rest.sessionId ?? this.sessionId,
    });
  }

  /**
   * Cancels the active tasks of this manager's session (no argument), or of
   * the given user or session. Resolves with a receipt per task: CANCELLED,
   * CANCEL_REQUESTED (running; its worker was told) or ALREADY_FINISHED.
   */
  disconnect(target?: DisconnectTarget): Promise<DisconnectReceipt[]> {
    return this.orchestrator.disconnect(target ?? { sessionId: this.sessionId });
  }
}
