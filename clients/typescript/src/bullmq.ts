/**
 * An opt-in BullMQ processor wrapper that honours Switchyard cancel requests
 * for active jobs: the seam only, not a working feature yet.
 *
 * Open-source BullMQ cannot stop an active job from another process. When
 * Switchyard's BullMQ backend (issue 5, "SIMPLE tasks on real BullMQ") is
 * asked to cancel an active job, it answers CANCEL_REQUESTED and publishes
 * the request on a Redis Pub/Sub channel; this wrapper is the Node half that
 * subscribes to that channel and fires the job's AbortSignal.
 *
 * TODO(issue 5): the backend has not landed, so the channel's name and the
 * message format are not defined yet. When they are:
 * - subscribe once per wrapper (a duplicated ioredis connection in subscriber
 *   mode, from `options.connection`) to `options.channel`;
 * - parse each message (expected: the BullMQ job id, which is the Switchyard
 *   task id, and the queue) and abort the matching active job's controller;
 * - run `processor(job, token, signal)`; a throw after the abort is what the
 *   backend reads as "cancelled" (it must then mark the task CANCELLED);
 * - unsubscribe when the worker closes.
 * Until then the wrapper refuses to run instead of pretending to cancel.
 */

/** The part of a BullMQ `Job` the wrapper needs. */
export interface BullJobLike {
  /** The job id: Switchyard uses the task id. */
  id?: string;
  name: string;
  queueName?: string;
  data: unknown;
}

/** A BullMQ processor that also gets an AbortSignal. */
export type CancellableProcessor<J extends BullJobLike = BullJobLike, R = unknown> = (
  job: J,
  token: string | undefined,
  signal: AbortSignal,
) => Promise<R>;

/** Options of {@link withSwitchyardCancellation}. */
export interface SwitchyardCancellationOptions {
  /**
   * The Redis connection to subscribe with: an ioredis instance (duplicated
   * for subscriber mode) or ioredis options, as BullMQ takes them.
   */
  connection: unknown;
  /**
   * The Pub/Sub channel the Switchyard BullMQ backend publishes cancel
   * requests on. Its name is defined by the backend's configuration (issue 5).
   */
  channel: string;
}

/** Thrown by {@link withSwitchyardCancellation} until the backend half exists. */
export class NotAvailableError extends Error {
  override name = 'NotAvailableError';
}

/**
 * Wraps a BullMQ processor so that a Switchyard cancel of an active job fires
 * `signal`:
 *
 * ```ts
 * new Worker('emails', withSwitchyardCancellation(async (job, token, signal) => {
 *   await send(job.data, { signal });
 * }, { connection, channel: 'bull:switchyard:cancel' }), { connection });
 * ```
 *
 * Not available yet: it throws {@link NotAvailableError} (see the module
 * comment) rather than returning a processor that would never be cancelled.
 */
export function withSwitchyardCancellation<J extends BullJobLike, R>(
  processor: CancellableProcessor<J, R>,
  options: SwitchyardCancellationOptions,
): (job: J, token?: string) => Promise<R> {
  void processor;
  void options;
  throw new NotAvailableError(
    'withSwitchyardCancellation needs the Switchyard BullMQ backend, which publishes the cancel requests; it has not landed yet. ' +
      'Cancel requests for active BullMQ jobs are answered CANCEL_REQUESTED and not honoured until it does.',
  );
}
