// Copied into the fresh app as src/guides/scenario.ts by tests/nestjs-app/run.mjs.
// Runs every sample of the original guides (src/guides/*.ts, generated
// verbatim by samples.mjs) in a NestJS app against the real server: BullMQ
// (Redis, a plain BullMQ Worker), Temporal (dev server, Python worker) and a
// local n8n-like webhook server.
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Worker, type Job } from 'bullmq';
import IORedis from 'ioredis';
import {
  ExecutionManagerService,
  StandardizedOrchestratorService,
  SwitchyardModule,
  closeDefaultSwitchyardClient,
  type TaskInfo,
} from '@switchyard/client';
import { withSwitchyardCancellation } from '@switchyard/client/bullmq';
import { SwitchyardClient } from '@switchyard/client/core';

import * as S from './samples';

const env = (k: string): string => {
  const v = process.env[k];
  assert.ok(v, `${k} is not set (run tests/nestjs-app/run.mjs)`);
  return v;
};

async function until<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) {
      return v;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function runGuides(log: (m: string) => void = () => undefined): Promise<void> {
  assert.equal(typeof withSwitchyardCancellation, 'function', '@switchyard/client/bullmq resolves');
  const url = env('SWITCHYARD_URL');
  const prefix = env('BULL_PREFIX');
  const redis = new IORedis(env('REDIS_URL'), { maxRetriesPerRequest: null });
  const processed: string[] = [];
  // The team's BullMQ Worker, unchanged by the migration.
  const workers = ['maFile', 'nom-de-la-tache', 'preparation-migration'].map(
    (q) =>
      new Worker(
        q,
        async (job: Job) => {
          if (typeof job.data?.sleepMs === 'number') {
            await new Promise((r) => setTimeout(r, job.data.sleepMs));
          }
          processed.push(`${job.queueName}:${job.name}`);
          return { processed: job.name, data: job.data };
        },
        { connection: redis, prefix },
      ),
  );

  const { MonService } = S.orch_01;
  const { NetworkService } = S.exec_02;
  const { MigrationService } = S.orch_10;
  const scans: string[] = [];
  NetworkService.prototype.scanNetwork = async function (target: string, userId: string) {
    scans.push(`${target}/${userId}`);
    return { target, userId, hosts: 3 };
  };

  @Module({
    imports: [SwitchyardModule.forRoot({ url, executionManagerRoutes: true, cancelTimeoutMs: 15_000 })],
    providers: [MonService, NetworkService, MigrationService],
  })
  class GuideAppModule {}

  const app = await NestFactory.create(GuideAppModule, { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  const base = (await app.getUrl()).replace('[::1]', '127.0.0.1');
  const http = async (method: string, path: string): Promise<any> => {
    const res = await fetch(`${base}/internal/execution-manager${path}`, { method });
    assert.equal(res.status, 200, `${method} ${path}: ${res.status} ${await res.clone().text()}`);
    return res.json();
  };
  const orchestratorService = app.get(StandardizedOrchestratorService);
  const executionManager = app.get(ExecutionManagerService);
  const byName = async (name: string, n: number): Promise<TaskInfo[]> =>
    until(`${n} task(s) named ${name}`, async () => {
      const { tasks } = await orchestratorService.listTasks({ names: [name] });
      return tasks.length >= n && tasks;
    });
  const final = (id: string, timeoutMs = 60_000) => orchestratorService.waitForTask(id, { timeoutMs });
  const completed = async (id: string, source: string): Promise<TaskInfo> => {
    const t = await final(id);
    assert.equal(t.status, 'COMPLETED', `${t.name}: ${t.status} ${t.error ?? ''}`);
    assert.equal(t.source, source, t.name);
    return t;
  };

  try {
    assert.ok(app.get(MonService), 'MonService is injectable');

    log('simple tasks (BullMQ)');
    await S.orch_02.sample({ orchestratorService });
    for (const t of await byName('nom-de-la-tache', 2)) {
      await completed(t.id, 'BULLMQ');
    }

    log('complex workflows (Temporal)');
    await S.orch_03.sample({ orchestratorService, arg1: 'a', arg2: 2 });
    for (const t of await byName('nom-du-workflow', 2)) {
      const done = await completed(t.id, 'TEMPORAL');
      assert.deepEqual((done.result as { args: unknown[] }).args, ['a', 2]);
    }

    log('integrations (n8n): scheduled (their https://n8n.example.com URL is not reachable here)');
    await S.orch_04.sample({ orchestratorService });
    for (const t of await byName('nom-integration', 2)) {
      assert.equal(t.taskType, 'INTEGRATION');
      assert.equal(t.source, 'N8N');
    }

    log('status');
    const [someSimple] = await byName('nom-de-la-tache', 1);
    await S.orch_05a.sample({ taskId: someSimple!.id });
    await S.orch_05b.sample({ orchestratorService, taskId: someSimple!.id });
    const status = await orchestratorService.getTaskStatus(someSimple!.id);
    assert.equal(status.status, 'COMPLETED');
    assert.equal(status.source, 'BULLMQ');

    log('cancel');
    for (const variant of [(taskId: string) => S.orch_06a.sample({ taskId }), (taskId: string) => S.orch_06b.sample({ orchestratorService, taskId })]) {
      const { taskId } = await orchestratorService.scheduleTask('guide.nobody-runs-this', {});
      await variant(taskId);
      assert.equal((await orchestratorService.getTaskStatus(taskId)).status, 'CANCELLED');
    }
    // A running BullMQ job whose processor is not wrapped cannot be stopped: cancelTask says so.
    const runningJob = await orchestratorService.scheduleSimpleTask('maFile', { sleepMs: 1_500 });
    await until('the BullMQ job to run', async () => (await orchestratorService.getTaskStatus(runningJob)).status === 'RUNNING');
    assert.equal(await orchestratorService.cancelTask(runningJob), false, 'an unwrapped BullMQ job completes anyway');
    assert.equal((await orchestratorService.getTaskStatus(runningJob)).status, 'COMPLETED');

    log('migration from BullMQ: queue.add options spread into scheduleTask');
    const jobId = `guide-${randomUUID()}`;
    await S.orch_07.sample({
      payload: { from: 'queue.add' },
      options: { attempts: 2, backoff: { type: 'exponential', delay: 100 }, delay: 10, priority: 5, jobId, removeOnComplete: true, removeOnFail: 100 },
    });
    const [migrated] = (await byName('maFile', 2)).filter((t) => t.idempotencyKey === jobId);
    assert.ok(migrated, 'jobId became the idempotency key');
    assert.equal(migrated.maxAttempts, 2);
    assert.equal(migrated.priority, 5);
    await completed(migrated.id, 'BULLMQ');
    assert.ok(processed.includes('maFile:maFile'));
    await assert.rejects(
      orchestratorService.scheduleTask('maFile', {}, { repeat: { every: 1000 } } as never),
      /repeatable jobs cannot be honoured/,
    );

    log('migration from Temporal');
    const workflowId = `guide-wf-${randomUUID()}`;
    await S.orch_08.sample({ arg1: 'x', arg2: 'y', payload: { from: 'workflow.start' }, workflowId });
    const [wf] = await byName('workflowName', 1);
    await completed(wf!.id, 'TEMPORAL');

    log('migration from n8n');
    await S.orch_09.sample({ payload: { from: 'axios.post' } });
    const [hook] = await byName('integration-name', 1);
    assert.equal(hook!.source, 'N8N');

    log('MigrationService');
    const migrationWorkflowId = await app.get(MigrationService).migrerProjet('project-1', { dryRun: true });
    assert.equal(typeof migrationWorkflowId, 'string');
    const workflow = await completed(migrationWorkflowId, 'TEMPORAL');
    assert.deepEqual(workflow.result, { migrated: 'project-1', options: { dryRun: true } });
    const [prep] = await byName('preparation-migration', 1);
    await completed(prep!.id, 'BULLMQ');
    assert.equal(workflow.payload?.prepTaskId ?? (await orchestratorService.getTaskStatus(migrationWorkflowId)).payload?.prepTaskId, prep!.id);
    const [notify] = await byName('ci-cd-notification', 1);
    const delivered = await completed(notify!.id, 'N8N');
    // The n8n-like server echoes the body it received: the guide's payload, with the workflow's id.
    assert.ok(JSON.stringify(delivered.result).includes(migrationWorkflowId), JSON.stringify(delivered.result));

    log('execution manager: NetworkService.submitScan');
    const scanId = await app.get(NetworkService).submitScan({ target: '10.0.0.0/24' }, 'u-scan');
    assert.equal(typeof scanId, 'string');
    const scan = await until('the scan to complete', async () => {
      const t = await http('GET', `/tasks/${scanId}`);
      return t.status === 'COMPLETED' && t;
    });
    assert.equal(scan.id, scanId);
    assert.equal(scan.name, 'ScanTask');
    assert.equal(scan.priority, 10);
    assert.equal(scan.userId, 'u-scan');
    assert.deepEqual(scans, ['10.0.0.0/24/u-scan']);

    log('execution manager: submit, list, cancel over the routes');
    let release!: () => void;
    const slow = {
      executionManager,
      scanNetwork: (target: string) =>
        new Promise((resolve) => {
          release = () => resolve({ target });
        }),
    };
    await S.exec_01.sample(slow, { config: { target: '192.168.0.0/16' }, userId: 'u-slow' });
    const listed = await until('the slow scan to run', async () => {
      const tasks: any[] = await http('GET', '/tasks');
      return tasks.find((t) => t.userId === 'u-slow' && t.status === 'RUNNING');
    });
    assert.equal(listed.name, 'ScanTask');
    const cancelling = http('DELETE', `/tasks/${listed.id}`);
    // The work ignores its signal: it finishes when released, after the cancel was asked for.
    setTimeout(() => release(), 200);
    // Field by field: under Jest, fetch's JSON objects come from another realm.
    const answer = await cancelling;
    assert.equal(answer.id, listed.id);
    assert.equal(answer.cancelled, false);
    assert.ok(Array.isArray(await http('GET', '/logs')));
    const metrics = await http('GET', '/metrics');
    assert.equal(metrics.sessionId, executionManager.sessionId);

    log('disconnect(userId) and disconnect()');
    await S.exec_01.sample({ executionManager, scanNetwork: () => new Promise((r) => setTimeout(r, 1_000)) }, { config: { target: 't' }, userId: 'u-bye' });
    await until('the task to run', async () => ((await http('GET', '/tasks')) as any[]).some((t) => t.userId === 'u-bye' && t.status === 'RUNNING'));
    const receipts = await executionManager.disconnect('u-bye');
    assert.equal(receipts.length, 1);
    assert.equal(receipts[0]!.outcome, 'CANCEL_REQUESTED');
    await executionManager.disconnect();
  } finally {
    await app.close();
    await Promise.all(workers.map((w) => w.close()));
    await closeDefaultSwitchyardClient();
    redis.disconnect();
  }
  assert.equal(typeof SwitchyardClient, 'function', '@switchyard/client/core resolves');
}
