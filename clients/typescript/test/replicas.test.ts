/**
 * Several replicas' URLs: a client and a worker given a dead URL first use
 * the live one (IP literals make one round_robin channel, host names a
 * channel per URL), and two replicas on PostgreSQL (`DATABASE_URL`, default
 * the local `test` database) ride a `kill -9` of the leader.
 *
 * Without PostgreSQL (or psql) the failover test skips with a message,
 * except when `CI=true`: then it fails.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardConnection, SwitchyardError, createWorker, type TaskInfo } from '../src/core.js';
import { freePort, startServer, until, type TestServer } from './helpers/server.js';

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';

function psql(sql: string): string {
  return execFileSync('psql', [DATABASE_URL, '-qAtc', sql], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether PostgreSQL answers through psql; under CI a missing one fails the suite instead. */
function postgresAvailable(): boolean {
  try {
    return psql('SELECT 1').trim() === '1';
  } catch (err) {
    if (process.env.CI === 'true') {
      throw new Error(`the failover test needs PostgreSQL at ${DATABASE_URL} and psql`, { cause: err });
    }
    return false;
  }
}

/** `fn()`, again while it fails with a transient error (UNAVAILABLE, ...), until `timeoutMs`. */
async function retrying<T>(what: string, fn: () => Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof SwitchyardError && err.transient) || Date.now() > deadline) {
        throw new Error(`${what}: ${String(err)}`, { cause: err });
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Polls the task's status (retrying transient errors) until it is final. */
async function finalStatus(client: SwitchyardClient, taskId: string, timeoutMs = 20_000): Promise<TaskInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const t = await retrying(`status of ${taskId}`, () => client.orchestrator.getTaskStatus(taskId, { timeoutMs: 2_000 }), timeoutMs);
    if (t.isFinal) {
      return t;
    }
    if (Date.now() > deadline) {
      throw new Error(`task ${taskId} is still ${t.status} after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('several replicas’ URLs, a dead one first', { timeout: 120_000 }, () => {
  let server: TestServer;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  for (const [kind, host] of [
    ['IP literals: one round_robin channel', '127.0.0.1'],
    ['host names: a channel per URL', 'localhost'],
  ] as const) {
    it(`schedules, reads the status and runs a worker (${kind})`, async () => {
      const dead = await freePort();
      const url = `http://${host}:${dead},http://${host}:${server.port}`;
      const client = new SwitchyardClient({ url, callTimeoutMs: 10_000 });
      const name = `replicas.${host === 'localhost' ? 'names' : 'ips'}`;
      const worker = createWorker({ url, logger: false, handlers: { [name]: (p: { n: number }) => ({ doubled: p.n * 2 }) } });
      try {
        assert.deepEqual(client.connection.targets, [`${host}:${dead}`, `${host}:${server.port}`]);
        assert.equal(
          client.connection.target,
          host === '127.0.0.1' ? `ipv4:127.0.0.1:${dead},127.0.0.1:${server.port}` : `localhost:${dead},localhost:${server.port}`,
        );
        await client.waitForServing(10_000);
        // Before the worker registers: the task waits, its status reads.
        const first = await client.orchestrator.scheduleTask(name, { n: 1 });
        const pending = await client.orchestrator.getTaskStatus(first.taskId);
        assert.equal(pending.id, first.taskId);
        assert.equal(pending.name, name);
        await worker.waitUntilRegistered(10_000);
        const done = await client.orchestrator.waitForTask(first.taskId, { timeoutMs: 10_000 });
        assert.equal(done.status, 'COMPLETED');
        assert.deepEqual(done.result, { doubled: 2 });
        // Every call lands: none goes to the dead URL.
        for (let n = 2; n <= 6; n++) {
          const { taskId } = await client.orchestrator.scheduleTask(name, { n });
          assert.deepEqual((await finalStatus(client, taskId, 10_000)).result, { doubled: n * 2 });
        }
      } finally {
        await worker.close();
        await client.close();
      }
    });
  }

  it('takes the URLs as an array too, and a bare ipv4: list as one target', async () => {
    const dead = await freePort();
    const client = new SwitchyardClient({ url: [`http://127.0.0.1:${dead}`, server.url], callTimeoutMs: 10_000 });
    const conn = new SwitchyardConnection({ url: `ipv4:127.0.0.1:${server.port},127.0.0.1:${dead}` });
    try {
      assert.equal(client.connection.target, `ipv4:127.0.0.1:${dead},127.0.0.1:${server.port}`);
      const { taskId } = await client.orchestrator.scheduleTask('replicas.array', {});
      assert.equal((await client.orchestrator.getTaskStatus(taskId)).id, taskId);
      assert.deepEqual(conn.targets, [`ipv4:127.0.0.1:${server.port},127.0.0.1:${dead}`]);
      assert.equal(await conn.health(), 'SERVING');
    } finally {
      await client.close();
      conn.close();
    }
  });
});

