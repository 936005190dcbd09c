/**
 * Schedules from TypeScript against the real server: BullMQ's
 * upsertJobScheduler shape creates and then replaces a scheduler, its fires
 * are ordinary tasks a worker runs, and removeJobScheduler deletes it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardError, createWorker } from '../src/core.js';
import { startServer, until, type TestServer } from './helpers/server.js';

describe('schedules', { timeout: 60_000 }, () => {
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

  it('upsertJobScheduler fires a task every second; a second upsert replaces it', async () => {
    const seen: string[] = [];
    const worker = createWorker({
      url: server.url,
      logger: false,
      handlers: { 'ts.tick': (p: { n: number }) => void seen.push(String(p.n)) },
    });
    try {
      await worker.waitUntilRegistered();
      const made = await client.schedules.upsertJobScheduler(
        'ts-every-second',
        { pattern: '* * * * * *', overlap: 'allowAll' },
        { name: 'ts.tick', data: { n: 1 } },
      );
      assert.equal(made.name, 'ts.tick');
      assert.equal(made.next.length, 5);
      await until(() => seen.length >= 2, 'two fires');
      const replaced = await client.schedules.upsertJobScheduler('ts-every-second', { every: 3_600_000 }, { name: 'ts.tick', data: { n: 2 } });
      assert.equal(replaced.every, 3_600_000);
      assert.equal(replaced.pattern, undefined);
      assert.ok(replaced.fires >= 2);
      const listed = await client.schedules.getJobSchedulers();
      assert.deepEqual(
        listed.map((s) => s.id),
        ['ts-every-second'],
      );
      const fired = await client.orchestrator.listTasks({ scheduleId: 'ts-every-second' });
      assert.ok(fired.tasks.length >= 2);
      assert.ok(fired.tasks.every((t) => t.labels['switchyard.schedule'] === 'ts-every-second'));
      assert.equal(await client.schedules.removeJobScheduler('ts-every-second'), true);
      assert.equal(await client.schedules.removeJobScheduler('ts-every-second'), false);
      assert.equal(await client.schedules.getJobScheduler('ts-every-second'), undefined);
    } finally {
      await worker.close();
    }
  });

  it('bad input is INVALID_ARGUMENT naming the field', async () => {
    await assert.rejects(
      client.schedules.upsertJobScheduler('ts-bad', { pattern: 'not a cron' }, { name: 'ts.tick' }),
      (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT' && e.fieldViolations.some((v) => v.field === 'spec.cron'),
    );
    await assert.rejects(
      client.schedules.upsertJobScheduler('ts-bad', { pattern: '* * * * *', tz: 'Nowhere/Atlantis' }, { name: 'ts.tick' }),
      (e: unknown) => e instanceof SwitchyardError && e.fieldViolations.some((v) => v.field === 'spec.time_zone'),
    );
    await assert.rejects(
      client.schedules.upsertJobScheduler('ts-bad', {}, { name: 'ts.tick' }),
      (e: unknown) => e instanceof SwitchyardError && e.code === 'INVALID_ARGUMENT',
    );
  });
});
