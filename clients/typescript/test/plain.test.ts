/**
 * The plain API (no NestJS) against the real server: SwitchyardClient,
 * createWorker with per-handler concurrency, graceful drain, and a worker
 * that survives a server restart.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardError, createWorker, type TaskContext, type TaskOutcomeEvent } from '../src/core.js';
import { signal, startServer, until, type TestServer } from './helpers/server.js';

describe('SwitchyardClient and createWorker, without NestJS', { timeout: 120_000 }, () => {
  let server: TestServer;
  let client: SwitchyardClient;

  before(async () => {
    server = await startServer();
    client = new SwitchyardClient({ url: server.url });
    await client.waitForServing();
  });

  after(async () => {
    await client?.close();
    await server?.stop();
  });

  it('runs handlers by name, honouring each handler’s concurrency', async () => {
    let inFlight = 0;
    let peak = 0;
    const release = signal();
    const worker = createWorker({
      url: server.url,
      logger: false,
      handlers: {
        'plain.add': (p: { a: number; b: number }) => ({ sum: p.a + p.b }),
        'plain.narrow': {
          concurrency: 2,
          handler: async () => {
            inFlight += 1;
            peak = Math.max(peak, inFlight);
            await release.promise;
            inFlight -= 1;
            return 'ok';
          },
        },
      },
    });
    try {
      const ids = await worker.waitUntilRegistered();
      assert.equal(ids.length, 2, 'one stream for the shared handlers, one for plain.narrow');

      const sum = await client.orchestrator.scheduleTask('plain.add', { a: 2, b: 3 });
      assert.deepEqual((await client.orchestrator.waitForTask(sum.taskId, { timeoutMs: 10_000 })).result, { sum: 5 });

      const narrow = await Promise.all([1, 2, 3, 4, 5].map(() => client.orchestrator.scheduleTask('plain.narrow', {})));
      await until(() => inFlight === 2, 'two narrow tasks running');
      const waiting = await client.orchestrator.listTasks({ names: ['plain.narrow'], statuses: ['PENDING'] });
      assert.equal(waiting.tasks.length, 3, 'the server holds the rest back');
      release.resolve();
      for (const t of narrow) {
        assert.equal((await client.orchestrator.waitForTask(t.taskId, { timeoutMs: 10_000 })).status, 'COMPLETED');
      }
      assert.equal(peak, 2);
    } finally {
      await worker.close();
    }
  });

  it('scheduleTasks: one result per task in order, bad ones refused on their own, the rest run', async () => {
    const worker = createWorker({ url: server.url, logger: false, handlers: { 'plain.bulk': (p: { n: number }) => ({ n: p.n }) } });
    try {
      await worker.waitUntilRegistered();
      const tasks = Array.from({ length: 50 }, (_, n) => ({ name: 'plain.bulk', payload: { n } as unknown, options: {} as { attempts?: number } }));
      tasks[3] = { name: 'plain bulk', payload: { n: 3 }, options: {} };
      tasks[7] = { name: 'plain.bulk', payload: { n: 7 }, options: { attempts: 101 } };
      const results = await client.orchestrator.scheduleTasks(tasks);
      assert.equal(results.length, 50);
      results.forEach((r, i) => assert.equal(r.index, i));
      const refused = results.filter((r) => !r.ok);
      assert.deepEqual(
        refused.map((r) => (r.ok ? null : [r.index, r.error.code, r.error.fieldViolations[0]?.field])),
        [
          [3, 'INVALID_ARGUMENT', 'name'],
          [7, 'INVALID_ARGUMENT', 'options.attempts'],
        ],
      );
      const r10 = results[10];
      assert.ok(r10?.ok);
      assert.equal(r10.existing, false);
      assert.deepEqual((await client.orchestrator.waitForTask(r10.taskId, { timeoutMs: 10_000 })).result, { n: 10 });
      assert.deepEqual(await client.orchestrator.scheduleTasks([]), []);
      await assert.rejects(
        client.orchestrator.scheduleTasks(Array.from({ length: 1001 }, () => ({ name: 'plain.bulk' }))),
        (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT' && e.fieldViolations[0]?.field === 'tasks',
      );
    } finally {
      await worker.close();
    }
  });

  it('retryTask runs a failed task again under its id; its error kind selects it', async () => {
    let calls = 0;
    const worker = createWorker({
      url: server.url,
      logger: false,
      handlers: {
        'plain.flaky': () => {
          calls += 1;
          if (calls === 1) throw new RangeError('the dependency is down');
          return { calls };
        },
      },
    });
    try {
      await worker.waitUntilRegistered();
      const { taskId } = await client.orchestrator.scheduleTask('plain.flaky', {});
      const failed = await client.orchestrator.waitForTask(taskId, { timeoutMs: 10_000 });
      assert.equal(failed.status, 'FAILED');
      assert.equal(failed.run, 0);
      const kind = failed.lastError?.kind ?? '';
      assert.ok(kind, 'the failure has a kind');
      const selected = await client.orchestrator.listTasks({ statuses: ['FAILED'], errorKind: kind, names: ['plain.flaky'] });
      assert.deepEqual(selected.tasks.map((t) => t.id), [taskId]);

      const again = await client.orchestrator.retryTask(taskId, { reason: 'fixed' });
      assert.equal(again.id, taskId);
      assert.equal(again.run, 1);
      const done = await client.orchestrator.waitForTask(taskId, { timeoutMs: 10_000 });
      assert.equal(done.status, 'COMPLETED');
      assert.deepEqual(done.result, { calls: 2 });
      assert.equal(done.attempt, 1, 'a new attempt budget');
      await assert.rejects(
        client.orchestrator.retryTask(taskId),
        (e: unknown) => e instanceof SwitchyardError && e.code === 'FAILED_PRECONDITION',
      );
      await assert.rejects(
        client.orchestrator.replayWorkflow(taskId, ''),
        (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT' && e.fieldViolations[0]?.field === 'from_step',
      );
    } finally {
      await worker.close();
    }
  });

  it('drains on close: a running task finishes, nothing new is taken', async () => {
    const started = signal<TaskContext>();
    const finish = signal();
    const worker = client.createWorker({
      logger: false,
      concurrency: 1,
      immediateSlots: 0,
      drainTimeoutMs: 10_000,
      handlers: {
        'plain.drain': async (_p, ctx) => {
          started.resolve(ctx);
          await finish.promise;
          return { finished: true };
        },
      },
    });
    await worker.waitUntilRegistered();
    const first = await client.orchestrator.scheduleTask('plain.drain', {});
    const ctx = await started.promise;
    // The only slot is busy: the second task waits.
    const second = await client.orchestrator.scheduleTask('plain.drain', {});
    assert.equal((await client.orchestrator.getTaskStatus(second.taskId)).waitingReason, 'CAPACITY_FULL');
    const closed = worker.close();
    // Drain goes out on the worker's stream before the first task's Complete,
    // so the slot that frees up is not used again.
    finish.resolve();
    await closed;
    assert.equal(ctx.signal.aborted, false, 'the running task was not cancelled');
    assert.deepEqual((await client.orchestrator.getTaskStatus(first.taskId)).result, { finished: true });
    const after = await client.orchestrator.getTaskStatus(second.taskId);
    assert.equal(after.status, 'PENDING');
    assert.equal(after.attempt, 0, 'never assigned');
    await client.orchestrator.cancelTask(second.taskId);
  });

  it('a drain timeout fires the signal and leaves the task to the server’s requeue', async () => {
    const started = signal<TaskContext>();
    const outcomes: TaskOutcomeEvent[] = [];
    const worker = client.createWorker({
      logger: false,
      drainTimeoutMs: 100,
      handlers: {
        'plain.stuck': async (_p, ctx) => {
          started.resolve(ctx);
          await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
        },
      },
    });
    worker.on('task', (e: TaskOutcomeEvent) => outcomes.push(e));
    await worker.waitUntilRegistered();
    const task = await client.orchestrator.scheduleTask('plain.stuck', {}, { attempts: 3 });
    const ctx = await started.promise;
    await worker.close();
    assert.equal(ctx.cancelReason, 'worker_shutdown');
    assert.deepEqual(outcomes.map((o) => o.outcome), ['abandoned']);
    await until(async () => (await client.orchestrator.getTaskStatus(task.taskId)).status === 'PENDING', 'the task to be requeued');
    await client.orchestrator.cancelTask(task.taskId);
  });

  it('refuses a registration the server rejects, with a typed error', async () => {
    const worker = createWorker({ url: server.url, logger: false, handlers: { 'bad name with spaces': () => null } });
    await assert.rejects(worker.waitUntilRegistered(), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError, String(err));
      assert.equal(err.code, 'INVALID_ARGUMENT');
      return true;
    });
    await worker.close();
  });

  it('checks its options before connecting', () => {
    assert.throws(() => createWorker({ url: server.url, handlers: {} }), (e: unknown) => e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'handlers');
    assert.throws(
      () => createWorker({ url: server.url, handlers: { x: () => 1 }, concurrency: 0 }),
      (e: unknown) => e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'concurrency',
    );
  });
});

describe('reconnects after a server restart', { timeout: 120_000 }, () => {
  let server: TestServer;

  before(async () => {
    server = await startServer({ persistent: true });
  });

  after(async () => {
    await server?.stop();
  });

  it('the worker re-registers and the watch resumes after its last sequence', async () => {
    const client = new SwitchyardClient({ url: server.url });
    const worker = client.createWorker({ logger: false, handlers: { 'restart.echo': (p) => p } });
    try {
      await worker.waitUntilRegistered();
      const firstId = worker.workerIds[0];

      const items: string[] = [];
      const events = new Map<string, number[]>();
      let reconnects = 0;
      const sub = client.orchestrator.watchTasks({ names: ['restart.echo'] }, { reconnect: { initialDelayMs: 50, maxDelayMs: 500 } }).subscribe({
        next: (item) => {
          items.push(item.type);
          if (item.type === 'event') {
            events.set(item.task.id, [...(events.get(item.task.id) ?? []), item.sequence]);
          } else if (item.type === 'reconnecting') {
            reconnects += 1;
          }
        },
      });
      await until(() => items.includes('live'), 'the watch to be live');
      const before = await client.orchestrator.scheduleTask('restart.echo', { n: 1 });
      await client.orchestrator.waitForTask(before.taskId, { timeoutMs: 10_000 });

      await server.restart();

      await worker.waitUntilRegistered(20_000);
      await until(() => worker.isRegistered && worker.workerIds[0] !== firstId, 'a new worker id', 20_000);
      await until(() => items.filter((t) => t === 'live').length >= 2, 'the watch to resume', 20_000);
      assert.ok(reconnects >= 1);

      const afterRestart = await client.orchestrator.scheduleTask('restart.echo', { n: 2 });
      const done = await client.orchestrator.waitForTask(afterRestart.taskId, { timeoutMs: 10_000 });
      assert.deepEqual(done.result, { n: 2 });
      await until(() => (events.get(afterRestart.taskId) ?? []).includes(done.sequence), 'the watched COMPLETED event after the restart');
      // Nothing was delivered twice.
      const all = [...events.values()].flat();
      assert.equal(new Set(all).size, all.length);
      sub.unsubscribe();
    } finally {
      await client.close();
    }
  });

  it('a watch resumed from too far back reports the gap, then snapshots', async () => {
    await server.stop();
    const small = await startServer({ env: { SWITCHYARD_SCHEDULER__EVENT_HISTORY: '4' } });
    const client = new SwitchyardClient({ url: small.url });
    try {
      const ids: string[] = [];
      let lastSeq = 0;
      for (let i = 0; i < 8; i++) {
        const res = await client.orchestrator.scheduleTask('gap.nobody', { i });
        ids.push(res.taskId);
        lastSeq = Math.max(lastSeq, res.task.sequence);
      }
      // The reply comes once the task is stored; its event is published just after.
      await until(async () => (await client.orchestrator.getMetrics()).lastSequence >= lastSeq, 'the events to be published');
      const seen: string[] = [];
      const snapshots = new Set<string>();
      const sub = client.orchestrator.watchTasks({ names: ['gap.nobody'] }, { afterSequence: 1 }).subscribe((item) => {
        seen.push(item.type);
        if (item.type === 'gap') {
          assert.equal(item.afterSequence, 1);
          assert.ok(item.oldestKept > 1);
        } else if (item.type === 'event' && item.kind === 'SNAPSHOT') {
          snapshots.add(item.task.id);
        }
      });
      await until(() => seen.includes('live'), 'the replay to end');
      sub.unsubscribe();
      assert.equal(seen[0], 'gap');
      assert.ok(snapshots.size >= 1, 'snapshots of the tasks that changed in the gap');
      assert.ok([...snapshots].every((id) => ids.includes(id)));
    } finally {
      await client.close();
      await small.stop();
    }
  });
});
