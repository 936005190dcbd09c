/**
 * withSwitchyardCancellation against the real thing: Switchyard with its
 * BullMQ backend on the real Redis (`REDIS_URL`, default
 * redis://127.0.0.1:6379) under a key prefix of each test's own, and a real
 * BullMQ 5 Worker in this process. Tasks are scheduled and cancelled through
 * the TypeScript client.
 *
 * Without Redis these tests skip with a message, except when `CI=true`:
 * there they fail.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';

import {
  SwitchyardCancelledError,
  SwitchyardClient,
  switchyardCancelChannel,
  switchyardCancelMarker,
  withSwitchyardCancellation,
} from '../src/core.js';
import { signal, startServer, until, type TestServer } from './helpers/server.js';

const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const QUEUE = 'ts-bullmq';

/** Whether Redis answers; under CI a missing Redis fails the suite instead. */
async function redisAvailable(): Promise<boolean> {
  const probe = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2_000 });
  probe.on('error', () => undefined);
  try {
    await probe.connect();
    return (await probe.ping()) === 'PONG';
  } catch (err) {
    if (process.env.CI === 'true') {
      throw new Error(`the BullMQ tests need Redis at ${REDIS_URL}`, { cause: err });
    }
    return false;
  } finally {
    probe.disconnect();
  }
}

const haveRedis = await redisAvailable();
if (!haveRedis) {
  console.warn(`skipping the BullMQ tests: no Redis at ${REDIS_URL}`);
}

/** A Switchyard server routing QUEUE to BullMQ under `prefix`. */
function bullmqServer(prefix: string): Promise<TestServer> {
  return startServer({
    env: {
      SWITCHYARD_BULLMQ__ENABLED: 'true',
      SWITCHYARD_BULLMQ__URL: REDIS_URL,
      SWITCHYARD_BULLMQ__PREFIX: prefix,
      SWITCHYARD_BULLMQ__QUEUES: JSON.stringify([QUEUE]),
    },
  });
}

