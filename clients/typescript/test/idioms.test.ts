/**
 * The Nest idioms (registerQueue + @InjectSwitchyardQueue, @Processor with
 * process(job), @OnTaskEvent), task handles (result() throws TaskFailedError),
 * watchTasks as an async iterator, and the guide-shaped calls: helpers that
 * resolve to the id, submit(ExecutionTask), disconnect(userId), BullMQ
 * options spread into scheduleTask. Against the real server.
 */
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Injectable, Module } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';

import {
  ExecutionManagerService,
  InjectSwitchyardQueue,
  NonRetryableError,
  OnTaskEvent,
  Processor,
  ScanTask,
  StandardizedOrchestratorService,
  SwitchyardError,
  SwitchyardJob,
  SwitchyardModule,
  SwitchyardQueue,
  TaskFailedError,
} from '../src/index.js';
import { startServer, until, type TestServer } from './helpers/server.js';

const events: string[] = [];

@Processor('idioms.emails')
class EmailProcessor {
  async process(job: SwitchyardJob<{ to: string; fail?: boolean }>) {
    await job.updateProgress(50);
    if (job.data.fail) {
      throw new NonRetryableError('bounced', { kind: 'Bounce' });
    }
    return { sent: job.data.to, job: job.name };
  }
  @OnTaskEvent('completed') completed(job: SwitchyardJob, result: unknown) {
    events.push(`completed:${job.name}:${JSON.stringify(result)}`);
  }
  @OnTaskEvent('failed') failed(job: SwitchyardJob, err: Error) {
    events.push(`failed:${job.name}:${err.message}`);
  }
  @OnTaskEvent('progress') progress(job: SwitchyardJob, p: number) {
    events.push(`progress:${job.name}:${p}`);
  }
}

@Injectable()
class Mailer {
  constructor(@InjectSwitchyardQueue('idioms.emails') readonly queue: SwitchyardQueue) {}
}

