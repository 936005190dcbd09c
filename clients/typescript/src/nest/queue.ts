/**
 * The Nest idioms of `@nestjs/bullmq`, on Switchyard:
 *
 * - `SwitchyardModule.registerQueue({ name, defaults })` and
 *   `@InjectSwitchyardQueue(name)` give a {@link SwitchyardQueue}, a
 *   scheduler bound to one queue (`add(jobName, data, opts)` as BullMQ's
 *   `queue.add`);
 * - `@Processor(name)` on a class with `process(job)` handles that queue's
 *   tasks (next to `@TaskHandler` methods), and `@OnTaskEvent('completed' |
 *   'failed' | 'progress' | 'active' | 'cancelled')` methods of the class hear
 *   about its tasks.
 *
 * A queue is a Switchyard task name: `add(jobName, data)` schedules a SIMPLE
 * task named after the queue (`queue` set to it, so the BullMQ backend uses a
 * BullMQ queue of that name), with the job name in the `job` label; the
 * processor registers the queue's name with the worker.
 */
import { Inject, SetMetadata } from '@nestjs/common';

import type { StandardizedOrchestratorService, KindOptions } from '../orchestrator.service.js';
import type { BulkResult, ScheduleResult } from '../types.js';
import type { TaskContext } from '../worker/context.js';

/** What `registerQueue` takes. */
export interface RegisterQueueOptions {
  /** The queue: the task name its tasks are scheduled under, and the BullMQ queue on the BullMQ backend. */
  name: string;
  /** Options applied to every task of this queue unless the call says otherwise. */
  defaults?: KindOptions;
}

/** The injection token of a queue's {@link SwitchyardQueue}. */
export function getSwitchyardQueueToken(name: string): string {
  return `SwitchyardQueue:${name}`;
}

/** Injects the {@link SwitchyardQueue} of `SwitchyardModule.registerQueue({ name })`. */
export function InjectSwitchyardQueue(name: string): ParameterDecorator & PropertyDecorator {
  return Inject(getSwitchyardQueueToken(name)) as ParameterDecorator & PropertyDecorator;
}

/** The label that carries `add`'s job name. */
export const JOB_NAME_LABEL = 'job';

/** A scheduler bound to one queue. */
export class SwitchyardQueue {
  constructor(
    /** The queue's name. */
    readonly name: string,
    private readonly orchestrator: StandardizedOrchestratorService,
    /** Applied to every task of this queue unless the call says otherwise. */
    readonly defaults: KindOptions = {},
  ) {}

  /**
   * Schedules a task on this queue, as BullMQ's `queue.add(jobName, data,
   * opts)`: BullMQ's job options are accepted as `scheduleTask` takes them.
   * Resolves with the whole result (`taskId`, `existing`, `status`, `task`).
   */
  add(jobName: string, data: unknown, options: KindOptions = {}): Promise<ScheduleResult> {
    const labels = { ...this.defaults.labels, ...options.labels, [JOB_NAME_LABEL]: jobName };
    return this.orchestrator.scheduleTask(this.name, data, { ...this.defaults, ...options, labels, queue: this.name, taskType: 'SIMPLE' });
  }

  /**
   * Schedules many jobs on this queue in one call, as BullMQ's
   * `queue.addBulk([{ name, data, opts }])`: each as `add` would (the job
   * name in the `job` label), stored together in one group commit, and on
   * the BullMQ backend added to Redis together. Up to 1,000 per call.
   * Unlike BullMQ's, a refused job does not fail the others: one
   * {@link BulkResult} per job, in order (`ok`, `taskId`, or `error`).
   */
  addBulk(jobs: readonly { name: string; data: unknown; opts?: KindOptions }[]): Promise<BulkResult[]> {
    return this.orchestrator.scheduleTasks(
      jobs.map((j) => {
        const options = j.opts ?? {};
        const labels = { ...this.defaults.labels, ...options.labels, [JOB_NAME_LABEL]: j.name };
        return { name: this.name, payload: j.data, options: { ...this.defaults, ...options, labels, queue: this.name, taskType: 'SIMPLE' as const } };
      }),
    );
  }

