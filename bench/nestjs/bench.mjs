#!/usr/bin/env node
// scheduleSimpleTask (the TypeScript client) against BullMQ's Queue.add from
// the same process on the same Redis: sequential, and 32 in flight. Needs a
// running server with its BullMQ backend on the queue (see README in this
// folder): SWITCHYARD_URL, REDIS_URL, BENCH_QUEUE, BULL_PREFIX, N.
//   node bench/nestjs/bench.mjs
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLIENT = join(dirname(fileURLToPath(import.meta.url)), '../../clients/typescript');
const require = createRequire(join(CLIENT, 'package.json'));
const { SwitchyardClient } = require(join(CLIENT, 'dist/cjs/core.js'));
const { Queue } = require('bullmq');

const url = process.env.SWITCHYARD_URL ?? 'http://127.0.0.1:50051';
const queue = process.env.BENCH_QUEUE ?? 'bench-nestjs';
const prefix = process.env.BULL_PREFIX ?? 'bull';
const N = Number(process.env.N ?? 2000);

async function measure(label, call) {
  for (let i = 0; i < 200; i++) await call(i); // warm-up
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await call(i);
  const seq = Number(process.hrtime.bigint() - t) / 1e6 / N;
  t = process.hrtime.bigint();
  let next = 0;
  await Promise.all(Array.from({ length: 32 }, async () => { while (next < N) await call(next++); }));
  const rate = N / (Number(process.hrtime.bigint() - t) / 1e9);
  console.log(`${label}: sequential ${seq.toFixed(3)} ms/call, 32 in flight ${Math.round(rate)}/s`);
}

const client = new SwitchyardClient({ url });
await client.waitForServing();
const q = new Queue(queue, { connection: { host: '127.0.0.1', port: 6379 }, prefix });
await measure('Queue.add', (i) => q.add('job', { i }));
await measure('scheduleSimpleTask', (i) => client.orchestrator.scheduleSimpleTask(queue, { i }));
await q.obliterate({ force: true }).catch(() => undefined);
await q.close();
await client.close();