describe('Nest idioms and the guide-shaped API', { timeout: 60_000 }, () => {
  let server: TestServer;
  let moduleRef: TestingModule;
  let orchestrator: StandardizedOrchestratorService;

  before(async () => {
    server = await startServer();
    @Module({ imports: [SwitchyardModule.registerQueue({ name: 'idioms.emails', defaults: { attempts: 1 } })], providers: [Mailer] })
    class EmailModule {}
    moduleRef = await Test.createTestingModule({
      imports: [SwitchyardModule.forRoot({ url: server.url }), EmailModule],
      providers: [EmailProcessor],
    }).compile();
    moduleRef.enableShutdownHooks();
    await moduleRef.init();
    orchestrator = moduleRef.get(StandardizedOrchestratorService);
  });

  after(async () => {
    await moduleRef?.close();
    await server?.stop();
  });

  it('a queue-bound scheduler, a processor class and its events; handles and typed failures', async () => {
    const mailer = moduleRef.get(Mailer);
    const ok = await mailer.queue.add('welcome', { to: 'a@b.c' });
    assert.deepEqual(await orchestrator.getHandle(ok.taskId).result({ timeoutMs: 10_000 }), { sent: 'a@b.c', job: 'welcome' });
    const bad = await mailer.queue.schedule('welcome', { to: 'x', fail: true });
    await assert.rejects(orchestrator.getHandle(bad).result({ timeoutMs: 10_000 }), (err: unknown) => {
      assert.ok(err instanceof TaskFailedError);
      assert.equal(err.status, 'FAILED');
      assert.equal(err.kind, 'Bounce');
      return true;
    });
    await until(() => events.includes('failed:welcome:bounced'), 'the failed event');
    assert.ok(events.includes('progress:welcome:50'));
    assert.ok(events.includes('completed:welcome:{"sent":"a@b.c","job":"welcome"}'));
  });

  it('addBulk: BullMQ-shaped jobs, one result each, processed by the queue’s processor', async () => {
    const mailer = moduleRef.get(Mailer);
    const results = await mailer.queue.addBulk([
      { name: 'bulk-a', data: { to: 'a@b.c' } },
      { name: 'bulk-b', data: { to: 'b@b.c' }, opts: { priority: 5 } },
      { name: 'bulk-c', data: { to: 'c@b.c' }, opts: { attempts: 101 } },
    ]);
    assert.deepEqual(
      results.map((r) => r.ok),
      [true, true, false],
    );
    const [a, b, c] = results;
    assert.ok(a?.ok && b?.ok && c && !c.ok);
    assert.equal(c.error.code, 'INVALID_ARGUMENT');
    assert.equal(c.error.fieldViolations[0]?.field, 'options.attempts');
    assert.deepEqual(await orchestrator.getHandle(a.taskId).result({ timeoutMs: 10_000 }), { sent: 'a@b.c', job: 'bulk-a' });
    assert.deepEqual(await orchestrator.getHandle(b.taskId).result({ timeoutMs: 10_000 }), { sent: 'b@b.c', job: 'bulk-b' });
    assert.equal((await orchestrator.getTaskStatus(b.taskId)).priority, 5);
  });

  it('watchTasks is an async iterator', async () => {
    const watch = orchestrator.watchTasks({ names: ['idioms.emails'] });
    const seen: string[] = [];
    const id = orchestrator.scheduleSimpleTask('idioms.emails', { to: 'w@b.c' });
    for await (const item of watch) {
      if (item.type === 'event' && item.task.id === (await id)) {
        seen.push(item.task.status);
        if (item.task.isFinal) {
          break;
        }
      }
    }
    assert.equal(seen.at(-1), 'COMPLETED');
  });

  it('helpers resolve to the id; submit(ExecutionTask) runs run() here; disconnect(userId)', async () => {
    const id = await orchestrator.scheduleSimpleTask('idioms.emails', { to: 'h@b.c' }, { priority: 10, attempts: 3 });
    assert.equal(typeof id, 'string');
    assert.equal((await orchestrator.waitForTask(id, { timeoutMs: 10_000 })).status, 'COMPLETED');

    const exec = moduleRef.get(ExecutionManagerService);
    const rolledBack: string[] = [];
    const task = new ScanTask(async () => ({ hosts: 2 }), { userId: 'em', priority: 7, onCleanup: () => rolledBack.push('cleanup') });
    void exec.submit(task);
    assert.match(task.id, /^[0-9a-f-]{36}$/);
    await until(() => task.status === 'COMPLETED', 'the ExecutionTask to run');
    assert.deepEqual(task.result, { hosts: 2 });
    const view = await exec.getTask(task.id);
    assert.equal(view.status, 'COMPLETED');
    assert.equal(view.priority, 7);
    assert.deepEqual(rolledBack, ['cleanup']);

    const stuck = new ScanTask((t) => new Promise((_, reject) => t.signal?.addEventListener('abort', () => reject(new Error('stopped')))), {
      userId: 'leaver',
      onRollback: () => rolledBack.push('rollback'),
    });
    await exec.submit(stuck);
    await until(() => stuck.status === 'RUNNING', 'the task to run');
    const receipts = await exec.disconnect('leaver');
    assert.equal(receipts[0]?.outcome, 'CANCEL_REQUESTED');
    await until(() => stuck.status === 'CANCELLED', 'the task to be cancelled');
    assert.ok(rolledBack.includes('rollback'));
  });

  it('BullMQ job options: mapped, or refused with a reason', async () => {
    const res = await orchestrator.scheduleTask('idioms.emails', { to: 'j@b.c' }, { jobId: 'job-1', removeOnComplete: true, backoff: { type: 'exponential', delay: 10 }, attempts: 2 });
    assert.equal(res.task.idempotencyKey, 'job-1');
    await assert.rejects(orchestrator.scheduleTask('idioms.emails', {}, { repeat: { every: 1 } }), (err: unknown) => {
      assert.ok(err instanceof SwitchyardError);
      assert.equal(err.fieldViolations[0]?.field, 'options.repeat');
      return true;
    });
    await assert.rejects(orchestrator.scheduleTask('idioms.emails', {}, { lifo: true }), /LIFO/);
    await assert.rejects(orchestrator.scheduleTask('idioms.emails', {}, { backoff: { type: 'custom' } }), /custom BullMQ backoff/);
  });
});