  /** `add` that resolves with the task id only. */
  async schedule(jobName: string, data: unknown, options: KindOptions = {}): Promise<string> {
    return (await this.add(jobName, data, options)).taskId;
  }

  /** A handle on one of its tasks. */
  getHandle(taskId: string) {
    return this.orchestrator.getHandle(taskId);
  }
}

/** Metadata key of `@Processor`. */
export const PROCESSOR_METADATA = 'switchyard:processor';
/** Metadata key of `@OnTaskEvent`. */
export const ON_TASK_EVENT_METADATA = 'switchyard:on-task-event';

/** Options of `@Processor`. */
export interface ProcessorOptions {
  /** Tasks of this queue at once, on a worker stream of their own. Default: the module's shared slots. */
  concurrency?: number;
  /** With `concurrency`: slots for immediate tasks. Default 1. */
  immediateSlots?: number;
}

/** What `@Processor` stores. */
export interface ProcessorMetadata extends ProcessorOptions {
  name: string;
}

/**
 * Marks a provider class as the processor of a queue (a task name): its
 * `process(job)` runs each task, as `@nestjs/bullmq`'s `WorkerHost.process`.
 * Add the class to a module's providers.
 */
export function Processor(name: string, options: ProcessorOptions = {}): ClassDecorator {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError('@Processor needs a queue name');
  }
  return SetMetadata<string, ProcessorMetadata>(PROCESSOR_METADATA, { ...options, name }) as ClassDecorator;
}

/** The events `@OnTaskEvent` methods hear, with their arguments. */
export type TaskEventName = 'active' | 'progress' | 'completed' | 'failed' | 'cancelled';

/**
 * Calls the decorated method of a `@Processor` class when one of its tasks
 * starts (`active`, `(job)`), reports progress (`progress`, `(job, progress)`),
 * completes (`completed`, `(job, result)`), fails (`failed`, `(job, error)`)
 * or is cancelled (`cancelled`, `(job, error)`), in this process. A listener
 * that throws is logged, not propagated.
 */
export function OnTaskEvent(event: TaskEventName): MethodDecorator {
  return SetMetadata<string, TaskEventName>(ON_TASK_EVENT_METADATA, event) as MethodDecorator;
}

/** What a processor's `process(job)` gets: BullMQ's `Job` names over a Switchyard task. */
export class SwitchyardJob<T = any> {
  /** The task id. */
  readonly id: string;
  /** The job name given to `add` (else the queue's name). */
  readonly name: string;
  /** The queue. */
  readonly queueName: string;
  /** The payload. */
  readonly data: T;
  /** Attempts made before this one. */
  readonly attemptsMade: number;
  /** The worker's context (progress, logs, deadline, labels). */
  readonly context: TaskContext;
  /** Fires when the task is cancelled. */
  readonly signal: AbortSignal;
  /** The last progress reported. */
  progress = 0;

  constructor(
    data: T,
    context: TaskContext,
    private readonly onProgress: (job: SwitchyardJob<T>, progress: number) => void,
  ) {
    this.id = context.taskId;
    this.queueName = context.name;
    this.name = context.labels[JOB_NAME_LABEL] ?? context.name;
    this.data = data;
    this.attemptsMade = Math.max(0, context.attempt - 1);
    this.context = context;
    this.signal = context.signal;
  }

  /** Reports progress (0..100), as BullMQ's `job.updateProgress`. */
  async updateProgress(progress: number | object, message?: string): Promise<void> {
    const value = typeof progress === 'number' ? progress : 0;
    this.progress = value;
    this.context.progress(value, message);
    this.onProgress(this, value);
  }

  /** Adds a line to the task's log, as BullMQ's `job.log`. */
  async log(message: string): Promise<void> {
    this.context.log('info', message);
  }
}