describe('withSwitchyardCancellation with Switchyard’s BullMQ backend', { timeout: 120_000, skip: !haveRedis }, () => {
  const prefix = `sytest-ts-${randomUUID()}`;
  let server: TestServer;
  let client: SwitchyardClient;
  let redis: Redis;

  before(async () => {
    redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
    server = await bullmqServer(prefix);
    client = new SwitchyardClient({ url: server.url });
    await client.waitForServing();
  });

  after(async () => {
    await client?.close();
    await server?.stop();
    if (redis) {
      const keys = await redis.keys(`${prefix}:*`);
      for (let i = 0; i < keys.length; i += 500) {
        await redis.del(...keys.slice(i, i + 500));
      }
      redis.disconnect();
    }
  });

  const status = async (id: string): Promise<string> => (await client.orchestrator.getTaskStatus(id)).status;

  it('aborts the running job’s signal when its task is cancelled, and only that job’s', async () => {
    const started = new Map<string, AbortSignal>();
    const aborted = new Map<string, { at: number; reason: unknown }>();
    const finishOthers = signal();
    const failures: { id: string | undefined; err: Error }[] = [];
    // No queue and no prefix given: both come from the job.
    const processor = withSwitchyardCancellation(
      async (job: Job<{ wait: boolean }>, _token, sig) => {
        started.set(job.id as string, sig);
        return new Promise<string>((resolve, reject) => {
          sig.addEventListener(
            'abort',
            () => {
              aborted.set(job.id as string, { at: Date.now(), reason: sig.reason });
              reject(sig.reason);
            },
            { once: true },
          );
          void finishOthers.promise.then(() => resolve('finished'));
        });
      },
      { connection: REDIS_URL, logger: false },
    );
    // The jobs wait in Redis, followed by Switchyard, before a worker takes them.
    const victim = await client.orchestrator.scheduleTask(QUEUE, { wait: true }, { attempts: 3 });
    const bystander = await client.orchestrator.scheduleTask(QUEUE, { wait: true });
    for (const t of [victim, bystander]) {
      await until(
        async () => {
          const info = await client.orchestrator.getTaskStatus(t.taskId);
          return info.status === 'PENDING' && info.externalId === t.taskId;
        },
        'the job to wait in BullMQ',
        20_000,
      );
    }
    const worker = new Worker(QUEUE, processor, {
      connection: { url: REDIS_URL, maxRetriesPerRequest: null },
      prefix,
      concurrency: 2,
    });
    worker.on('failed', (job, err) => failures.push({ id: job?.id, err }));
    try {
      // Three attempts for the victim: a cancelled job must still not be retried.
      await until(() => started.has(victim.taskId) && started.has(bystander.taskId), 'both jobs to start', 20_000);
      await until(async () => (await status(victim.taskId)) === 'RUNNING', 'the task to be RUNNING', 20_000);
      // One subscriber for both jobs.
      const [, subscribers] = (await redis.pubsub('NUMSUB', switchyardCancelChannel(prefix, QUEUE))) as [string, number];
      assert.equal(Number(subscribers), 1);

      const cancelAt = Date.now();
      const outcome = await client.orchestrator.cancelTaskWithOutcome(victim.taskId, { reason: 'test' });
      // CancelTask waits briefly for the backend to settle: a processor that
      // stops at once can already be CANCELLED in the answer.
      assert.ok(['CANCEL_REQUESTED', 'CANCELLED'].includes(outcome.outcome), outcome.outcome);
      await until(() => aborted.has(victim.taskId), 'the processor’s signal to fire', 5_000);
      const seen = aborted.get(victim.taskId)!;
      assert.ok(seen.at - cancelAt < 2_000, `aborted ${seen.at - cancelAt} ms after CancelTask`);
      assert.ok(seen.reason instanceof SwitchyardCancelledError, String(seen.reason));
      assert.equal(seen.reason.taskId, victim.taskId);
      assert.equal(seen.reason.queue, QUEUE);
      assert.equal(seen.reason.via, 'message');
      assert.equal(started.get(bystander.taskId)?.aborted, false, 'the other job runs on');

      const done = await client.orchestrator.waitForTask(victim.taskId, { timeoutMs: 20_000 });
      assert.equal(done.status, 'CANCELLED');
      const failure = failures.find((f) => f.id === victim.taskId);
      assert.equal(failure?.err.name, 'UnrecoverableError', 'BullMQ must not retry it');
      assert.ok(failure?.err.cause instanceof SwitchyardCancelledError);
      assert.equal(failures.length, 1);

      finishOthers.resolve();
      const other = await client.orchestrator.waitForTask(bystander.taskId, { timeoutMs: 20_000 });
      assert.equal(other.status, 'COMPLETED');
      assert.deepEqual(other.result, 'finished');
      assert.equal(aborted.size, 1);
    } finally {
      finishOthers.resolve();
      await worker.close(true);
      await processor.close();
    }
    const [, left] = (await redis.pubsub('NUMSUB', switchyardCancelChannel(prefix, QUEUE))) as [string, number];
    assert.equal(Number(left), 0, 'close() releases the subscriber');
  });

  it('fails a job at once when its cancel came before the processor started (the marker)', async () => {
    // A worker that fetches by hand: BullMQ moves the job to active, as a
    // worker does before it calls the processor, and the processor has not
    // run when Switchyard's cancel is published, so nobody hears the message.
    const worker = new Worker(QUEUE, null, {
      connection: { url: REDIS_URL, maxRetriesPerRequest: null },
      prefix,
      autorun: false,
    });
    let ran = false;
    const processor = withSwitchyardCancellation(
      async () => {
        ran = true;
        return 'should not run';
      },
      { connection: redis, prefix, queue: QUEUE, logger: false },
    );
    try {
      await worker.waitUntilReady();
      const task = await client.orchestrator.scheduleTask(QUEUE, { wait: true }, { attempts: 3 });
      const token = randomUUID();
      let job: Job | undefined;
      await until(
        async () => {
          job = await worker.getNextJob(token, { block: false });
          return job !== undefined;
        },
        'the job to be fetched',
        20_000,
      );
      assert.equal(job!.id, task.taskId);
      await until(async () => (await status(task.taskId)) === 'RUNNING', 'the task to be RUNNING', 20_000);
      const outcome = await client.orchestrator.cancelTaskWithOutcome(task.taskId);
      assert.equal(outcome.outcome, 'CANCEL_REQUESTED');
      await until(async () => (await redis.exists(switchyardCancelMarker(prefix, QUEUE, task.taskId))) === 1, 'the cancel marker');

      // Now the processor starts, as BullMQ's worker would call it.
      const err = await processor(job!, token).then(
        () => assert.fail('the cancelled job ran'),
        (e: Error) => e,
      );
      assert.equal(ran, false, 'the processor is not called for a job cancelled before it started');
      assert.equal(err.name, 'UnrecoverableError');
      assert.ok(err.cause instanceof SwitchyardCancelledError, String(err.cause));
      assert.equal(err.cause.via, 'marker');
      assert.equal(err.cause.taskId, task.taskId);
      await job!.moveToFailed(err, token);

      const done = await client.orchestrator.waitForTask(task.taskId, { timeoutMs: 20_000 });
      assert.equal(done.status, 'CANCELLED');
    } finally {
      await worker.close(true);
      await processor.close();
    }
    assert.equal(redis.status, 'ready', 'close() leaves a connection it was given open');
  });

  it('forwards BullMQ’s own signal (worker.cancelJob) and leaves retries to BullMQ', async () => {
    const started = signal<string>();
    const reasons: unknown[] = [];
    const processor = withSwitchyardCancellation(
      async (job: Job, _token, sig) => {
        if (job.attemptsMade > 0) {
          return 'second attempt';
        }
        started.resolve(job.id as string);
        await new Promise((_, reject) =>
          sig.addEventListener('abort', () => {
            reasons.push(sig.reason);
            reject(new Error(`stopped: ${String(sig.reason)}`));
          }),
        );
      },
      { connection: { host: new URL(REDIS_URL).hostname, port: Number(new URL(REDIS_URL).port || 6379) }, logger: false },
    );
    const worker = new Worker(QUEUE, processor, { connection: { url: REDIS_URL, maxRetriesPerRequest: null }, prefix });
    try {
      await worker.waitUntilReady();
      const task = await client.orchestrator.scheduleTask(QUEUE, {}, { attempts: 2, backoff: { type: 'fixed', delay: 10 } });
      const id = await started.promise;
      assert.equal(id, task.taskId);
      assert.equal(worker.cancelJob(id, 'local reason'), true);
      const done = await client.orchestrator.waitForTask(task.taskId, { timeoutMs: 20_000 });
      assert.equal(done.status, 'COMPLETED', 'BullMQ retried the job: its own cancel is not Switchyard’s');
      assert.deepEqual(done.result, 'second attempt');
      assert.deepEqual(reasons, ['local reason']);
    } finally {
      await worker.close(true);
      await processor.close();
    }
  });
});
