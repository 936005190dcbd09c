/**
 * `watchTasks` as an RxJS Observable that survives reconnects.
 *
 * The client keeps the last sequence number it has seen (from events, and
 * from `live`, which also covers events the filter skipped). When the stream
 * breaks with a transient error, or ends because the server drained, it
 * reconnects with backoff and asks the server to replay what came after that
 * sequence (`after_sequence`). When the server no longer keeps those events
 * one by one it says so with a gap, which is passed on as a `gap` item before
 * the snapshots that replace the lost events.
 */
import { Observable } from 'rxjs';

import type { ClientReadableStream } from '@grpc/grpc-js';

import type { SwitchyardConnection } from './connection.js';
import { eventKindName, toPbFilter, toTaskInfo } from './convert.js';
import { SwitchyardError, type GrpcCodeName } from './errors.js';
import { WatchTasksRequest, type WatchTasksResponse } from './gen/switchyard/v1/orchestrator.js';
import type { TaskFilter, TaskWatchItem, WatchOptions } from './types.js';

/** Codes that end the Observable instead of reconnecting: a retry would get the same answer. */
const PERMANENT: ReadonlySet<GrpcCodeName> = new Set<GrpcCodeName>([
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'FAILED_PRECONDITION',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'UNAUTHENTICATED',
  'DATA_LOSS',
]);

/**
 * A watch: an RxJS Observable that is also an async iterable, so both
 * `watch.subscribe(...)` and `for await (const item of watch)` work. Each
 * subscription (and each `for await`) opens its own stream; leaving the loop
 * (`break`, `return`, a throw) closes it.
 */
export type WatchStream<T> = Observable<T> & AsyncIterable<T>;

/** Makes an Observable async-iterable (see {@link WatchStream}). */
export function asWatchStream<T>(source: Observable<T>): WatchStream<T> {
  const stream = source as WatchStream<T>;
  stream[Symbol.asyncIterator] = function iterate(): AsyncIterator<T> {
    const queue: T[] = [];
    let failure: { error: unknown } | undefined;
    let ended = false;
    let wake: (() => void) | undefined;
    const notify = (): void => {
      wake?.();
      wake = undefined;
    };
    const sub = source.subscribe({
      next: (v) => {
        queue.push(v);
        notify();
      },
      error: (error: unknown) => {
        failure = { error };
        notify();
      },
      complete: () => {
        ended = true;
        notify();
      },
    });
    const finish = (): IteratorResult<T> => {
      sub.unsubscribe();
      ended = true;
      return { value: undefined as never, done: true };
    };
    return {
      async next(): Promise<IteratorResult<T>> {
        for (;;) {
          if (queue.length > 0) {
            return { value: queue.shift() as T, done: false };
          }
          if (failure) {
            const { error } = failure;
            failure = undefined;
            finish();
            throw error;
          }
          if (ended) {
            return finish();
          }
          await new Promise<void>((resolve) => (wake = resolve));
        }
      },
      async return(): Promise<IteratorResult<T>> {
        return finish();
      },
    };
  };
  return stream;
}

/** The watch Observable. See `StandardizedOrchestratorService.watchTasks`. */
export function watchTasks(conn: SwitchyardConnection, filter: TaskFilter = {}, options: WatchOptions = {}): WatchStream<TaskWatchItem> {
  return asWatchStream(new Observable<TaskWatchItem>((subscriber) => {
    const pbFilter = toPbFilter(filter);
    const reconnect = options.reconnect ?? true;
    const policy = typeof reconnect === 'object' ? reconnect : {};
    const initialDelay = policy.initialDelayMs ?? 100;
    const maxDelay = policy.maxDelayMs ?? 5_000;
    const maxAttempts = reconnect === false ? 0 : (policy.maxAttempts ?? Number.POSITIVE_INFINITY);

    let lastSeq = options.afterSequence ?? 0;
    let streams = 0;
    let failures = 0;
    let call: ClientReadableStream<WatchTasksResponse> | undefined;
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;

    const open = (): void => {
      const resumed = streams > 0;
      streams += 1;
      const afterSequence = lastSeq;
      const request = WatchTasksRequest.create({
        filter: pbFilter,
        afterSequence,
        includeSnapshot: afterSequence === 0 && (options.includeSnapshot ?? false),
      });
      let done = false;
      const current = conn.serverStream('watchTasks', request);
      call = current;
      current.on('data', (res: WatchTasksResponse) => {
        if (stopped || done) {
          return;
        }
        if (res.event) {
          const ev = res.event;
          lastSeq = Math.max(lastSeq, ev.sequence);
          if (ev.status) {
            subscriber.next({ type: 'event', sequence: ev.sequence, kind: eventKindName(ev.kind), time: ev.time, task: toTaskInfo(ev.status) });
          }
        } else if (res.gap) {
          subscriber.next({ type: 'gap', afterSequence, oldestKept: res.gap.oldestKept });
        } else if (res.live) {
          failures = 0;
          lastSeq = Math.max(lastSeq, res.live.sequence);
          subscriber.next({ type: 'live', sequence: lastSeq, resumed });
        }
      });
      const finish = (err: SwitchyardError): void => {
        if (done) {
          return;
        }
        done = true;
        if (stopped) {
          return;
        }
        if (PERMANENT.has(err.code) || failures >= maxAttempts) {
          stopped = true;
          subscriber.error(err);
          return;
        }
        failures += 1;
        const exp = Math.min(maxDelay, initialDelay * 2 ** (failures - 1));
        const delayMs = Math.round(exp / 2 + Math.random() * (exp / 2));
        subscriber.next({ type: 'reconnecting', attempt: failures, delayMs, afterSequence: lastSeq, error: err });
        timer = setTimeout(open, delayMs);
      };
      current.on('error', (err: unknown) => finish(SwitchyardError.from(err, 'WatchTasks')));
      // An OK end: the server drained or restarted. Resume like after an error.
      current.on('end', () => finish(new SwitchyardError({ code: 'UNAVAILABLE', details: 'the server ended the watch stream', method: 'WatchTasks' })));
    };

    try {
      open();
    } catch (err) {
      subscriber.error(SwitchyardError.from(err, 'WatchTasks'));
    }
    return () => {
      stopped = true;
      if (timer) {
        clearTimeout(timer);
      }
      call?.cancel();
    };
  }));
}
