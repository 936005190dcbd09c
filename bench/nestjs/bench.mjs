#!/usr/bin/env node
// scheduleSimpleTask (the TypeScript client) against BullMQ's Queue.add from
// the same process on the same Redis: sequential, and 32 in flight. Needs a
// running server (with its BullMQ backend on the queue to compare with
// Queue.add; see README in this folder): SWITCHYARD_URL, REDIS_URL,
// BENCH_QUEUE, BULL_PREFIX, N; CLIENT_DIST another build of the client's
// CommonJS output (default clients/typescript/dist/cjs); MODE picks what to time (`queue`, `ts` or
// both, comma-separated; default both); JSON=1 prints one JSON line per
// measurement instead of text (run.mjs reads those).
//   node bench/nestjs/bench.mjs
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLIENT = join(dirname(fileURLToPath(import.meta.url)), '../../clients/typescript');
const require = createRequire(join(CLIENT, 'package.json'));
const { SwitchyardClient } = require(join(process.env.CLIENT_DIST ?? join(CLIENT, 'dist/cjs'), 'core.js'));

const url = process.env.SWITCHYARD_URL ?? 'http://127.0.0.1:50051';
const redis = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const queue = process.env.BENCH_QUEUE ?? 'bench-nestjs';
const prefix = process.env.BULL_PREFIX ?? 'bull';
const N = Number(process.env.N ?? 2000);
const WARMUP = Number(process.env.WARMUP ?? 5000);
const modes = new Set((process.env.MODE ?? 'queue,ts').split(','));
const json = process.env.JSON === '1';

async function measure(label, call) {
  for (let i = 0; i < WARMUP; i++) await call(i); // warm-up
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await call(i);
  const seq = Number(process.hrtime.bigint() - t) / 1e6 / N;
  t = process.hrtime.bigint();
  let next = 0;
  await Promise.all(Array.from({ length: 32 }, async () => { while (next < N) await call(next++); }));
  const rate = N / (Number(process.hrtime.bigint() - t) / 1e9);
  if (json) {
    console.log(JSON.stringify({ client: label, seq_ms: seq, rate32: rate, n: N }));
  } else {
    console.log(`${label}: sequential ${seq.toFixed(3)} ms/call, 32 in flight ${Math.round(rate)}/s`);
  }
}

// The payload is `{ n: i }`, as the Rust client's (bench --client-timing).
let q;
if (modes.has('queue')) {
  const { Queue } = require('bullmq');
  q = new Queue(queue, { connection: { host: redis.hostname, port: Number(redis.port || 6379) }, prefix });
  await measure('Queue.add', (i) => q.add('job', { n: i }));
}
if (modes.has('ts')) {
  // TS_TRANSPORT=grpc-js times the calls through grpc-js instead of the
  // client's default HTTP/2 transport (SwitchyardConnectionOptions.transport).
  const client = new SwitchyardClient({ url, ...(process.env.TS_TRANSPORT ? { transport: process.env.TS_TRANSPORT } : {}) });
  await client.waitForServing();
  await measure('scheduleSimpleTask', (i) => client.orchestrator.scheduleSimpleTask(queue, { n: i }));
  await client.close();
}
if (q) {
  // The adds' jobs, and the server's if its BullMQ backend shares the prefix.
  await q.obliterate({ force: true }).catch(() => undefined);
  await q.close();
}
