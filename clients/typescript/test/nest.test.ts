/**
 * The NestJS module against the real server: a testing module with
 * SwitchyardModule.forRoot and @TaskHandler providers schedules, processes,
 * watches, cancels and disconnects tasks, and reads typed errors.
 */
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Inject, Injectable, Module } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';

import {
  ExecutionManagerService,
  NonRetryableError,
  RetryableError,
  StandardizedOrchestratorService,
  SwitchyardError,
  SwitchyardLifecycle,
  SwitchyardModule,
  TaskCancelledError,
  TaskContext,
  TaskHandler,
  TaskType,
  type TaskWatchEvent,
} from '../src/index.js';
import { signal, startServer, startWebhookReceiver, until, type TestServer, type WebhookReceiver } from './helpers/server.js';

/**
 * What the server answers today for the kinds whose executors are being
 * built elsewhere: `absent` = FAILED_PRECONDITION "no executor for ... tasks";
 * `accepts` = the task is scheduled. Flip an entry when its executor lands.
 */
const EXECUTORS: Record<'COMPLEX' | 'INTEGRATION', 'absent' | 'accepts'> = {
  COMPLEX: 'accepts',
  INTEGRATION: 'accepts',
};

const FLIP = 'flip it in EXECUTORS at the top of clients/typescript/test/nest.test.ts';

/** The server refuses the kind: no executor runs it. */
async function expectNoExecutor(kind: 'COMPLEX' | 'INTEGRATION', attempt: Promise<unknown>): Promise<void> {
  const outcome = await attempt.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(outcome !== undefined, `the server now runs an executor for ${kind} tasks: ${FLIP}`);
  assert.ok(outcome instanceof SwitchyardError, String(outcome));
  assert.equal(outcome.code, 'FAILED_PRECONDITION');
  assert.match(outcome.details, new RegExp(`no executor for ${kind} tasks`));
}

/** The call succeeds; a refusal for want of an executor says where to flip the expectation. */
async function expectExecutor<T>(kind: 'COMPLEX' | 'INTEGRATION', attempt: Promise<T>): Promise<T> {
  try {
    return await attempt;
  } catch (err) {
    if (err instanceof SwitchyardError && err.code === 'FAILED_PRECONDITION' && /no executor/.test(err.details)) {
      assert.fail(`the server runs no executor for ${kind} tasks (${err.details}): ${FLIP}`);
    }
    throw err;
  }
}

/** Handlers shared by the tests; each test uses names of its own. */
const started = new Map<string, { resolve: (ctx: TaskContext) => void; promise: Promise<TaskContext> }>();
function onStart(taskId: string) {
  let entry = started.get(taskId);
  if (!entry) {
    const s = signal<TaskContext>();
    entry = { resolve: s.resolve, promise: s.promise };
    started.set(taskId, entry);
  }
  return entry;
}
const aborted = new Map<string, string>();
let flakyCalls = 0;

@Injectable()
class MyHandlers {
  readonly seen: string[] = [];

  @TaskHandler('ts.echo')
  async echo(payload: { text: string }, ctx: TaskContext) {
    this.seen.push(ctx.taskId);
    ctx.progress(50, 'half way');
    ctx.log('info', `echoing ${payload.text}`);
    ctx.progress(100, 'done');
    return { echoed: payload.text, attempt: ctx.attempt, key: ctx.idempotencyKey, user: ctx.userId ?? null };
  }

  /** Runs until its signal fires. */
  @TaskHandler('ts.slow', { concurrency: 4 })
  async slow(_payload: unknown, ctx: TaskContext) {
    onStart(ctx.taskId).resolve(ctx);
    await new Promise<void>((_, reject) => {
      ctx.signal.addEventListener('abort', () => {
        aborted.set(ctx.taskId, ctx.cancelReason ?? '?');
        reject(ctx.signal.reason as Error);
      });
    });
  }

  @TaskHandler('ts.invalid')
  invalid(): never {
    throw new NonRetryableError('the payload names no recipient', { kind: 'validation' });
  }

