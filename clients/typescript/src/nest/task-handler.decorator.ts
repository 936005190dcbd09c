/**
 * `@TaskHandler('name', { concurrency })`: marks a method of a NestJS provider
 * as the handler of a task name. `SwitchyardModule` finds the methods when
 * the application boots and runs them in a worker.
 */
import { SetMetadata } from '@nestjs/common';

/** The metadata key the decorator sets on the method. */
export const TASK_HANDLER_METADATA = 'switchyard:task-handler';

/** Options of `@TaskHandler`. */
export interface TaskHandlerOptions {
  /**
   * Tasks of this name run at most this many at once (1 to 10 000), on a
   * worker stream of their own. Default: share the module's
   * `worker.concurrency` slots with the other handlers that set none.
   */
  concurrency?: number;
  /** With `concurrency`: extra slots for immediate tasks on that stream. Default 1. */
  immediateSlots?: number;
}

/** What the decorator stores. */
export interface TaskHandlerMetadata extends TaskHandlerOptions {
  name: string;
}

/**
 * Handles tasks named `name` with the decorated method, called as
 * `method(payload, ctx)` on the provider instance. It returns the result (any
 * JSON value, or a Promise of one); throwing fails the attempt (retryable
 * unless the error is a `NonRetryableError`); `ctx.signal` fires when the task
 * is cancelled or its owner disconnected.
 *
 * ```ts
 * @Injectable()
 * export class EmailHandlers {
 *   @TaskHandler('send-email', { concurrency: 5 })
 *   async send(payload: { to: string }, ctx: TaskContext) {
 *     ctx.progress(50, 'sending');
 *     return { delivered: true };
 *   }
 * }
 * ```
 */
export function TaskHandler(name: string, options: TaskHandlerOptions = {}): MethodDecorator {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError('@TaskHandler needs a task name');
  }
  return SetMetadata<string, TaskHandlerMetadata>(TASK_HANDLER_METADATA, { ...options, name }) as MethodDecorator;
}
