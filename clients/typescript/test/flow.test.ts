/**
 * Flow control from TypeScript against the real server: a concurrency
 * policy holds a key's tasks (CONCURRENCY_LIMIT, with the rule in `hold`),
 * pauseQueue holds a name's tasks (QUEUE_PAUSED) until resumeQueue, a rate
 * limit holds a task over its rate (RATE_LIMITED, with when it may start),
 * and bad input is INVALID_ARGUMENT naming the field.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardError, createWorker } from '../src/core.js';
import { startServer, until, type TestServer } from './helpers/server.js';

describe('flow', { timeout: 60_000 }, () => {
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

  it('a key at its limit waits with the rule named; pause holds a name until resumed', async () => {
    assert.equal(await client.flow.setConcurrencyPolicy('ts.flow', 1), false);
    assert.deepEqual((await client.flow.rules()).policies, [{ pattern: 'ts.flow', limit: 1, fromConfig: false }]);
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const started: string[] = [];
    const worker = createWorker({
      url: server.url,
      logger: false,
      handlers: {
        'ts.flow': async (p: { n: number }) => {
          started.push(String(p.n));
          await gate;
        },
        'ts.paused': () => undefined,
      },
    });
    try {
      await worker.waitUntilRegistered();
      const a = await client.orchestrator.scheduleSimpleTask('ts.flow', { n: 1 }, { concurrencyKey: 'tenant' });
      const b = await client.orchestrator.scheduleSimpleTask('ts.flow', { n: 2 }, { concurrencyKey: 'tenant' });
      await until(() => started.length === 1, 'the first to start');
      const held = await client.orchestrator.getTaskStatus(b);
      assert.equal(held.waitingReason, 'CONCURRENCY_LIMIT');
      assert.equal(held.concurrencyKey, 'tenant');
      assert.deepEqual(held.hold, { rule: 'ts.flow', concurrencyKey: 'tenant', limit: 1, running: 1, ahead: 0 });
      release();
      await until(async () => (await client.orchestrator.getTaskStatus(b)).status === 'COMPLETED', 'the second to run');
      assert.equal((await client.orchestrator.getTaskStatus(a)).status, 'COMPLETED');

      assert.equal(await client.flow.pauseQueue('ts.paused'), false);
      const p = await client.orchestrator.scheduleSimpleTask('ts.paused', {});
      assert.equal((await client.orchestrator.getTaskStatus(p)).waitingReason, 'QUEUE_PAUSED');
      assert.deepEqual((await client.flow.rules()).paused, ['ts.paused']);
      assert.equal(await client.flow.resumeQueue('ts.paused'), true);
      await until(async () => (await client.orchestrator.getTaskStatus(p)).status === 'COMPLETED', 'the paused task to run');
      await client.flow.deleteConcurrencyPolicy('ts.flow');
    } finally {
      release();
      await worker.close();
    }
  });

  it('a task over its rate limit waits with RATE_LIMITED and when it may start', async () => {
    // One start a minute, burst 1: the second task waits about a minute.
    assert.equal(await client.flow.setRateLimit('ts.rate', { rate: 1, intervalMs: 60_000, burst: 1 }), false);
    const started: number[] = [];
    const worker = createWorker({
      url: server.url,
      logger: false,
      handlers: { 'ts.rate': (p: { n: number }) => void started.push(p.n) },
    });
    try {
      await worker.waitUntilRegistered();
      const a = await client.orchestrator.scheduleSimpleTask('ts.rate', { n: 1 });
      const b = await client.orchestrator.scheduleSimpleTask('ts.rate', { n: 2 });
      await until(async () => (await client.orchestrator.getTaskStatus(a)).status === 'COMPLETED', 'the first to run');
      const held = await client.orchestrator.getTaskStatus(b);
      assert.equal(held.waitingReason, 'RATE_LIMITED');
      assert.equal(held.hold?.rule, 'ts.rate');
      assert.equal(held.hold?.rate, 1);
      assert.equal(held.hold?.intervalMs, 60_000);
      assert.equal(held.hold?.burst, 1);
      const wait = (held.hold?.nextStartAt?.getTime() ?? 0) - Date.now();
      assert.ok(wait > 30_000 && wait <= 60_000, `next start in ${wait} ms`);
      const rules = await client.flow.rules();
      assert.equal(rules.rateLimits.length, 1);
      assert.equal(rules.rateLimits[0].pattern, 'ts.rate');
      assert.ok(rules.rateLimits[0].tokens < 1);
      // Deleting the rate limit releases the held task at once.
      await client.flow.deleteRateLimit('ts.rate');
      await until(async () => (await client.orchestrator.getTaskStatus(b)).status === 'COMPLETED', 'the held task to run');
      assert.deepEqual(started, [1, 2]);
    } finally {
      await worker.close();
    }
    await assert.rejects(
      client.flow.setRateLimit('ts.rate', { rate: 0 }),
      (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT' && e.fieldViolations.some((v) => v.field === 'rate_limit.rate'),
    );
    await assert.rejects(
      client.flow.deleteRateLimit('never-set'),
      (e: unknown) => e instanceof SwitchyardError && e.fieldViolations.some((v) => v.field === 'pattern'),
    );
  });

  it('bad input is INVALID_ARGUMENT naming the field', async () => {
    await assert.rejects(
      client.flow.setConcurrencyPolicy('ts.x', 0),
      (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT' && e.fieldViolations.some((v) => v.field === 'policy.limit'),
    );
    await assert.rejects(
      client.flow.deleteConcurrencyPolicy('never-set'),
      (e: unknown) => e instanceof SwitchyardError && e.fieldViolations.some((v) => v.field === 'pattern'),
    );
    await assert.rejects(
      client.orchestrator.scheduleSimpleTask('ts.flow', {}, { concurrencyKey: 'k'.repeat(257) }),
      (e: unknown) => e instanceof SwitchyardError && e.fieldViolations.some((v) => v.field === 'options.concurrency_key'),
    );
  });
});