  @TaskHandler('ts.flaky')
  flaky(_payload: unknown, ctx: TaskContext) {
    flakyCalls += 1;
    if (ctx.attempt === 1) {
      throw new RetryableError('upstream answered 503', { kind: 'http_503', retryAfterMs: 10 });
    }
    return { attempt: ctx.attempt };
  }
}

describe('SwitchyardModule (NestJS) against the real server', { timeout: 120_000 }, () => {
  let server: TestServer;
  let moduleRef: TestingModule;
  let orchestrator: StandardizedOrchestratorService;
  let executionManager: ExecutionManagerService;
  let handlers: MyHandlers;
  let receiver: WebhookReceiver | undefined;

  before(async () => {
    if (EXECUTORS.INTEGRATION === 'accepts') {
      receiver = await startWebhookReceiver();
    }
    // Loopback webhooks are refused unless allowed (the SSRF guard).
    server = await startServer(receiver ? { env: { SWITCHYARD_WEBHOOK__ALLOW_HOSTS: '["127.0.0.1"]' } } : {});
    moduleRef = await Test.createTestingModule({
      imports: [SwitchyardModule.forRoot({ url: server.url, defaults: { labels: { app: 'ts-test' } }, worker: { drainTimeoutMs: 5_000 } })],
      providers: [MyHandlers],
    }).compile();
    await moduleRef.init();
    orchestrator = moduleRef.get(StandardizedOrchestratorService);
    executionManager = moduleRef.get(ExecutionManagerService);
    handlers = moduleRef.get(MyHandlers);
    const worker = moduleRef.get(SwitchyardLifecycle).taskWorker;
    assert.ok(worker, 'the @TaskHandler methods started a worker');
    assert.deepEqual([...worker.taskNames], ['ts.echo', 'ts.flaky', 'ts.invalid', 'ts.slow']);
    await worker.waitUntilRegistered();
  });

  after(async () => {
    await moduleRef?.close();
    await server?.stop();
    await receiver?.close();
  });

  it('schedules a SIMPLE task that a @TaskHandler processes', async () => {
    const res = await orchestrator.scheduleTask('ts.echo', { text: 'hello' }, { userId: 'user-1', priority: 10, attempts: 2 });
    assert.match(res.taskId, /^[0-9a-f-]{36}$/);
    assert.equal(res.existing, false);
    assert.ok(['PENDING', 'RUNNING'].includes(res.status), res.status);
    assert.equal(res.task.taskType, 'SIMPLE');

    const done = await orchestrator.waitForTask(res.taskId, { timeoutMs: 10_000 });
    assert.equal(done.status, 'COMPLETED');
    assert.deepEqual(done.result, { echoed: 'hello', attempt: 1, key: `${res.taskId}:1`, user: 'user-1' });
    assert.ok(handlers.seen.includes(res.taskId));

    const status = await orchestrator.getTaskStatus(res.taskId);
    assert.equal(status.id, res.taskId);
    assert.equal(status.name, 'ts.echo');
    assert.equal(status.status, 'COMPLETED');
    assert.equal(status.source, 'EMBEDDED');
    assert.equal(status.attempt, 1);
    assert.equal(status.maxAttempts, 2);
    assert.equal(status.priority, 10);
    assert.equal(status.userId, 'user-1');
    assert.equal(status.progress, 100);
    assert.equal(status.progressMessage, 'done');
    assert.deepEqual(status.payload, { text: 'hello' });
    assert.deepEqual(status.labels, { app: 'ts-test' });
    assert.ok(status.createdAt instanceof Date && status.createdAt.getTime() > Date.now() - 60_000);
    assert.ok(status.finishedAt instanceof Date && status.finishedAt >= status.createdAt);
    assert.equal(status.isFinal, true);

    const logs = await orchestrator.getTaskLogs(res.taskId);
    assert.ok(
      logs.lines.some((l) => l.source === 'WORKER' && l.message === 'echoing hello'),
      JSON.stringify(logs.lines.map((l) => [l.source, l.message])),
    );
  });

  it('keeps nested payloads and results intact', async () => {
    const payload = { text: 'nested', deep: { list: [1, 'two', { three: 3 }, null, true], empty: {} } };
    const res = await orchestrator.scheduleTask('ts.echo', payload, { taskType: TaskType.SIMPLE });
    const status = await orchestrator.getTaskStatus(res.taskId);
    assert.deepEqual(status.payload, payload);
  });

  it('returns the first task for a repeated idempotency key', async () => {
    const first = await orchestrator.scheduleTask('ts.echo', { text: 'once' }, { idempotencyKey: 'ts-idem-1' });
    const second = await orchestrator.scheduleTask('ts.echo', { text: 'twice' }, { idempotencyKey: 'ts-idem-1' });
    assert.equal(second.taskId, first.taskId);
    assert.equal(second.existing, true);
  });

  it(`schedules a COMPLEX workflow (executor ${EXECUTORS.COMPLEX})`, async () => {
    if (EXECUTORS.COMPLEX === 'absent') {
      await expectNoExecutor('COMPLEX', orchestrator.scheduleTask('ts.onboard', {}, { temporal: { workflowType: 'ts-onboarding', workflowArgs: [{ user: 'u1' }] } }));
      return;
    }
    // A task step run by the @TaskHandler above, then a wait for a signal.
    const registered = await expectExecutor('COMPLEX', orchestrator.registerWorkflow({
      name: 'ts-onboarding',
      steps: [
        { id: 'greet', task: 'ts.echo', input: { text: '{{args.0.user}}' } },
        { id: 'approve', signal: 'approval' },
      ],
    }));
    assert.equal(registered.name, 'ts-onboarding');
    assert.ok((await orchestrator.listWorkflows()).some((w) => w.name === 'ts-onboarding' && w.version === registered.version));
    await assert.rejects(orchestrator.registerWorkflow({ name: 'ts-empty', steps: [] }), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError);
      assert.equal(err.code, 'INVALID_ARGUMENT');
      assert.equal(err.fieldViolations[0]?.field, 'definition');
      return true;
    });

    const res = await expectExecutor(
      'COMPLEX',
      orchestrator.scheduleTask('ts.onboard', {}, {
        temporal: {
          workflowType: 'ts-onboarding',
          workflowArgs: [{ user: 'u1' }],
          // No taskQueue: this workflow stays on the embedded engine, which
          // refuses one (it has no task queues).
        },
      }),
    );
    assert.equal(res.task.taskType, 'COMPLEX');
    await until(async () => {
      const t = await orchestrator.getTaskStatus(res.taskId);
      return t.steps.find((st) => st.id === 'approve')?.state === 'RUNNING';
    }, 'the workflow to wait for its signal');
    await orchestrator.signalTask(res.taskId, 'approval', { approvedBy: 'boss' });
    const done = await orchestrator.waitForTask(res.taskId, { timeoutMs: 20_000 });
    assert.equal(done.status, 'COMPLETED', done.error);
    assert.deepEqual(
      done.steps.map((st) => [st.id, st.state]),
      [
        ['greet', 'COMPLETED'],
        ['approve', 'COMPLETED'],
      ],
    );
    assert.equal((done.steps[0]?.output as { echoed?: string }).echoed, 'u1');
    assert.deepEqual(done.steps[1]?.output, { approvedBy: 'boss' });
  });

  it(`schedules an INTEGRATION webhook call (executor ${EXECUTORS.INTEGRATION})`, async () => {
    const webhookUrl = receiver ? `${receiver.url}/webhook/ci-notify` : 'http://127.0.0.1:9/webhook/ci-notify';
    const attempt = orchestrator.scheduleTask('ts.notify-ci', { build: 42 }, { n8n: { webhookUrl, integrationSource: 'jenkins' } });
    if (EXECUTORS.INTEGRATION === 'absent') {
      await expectNoExecutor('INTEGRATION', attempt);
    } else {
      const res = await expectExecutor('INTEGRATION', attempt);
      assert.equal(res.task.taskType, 'INTEGRATION');
      const done = await orchestrator.waitForTask(res.taskId, { timeoutMs: 20_000 });
      assert.equal(done.status, 'COMPLETED', done.error);
      assert.equal(done.source, 'N8N');
      // The call and its result, as task.proto's N8nTarget documents them.
      assert.equal(receiver?.bodies.length, 1);
      const body = JSON.parse(receiver?.bodies[0] ?? '{}') as { payload: unknown; switchyard: { task_id: string; source: string } };
      assert.deepEqual(body.payload, { build: 42 });
      assert.equal(body.switchyard.task_id, res.taskId);
      assert.equal(body.switchyard.source, 'jenkins');
      assert.equal(receiver?.headers[0]?.['idempotency-key'], res.taskId);
      const result = done.result as { status: number; body: unknown };
      assert.equal(result.status, 200);
      assert.deepEqual(result.body, { received: true });
    }
  });

  it('watches a task from SCHEDULED to COMPLETED', async () => {
    const events: TaskWatchEvent[] = [];
    const live = signal();
    const sub = orchestrator.watchTasks({ names: ['ts.echo'], userId: 'watcher' }).subscribe((item) => {
      if (item.type === 'live') {
        live.resolve();
      } else if (item.type === 'event') {
        events.push(item);
      }
    });
    try {
      await live.promise;
      const res = await orchestrator.scheduleTask('ts.echo', { text: 'watched' }, { userId: 'watcher' });
      await until(() => events.some((e) => e.task.id === res.taskId && e.kind === 'COMPLETED'), 'the COMPLETED event');
      const mine = events.filter((e) => e.task.id === res.taskId);
      const kinds = mine.map((e) => e.kind);
      assert.equal(kinds[0], 'SCHEDULED');
      assert.ok(kinds.includes('STARTED'), kinds.join());
      assert.ok(kinds.includes('PROGRESS'), kinds.join());
      assert.equal(kinds.at(-1), 'COMPLETED');
      const seqs = mine.map((e) => e.sequence);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
      assert.ok(mine.every((e) => e.time instanceof Date));
      assert.deepEqual(mine.at(-1)?.task.result, { echoed: 'watched', attempt: 1, key: `${res.taskId}:1`, user: 'watcher' });
    } finally {
      sub.unsubscribe();
    }
  });

  it('cancels a running task: the handler sees its AbortSignal fire', async () => {
    const res = await orchestrator.scheduleTask('ts.slow', {});
    const ctx = await onStart(res.taskId).promise;
    assert.equal((await orchestrator.getTaskStatus(res.taskId)).status, 'RUNNING');

    const outcome = await orchestrator.cancelTaskWithOutcome(res.taskId, { reason: 'user pressed stop' });
    assert.equal(outcome.outcome, 'CANCEL_REQUESTED');
    const final = await orchestrator.waitForTask(res.taskId, { timeoutMs: 10_000 });
    assert.equal(final.status, 'CANCELLED');
    assert.equal(ctx.signal.aborted, true);
    assert.ok(ctx.signal.reason instanceof TaskCancelledError);
    assert.equal(aborted.get(res.taskId), 'cancelled');
    const logs = await orchestrator.getTaskLogs(res.taskId);
    assert.ok(logs.lines.some((l) => l.message.includes('user pressed stop')), 'the reason is in the task log');

    // A finished task: nothing to cancel.
    assert.equal(await orchestrator.cancelTask(res.taskId), false);
  });

  it('cancels a pending task at once', async () => {
    const res = await orchestrator.scheduleTask('ts.nobody-handles-this', {});
    assert.equal(res.status, 'PENDING');
    assert.equal(await orchestrator.cancelTask(res.taskId), true);
    const status = await orchestrator.getTaskStatus(res.taskId);
    assert.equal(status.status, 'CANCELLED');
  });

  it('disconnects a user: running and pending tasks are stopped, with receipts', async () => {
    const running = await orchestrator.scheduleTask('ts.slow', {}, { userId: 'leaving-user' });
    const ctx = await onStart(running.taskId).promise;
    const pending = await orchestrator.scheduleTask('ts.nobody-handles-this', {}, { userId: 'leaving-user' });
    const done = await orchestrator.scheduleTask('ts.echo', { text: 'x' }, { userId: 'leaving-user' });
    await orchestrator.waitForTask(done.taskId, { timeoutMs: 10_000 });

    const receipts = await orchestrator.disconnect({ userId: 'leaving-user', reason: 'logout' });
    const byId = new Map(receipts.map((r) => [r.taskId, r]));
    assert.equal(byId.get(running.taskId)?.outcome, 'CANCEL_REQUESTED');
    assert.equal(byId.get(running.taskId)?.name, 'ts.slow');
    assert.equal(byId.get(pending.taskId)?.outcome, 'CANCELLED');
    assert.equal(byId.has(done.taskId), false, 'a finished task gets no receipt');

    await orchestrator.waitForTask(running.taskId, { timeoutMs: 10_000 });
    assert.equal(ctx.signal.aborted, true);
    assert.equal(aborted.get(running.taskId), 'disconnected');
    assert.equal((await orchestrator.getTaskStatus(running.taskId)).status, 'CANCELLED');
  });

  it('ExecutionManagerService submits in its session and disconnect() stops the session', async () => {
    const quick = await executionManager.submit('ts.echo', { text: 'now' }, { userId: 'em-user', priority: 5, isImmediate: true });
    assert.equal(quick.task.immediate, true);
    assert.equal(quick.task.sessionId, executionManager.sessionId);
    assert.equal(quick.task.priority, 5);
    assert.equal((await orchestrator.waitForTask(quick.taskId, { timeoutMs: 10_000 })).status, 'COMPLETED');

    const long = await executionManager.submit('ts.slow', {}, { userId: 'em-user' });
    await onStart(long.taskId).promise;
    const receipts = await executionManager.disconnect();
    assert.deepEqual(
      receipts.map((r) => [r.taskId, r.outcome]),
      [[long.taskId, 'CANCEL_REQUESTED']],
    );
    assert.equal((await orchestrator.waitForTask(long.taskId, { timeoutMs: 10_000 })).status, 'CANCELLED');
  });

  it('reports a NonRetryableError as a final failure and retries a RetryableError', async () => {
    const bad = await orchestrator.scheduleTask('ts.invalid', {}, { attempts: 3 });
    const failed = await orchestrator.waitForTask(bad.taskId, { timeoutMs: 10_000 });
    assert.equal(failed.status, 'FAILED');
    assert.equal(failed.attempt, 1, 'no second attempt after a non-retryable error');
    assert.equal(failed.error, 'the payload names no recipient');
    assert.equal(failed.lastError?.kind, 'validation');
    assert.equal(failed.lastError?.retryable, false);

    const flaky = await orchestrator.scheduleTask('ts.flaky', {}, { attempts: 2, backoff: { type: 'fixed', delay: '20ms' } });
    const ok = await orchestrator.waitForTask(flaky.taskId, { timeoutMs: 10_000 });
    assert.equal(ok.status, 'COMPLETED');
    assert.deepEqual(ok.result, { attempt: 2 });
    // Completed: attempt 1's error is in its log, not its outcome.
    assert.equal(ok.lastError, undefined);
    const { lines } = await orchestrator.getTaskLogs(flaky.taskId);
    assert.ok(lines.some((l) => l.message.startsWith('attempt 1 of 2 failed')), JSON.stringify(lines));
    assert.ok(flakyCalls >= 2);
  });

  it('surfaces a bad request as a SwitchyardError with field violations', async () => {
    await assert.rejects(orchestrator.scheduleTask('', {}, { attempts: 1000 }), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError, String(err));
      assert.equal(err.code, 'INVALID_ARGUMENT');
      assert.equal(err.grpcCode, 3);
      assert.equal(err.method, 'ScheduleTask');
      const fields = err.fieldViolations.map((v) => v.field);
      assert.ok(fields.includes('name'), fields.join());
      assert.ok(fields.includes('options.attempts'), fields.join());
      assert.ok(err.violation('options.attempts')?.description);
      assert.match(err.message, /^INVALID_ARGUMENT: /);
      return true;
    });
    // Caught before sending: the same error type.
    await assert.rejects(orchestrator.scheduleTask('ts.echo', {}, { taskType: 'LONG' as never }), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError);
      assert.equal(err.code, 'INVALID_ARGUMENT');
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ['task_type']);
      return true;
    });
    await assert.rejects(orchestrator.getTaskStatus('0190b0c0-0000-7000-8000-000000000000'), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError);
      assert.equal(err.code, 'NOT_FOUND');
      return true;
    });
    await assert.rejects(orchestrator.disconnect({} as never), (err: unknown) => err instanceof SwitchyardError && err.code === 'INVALID_ARGUMENT');
  });

  it('lists tasks and reads metrics', async () => {
    const res = await orchestrator.scheduleTask('ts.echo', { text: 'listed' }, { userId: 'lister' });
    await orchestrator.waitForTask(res.taskId, { timeoutMs: 10_000 });
    const page = await orchestrator.listTasks({ userId: 'lister', statuses: ['COMPLETED'] }, { pageSize: 10 });
    assert.deepEqual(page.tasks.map((t) => t.id), [res.taskId]);
    assert.equal(page.nextPageToken, undefined);

    const metrics = await orchestrator.getMetrics();
    assert.ok((metrics.total?.completed ?? 0) >= 1);
    assert.ok(metrics.startedAt instanceof Date);
    assert.ok(metrics.workersConnected >= 1);
    assert.ok(metrics.byName['ts.echo']);
  });

  it('watchTasks replays from a sequence number', async () => {
    const res = await orchestrator.scheduleTask('ts.echo', { text: 'replayed' }, { userId: 'replayer' });
    const done = await orchestrator.waitForTask(res.taskId, { timeoutMs: 10_000 });
    // Everything about the task, from just before it was scheduled.
    const replayed: TaskWatchEvent[] = [];
    const sub = orchestrator.watchTasks({ taskIds: [res.taskId] }, { afterSequence: res.task.sequence - 1 }).subscribe((i) => {
      if (i.type === 'event') {
        replayed.push(i);
      }
    });
    await until(() => replayed.some((e) => e.kind === 'COMPLETED'), 'the replayed COMPLETED event');
    sub.unsubscribe();
    assert.equal(replayed[0]?.kind, 'SCHEDULED');
    assert.equal(replayed.at(-1)?.sequence, done.sequence);
  });
});

