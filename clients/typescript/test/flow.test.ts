/**
 * Flow control from TypeScript against the real server: a concurrency
 * policy holds a key's tasks (CONCURRENCY_LIMIT, with the rule in `hold`),
 * pauseQueue holds a name's tasks (QUEUE_PAUSED) until resumeQueue, and
 * bad input is INVALID_ARGUMENT naming the field.
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