const havePostgres = postgresAvailable();
if (!havePostgres) {
  console.warn(`skipping the failover test: no PostgreSQL at ${DATABASE_URL} (or no psql)`);
}

describe('two replicas on PostgreSQL, the leader killed', { timeout: 180_000, skip: !havePostgres }, () => {
  const schema = `cl_${randomUUID().replaceAll('-', '')}`;
  const replicas: TestServer[] = [];

  before(async () => {
    for (const id of ['r1', 'r2']) {
      replicas.push(
        await startServer({
          persistent: true,
          replica: true,
          env: {
            SWITCHYARD_STORE__URL: DATABASE_URL,
            SWITCHYARD_STORE__SCHEMA: schema,
            SWITCHYARD_CLUSTER__LEASE_TTL: '1s',
            SWITCHYARD_CLUSTER__REPLICA_ID: id,
            SWITCHYARD_ADMIN__LISTEN: '127.0.0.1:0',
            SWITCHYARD_SCHEDULER__LEASE_TTL: '3s',
            SWITCHYARD_SCHEDULER__HEARTBEAT_INTERVAL: '500ms',
          },
        }),
      );
    }
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    try {
      psql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    } catch (err) {
      console.warn(`could not drop the schema ${schema}: ${String(err)}`);
    }
  });

  /** The index of the replica that answers SERVING (the leader). */
  async function leader(timeoutMs = 20_000): Promise<number> {
    let found = -1;
    await until(
      async () => {
        for (const [i, r] of replicas.entries()) {
          const conn = new SwitchyardConnection({ url: r.url });
          try {
            if ((await conn.health('', { timeoutMs: 500 })) === 'SERVING') {
              found = i;
              return true;
            }
          } catch {
            // dead, or not up yet
          } finally {
            conn.close();
          }
        }
        return false;
      },
      'a replica to answer SERVING',
      timeoutMs,
    );
    return found;
  }

  it('a client and a worker given both URLs carry on after a kill -9 of the leader', async () => {
    const first = await leader();
    const url = replicas.map((r) => r.url).join(',');
    const client = new SwitchyardClient({ url, callTimeoutMs: 5_000 });
    const name = 'replicas.failover';
    const registrations: string[] = [];
    const worker = createWorker({ url, logger: false, handlers: { [name]: (p: { n: number }) => ({ n: p.n }) } });
    worker.on('registered', ({ workerId }: { workerId: string }) => registrations.push(workerId));
    const run = async (n: number): Promise<void> => {
      // The same idempotency key on every try: a retried schedule never makes a second task.
      const key = `${schema}-${n}`;
      const { taskId } = await retrying(`schedule ${n}`, () => client.orchestrator.scheduleTask(name, { n }, { idempotencyKey: key }));
      const t = await finalStatus(client, taskId);
      assert.equal(t.status, 'COMPLETED', `task ${n}: ${JSON.stringify(t)}`);
      assert.deepEqual(t.result, { n });
    };
    // A watch of the tasks' completions, opened before the kill.
    const completed = new Set<number>();
    let watchError: unknown;
    const watch = client.orchestrator.watchTasks({ names: [name] }).subscribe({
      next: (item) => {
        if (item.type === 'event' && item.task.status === 'COMPLETED') {
          completed.add((item.task.result as { n: number }).n);
        }
      },
      error: (err: unknown) => (watchError = err),
    });
    try {
      await worker.waitUntilRegistered(20_000);
      await run(1);
      assert.equal(registrations.length, 1);

      await replicas[first]?.kill();
      const killedAt = Date.now();
      const next = await leader();
      assert.notEqual(next, first, 'the standby took over');
      const tookOverMs = Date.now() - killedAt;

      // The worker's stream went through the dead leader (directly, or
      // forwarded by the standby): it registers again, with the survivor.
      await until(() => registrations.length >= 2 && worker.isRegistered, 'the worker to register again', 20_000);
      for (let n = 2; n <= 4; n++) {
        await run(n);
      }
      assert.ok(tookOverMs < 15_000, `took over after ${tookOverMs} ms`);
      // The watch resumed on the survivor and missed nothing.
      await until(() => [1, 2, 3, 4].every((n) => completed.has(n)) || watchError !== undefined, 'the watch to see every completion', 20_000);
      assert.equal(watchError, undefined);
    } finally {
      watch.unsubscribe();
      await worker.close();
      await client.close();
    }
  });
});