const SETTINGS = Symbol('SETTINGS');

@Module({ providers: [{ provide: SETTINGS, useFactory: () => ({ switchyardUrl: process.env.TS_TEST_URL }) }], exports: [SETTINGS] })
class SettingsModule {}

@Injectable()
class UsesOrchestrator {
  constructor(
    readonly orchestrator: StandardizedOrchestratorService,
    @Inject(SETTINGS) readonly settings: { switchyardUrl: string },
  ) {}
}

describe('SwitchyardModule.forRootAsync', { timeout: 60_000 }, () => {
  let server: TestServer;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  it('builds the client from injected settings and starts no worker without handlers', async () => {
    process.env.TS_TEST_URL = server.url;
    const moduleRef = await Test.createTestingModule({
      imports: [
        SettingsModule,
        SwitchyardModule.forRootAsync({
          imports: [SettingsModule],
          inject: [SETTINGS],
          useFactory: (settings: { switchyardUrl: string }) => ({ url: settings.switchyardUrl, defaults: { userId: 'async-user' } }),
        }),
      ],
      providers: [UsesOrchestrator],
    }).compile();
    await moduleRef.init();
    try {
      const user = moduleRef.get(UsesOrchestrator);
      assert.equal(user.settings.switchyardUrl, server.url);
      const res = await user.orchestrator.scheduleTask('async.nobody', {});
      assert.equal(res.task.userId, 'async-user', 'defaults from the factory apply');
      assert.equal(moduleRef.get(SwitchyardLifecycle).taskWorker, undefined);
      assert.equal(moduleRef.get(ExecutionManagerService).sessionId.startsWith('exec-'), true);
    } finally {
      await moduleRef.close();
    }
  });
});
