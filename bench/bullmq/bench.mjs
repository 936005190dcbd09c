// BullMQ peer of Switchyard's benchmark (`make bench`): the same work as
// scenarios a, b, c and j (Queue.addBulk), at the same concurrency, on the
// local Redis.
//
//   node bench/bullmq/bench.mjs '<json config>'
//
// REDIS_URL (default redis://127.0.0.1:6379). Every queue lives under its
// own key prefix (swbench-<pid>), whose keys are deleted after each
// scenario and at exit. Progress goes to stderr; the result is one JSON
// object on the last line of stdout:
//   {"versions": {...}, "info": {...}, "figures": {id: [one value per run]}}
import { performance } from 'node:perf_hooks';
import { RemoteWorker } from '../lib/remote-worker.mjs';
import { createRequire } from 'node:module';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const require = createRequire(import.meta.url);
const cfg = {
  runs: 1,
  warmup_s: 0.2,
  window_s: 0.5,
  lat_warmup_s: 0.2,
  lat_window_s: 0.8,
  inflight: [1, 16, 64, 256],
  producer_inflight: 64,
  concurrency: [1, 16, 100],
  drain_n: 2000,
  drain_concurrency: 100,
  lat_concurrency: 100,
  rates: [],
  // j: jobs per Queue.addBulk call, and calls in flight.
  bulk_per_call: 100,
  bulk_inflight: [4, 16],
  // Which scenarios: add (a), e2e and drain (b), lat (c), addbulk (j). The
  // harness asks for add alone when it interleaves it with
  // Switchyard-via-BullMQ (g).
  parts: ['add', 'addbulk', 'e2e', 'drain', 'lat'],
  ...(process.argv[2]?.startsWith('{') ? JSON.parse(process.argv[2]) : {}),
};
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `swbench-${process.pid}`;
// One connection per 32 calls in flight, as the Rust load generator does.
const PER_CONNECTION = 32;

const log = (...a) => console.error('bullmq:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Connections handed to BullMQ stay ours to close: each scenario closes
// the ones it opened.
let opened = [];
function connection() {
  const c = new IORedis(REDIS_URL, { maxRetriesPerRequest: null });
  opened.push(c);
  return c;
}

async function disconnectAll() {
  const list = opened;
  opened = [];
  await Promise.all(list.map((c) => c.quit().catch(() => c.disconnect())));
}

// The parent's own connection, for SCAN/UNLINK and INFO (opened on first use).
let adminConn;
const admin = () => (adminConn ??= new IORedis(REDIS_URL, { maxRetriesPerRequest: null }));

async function flushPrefix() {
  await disconnectAll();
  let cursor = '0';
  do {
    const [next, keys] = await admin().scan(cursor, 'MATCH', `${PREFIX}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await admin().unlink(...keys);
  } while (cursor !== '0');
}

function queues(name, inflight) {
  const n = Math.max(1, Math.ceil(inflight / PER_CONNECTION));
  return Array.from({ length: n }, () => new Queue(name, { connection: connection(), prefix: PREFIX }));
}

async function closeAll(list) {
  await Promise.all(list.map((q) => q.close()));
}

// `inflight` loops adding back to back until `stop.flag`; `count.n` counts.
function producer(qs, inflight, stop, count, limit = Infinity) {
  let seq = 0;
  const loops = [];
  for (let i = 0; i < inflight; i++) {
    const q = qs[Math.floor(i / PER_CONNECTION) % qs.length];
    loops.push(
      (async () => {
        while (!stop.flag) {
          const n = seq++;
          if (n >= limit) break;
          await q.add('bench', { n });
          count.n++;
        }
      })(),
    );
  }
  return Promise.all(loops);
}

// CPU seconds (user + system) Redis has used, from INFO cpu.
async function redisCpu() {
  const info = await admin().info('cpu');
  const get = (k) => Number(new RegExp(`${k}:([0-9.]+)`).exec(info)?.[1] ?? 0);
  return get('used_cpu_sys') + get('used_cpu_user');
}

// CPU seconds this process has used.
const nodeCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// The rate of `sample().n` over the window, and the CPU per operation of
// Redis and of the Node processes (`sample().cpu`: the worker process's).
async function measure(sample, warmupS, windowS) {
  await sleep(warmupS * 1000);
  const [s1, r1, n1, t1] = [await sample(), await redisCpu(), nodeCpu(), performance.now()];
  await sleep(windowS * 1000);
  const [s2, r2, n2, t2] = [await sample(), await redisCpu(), nodeCpu(), performance.now()];
  const ops = Math.max(1, s2.n - s1.n);
  const redis = ((r2 - r1) * 1e6) / ops;
  const node = ((n2 - n1 + (s2.cpu ?? 0) - (s1.cpu ?? 0)) * 1e6) / ops;
  return { rate: ((s2.n - s1.n) * 1000) / (t2 - t1), redis_cpu_us: redis, node_cpu_us: node, total_cpu_us: redis + node };
}

let queueSeq = 0;
const qname = (tag) => `${tag}-${queueSeq++}`;

// a. Queue.add throughput at `inflight` adds in flight.
async function add(inflight) {
  const qs = queues(qname(`a${inflight}`), inflight);
  await Promise.all(qs.map((q) => q.waitUntilReady()));
  const stop = { flag: false };
  const count = { n: 0 };
  const done = producer(qs, inflight, stop, count);
  const m = await measure(async () => ({ n: count.n }), cfg.warmup_s, cfg.window_s);
  stop.flag = true;
  await done;
  await closeAll(qs);
  await flushPrefix();
  return m;
}

// j. Queue.addBulk throughput: `inflight` loops each adding `perCall` jobs
// per call, back to back; the rate counts jobs.
async function addBulk(inflight, perCall) {
  const qs = queues(qname(`j${inflight}`), inflight);
  await Promise.all(qs.map((q) => q.waitUntilReady()));
  const stop = { flag: false };
  const count = { n: 0 };
  let seq = 0;
  const loops = [];
  for (let i = 0; i < inflight; i++) {
    const q = qs[Math.floor(i / PER_CONNECTION) % qs.length];
    loops.push(
      (async () => {
        while (!stop.flag) {
          const jobs = [];
          for (let k = 0; k < perCall; k++) jobs.push({ name: 'bench', data: { n: seq++ } });
          await q.addBulk(jobs);
          count.n += perCall;
        }
      })(),
    );
  }
  const m = await measure(async () => ({ n: count.n }), cfg.warmup_s, cfg.window_s);
  stop.flag = true;
  await Promise.all(loops);
  await closeAll(qs);
  await flushPrefix();
  return m;
}

// The clock shared by the producer and the worker process:
// CLOCK_MONOTONIC, in milliseconds.
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// The BullMQ worker runs in its own Node process (this file with
// `--worker`), as it would in production: in the producer's process, its
// event loop starves behind 64 adds in flight. The parent drives it over
// IPC: start, count, record-window, stop.
const startWorker = (name, concurrency, target = 0) =>
  RemoteWorker.start(import.meta.url, { name, prefix: PREFIX, concurrency, target });

async function workerProcess() {
  let w;
  let processed = 0;
  let target = 0;
  let from = Infinity;
  let to = Infinity;
  const samples = [];
  const reply = (m) => process.send(m);
  process.on('message', async (m) => {
    try {
      if (m.op === 'start') {
        target = m.target;
        w = new Worker(
          m.name,
          async (job) => {
            const t = job.data.t;
            if (t !== undefined && t >= from && t < to) samples.push(nowMs() - t);
            if (++processed === target) reply({ op: 'reached', t: nowMs() });
            return null;
          },
          { connection: connection(), prefix: m.prefix, concurrency: m.concurrency },
        );
        w.on('error', (e) => console.error('bullmq worker:', e.message));
        await w.waitUntilReady();
        reply({ op: 'ready' });
      } else if (m.op === 'record') {
        from = m.from;
        to = m.to;
      } else if (m.op === 'count') {
        reply({ op: 'count', n: processed, cpu: nodeCpu() });
      } else if (m.op === 'stop') {
        await w?.close(true);
        await disconnectAll();
        samples.sort((a, b) => a - b);
        reply({
          op: 'stopped',
          n: processed,
          samples: samples.length,
          p50: quantile(samples, 0.5),
          p99: quantile(samples, 0.99),
          p999: quantile(samples, 0.999),
        });
        process.disconnect();
      }
    } catch (e) {
      reply({ op: m.op === 'start' ? 'ready' : 'stopped', error: String(e?.stack ?? e) });
    }
  });
}

// b. Add and process: a worker at `concurrency` with the producer running.
async function endToEnd(concurrency) {
  const name = qname(`b${concurrency}`);
  const w = await startWorker(name, concurrency);
  const qs = queues(name, cfg.producer_inflight);
  const stop = { flag: false };
  const added = { n: 0 };
  const done = producer(qs, cfg.producer_inflight, stop, added);
  const m = await measure(() => w.sample(), cfg.warmup_s, cfg.window_s);
  stop.flag = true;
  await done;
  await w.stop();
  await closeAll(qs);
  await flushPrefix();
  return m;
}

// b. Drain: `n` jobs added first (addBulk), then one worker processes them.
async function drain(n, concurrency) {
  const name = qname('drain');
  const [q] = queues(name, 1);
  for (let i = 0; i < n; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) batch.push({ name: 'bench', data: { n: j } });
    await q.addBulk(batch);
  }
  const t = nowMs();
  const w = await startWorker(name, concurrency, n);
  let timer;
  const timeout = new Promise((r) => (timer = setTimeout(() => r(null), 120_000)));
  const end = await Promise.race([w.reached, timeout]);
  clearTimeout(timer);
  const { n: processed } = await w.stop();
  await q.close();
  await flushPrefix();
  if (end === null) throw new Error(`drain: only ${processed} of ${n} jobs processed within 120 s`);
  return (n * 1000) / (end - t);
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

// c. Add-to-start latency at a fixed offered rate, open loop: every
// millisecond, every add that has come due is sent without waiting for the
// previous ones; `t` is taken just before each add.
async function latency(rate) {
  const name = qname('lat');
  const w = await startWorker(name, cfg.lat_concurrency);
  const qs = queues(name, cfg.producer_inflight);
  await Promise.all(qs.map((q) => q.waitUntilReady()));
  const duration = (cfg.lat_warmup_s + cfg.lat_window_s) * 1000;
  const start = nowMs();
  const from = start + cfg.lat_warmup_s * 1000;
  w.child.send({ op: 'record', from, to: from + cfg.lat_window_s * 1000 });
  let sent = 0;
  let errors = 0;
  const pending = new Set();
  for (;;) {
    const elapsed = nowMs() - start;
    const due = Math.floor((Math.min(elapsed, duration) / 1000) * rate);
    while (sent < due) {
      const q = qs[sent % qs.length];
      const p = q.add('bench', { t: nowMs() }).catch(() => errors++);
      pending.add(p);
      p.finally(() => pending.delete(p));
      sent++;
    }
    if (elapsed >= duration) break;
    await sleep(1);
  }
  await Promise.all([...pending]);
  const deadline = performance.now() + 30_000;
  let started = await w.count();
  while (started < sent - errors && performance.now() < deadline) {
    await sleep(5);
    started = await w.count();
  }
  const l = await w.stop();
  await closeAll(qs);
  await flushPrefix();
  if (started < sent - errors) throw new Error(`latency: ${started} of ${sent} jobs started within 30 s`);
  if (errors) throw new Error(`latency: ${errors} adds failed`);
  if (!l.samples) throw new Error('latency: no sample was recorded');
  return { p50: l.p50, p99: l.p99, p999: l.p999, offered: (sent * 1000) / duration };
}

async function main() {
  const figures = {};
  const push = (id, v) => (figures[id] ??= []).push(v);
  const pushRate = (id, m) => {
    push(id, m.rate);
    push(`${id}.redis_cpu_us`, m.redis_cpu_us);
    push(`${id}.node_cpu_us`, m.node_cpu_us);
    push(`${id}.total_cpu_us`, m.total_cpu_us);
  };
  await flushPrefix();
  for (let run = 1; run <= cfg.runs; run++) {
    const part = (p) => cfg.parts.includes(p);
    for (const c of part('add') ? cfg.inflight : []) {
      log(`a. add, ${c} in flight, run ${run}`);
      pushRate(`add.c${c}`, await add(c));
    }
    for (const c of part('addbulk') ? cfg.bulk_inflight : []) {
      log(`j. addBulk of ${cfg.bulk_per_call}, ${c} in flight, run ${run}`);
      pushRate(`addbulk${cfg.bulk_per_call}.c${c}`, await addBulk(c, cfg.bulk_per_call));
    }
    for (const c of part('e2e') ? cfg.concurrency : []) {
      log(`b. add and process, concurrency ${c}, run ${run}`);
      pushRate(`e2e.c${c}`, await endToEnd(c));
    }
    if (part('drain')) {
      log(`b. drain of ${cfg.drain_n}, concurrency ${cfg.drain_concurrency}, run ${run}`);
      push(`drain.c${cfg.drain_concurrency}`, await drain(cfg.drain_n, cfg.drain_concurrency));
    }
    for (const { percent, rate } of part('lat') ? cfg.rates : []) {
      log(`c. add-to-start at ${rate}/s, run ${run}`);
      const l = await latency(rate);
      push(`lat.${percent}.p50`, l.p50);
      push(`lat.${percent}.p99`, l.p99);
      push(`lat.${percent}.p999`, l.p999);
      push(`lat.${percent}.offered`, l.offered);
    }
  }
  const info = await admin().info('server');
  const redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown';
  const appendonly = (await admin().config('GET', 'appendonly'))[1];
  const appendfsync = (await admin().config('GET', 'appendfsync'))[1];
  const save = (await admin().config('GET', 'save'))[1];
  await flushPrefix();
  await admin().quit();
  const result = {
    versions: {
      bullmq: require('bullmq/package.json').version,
      ioredis: require('ioredis/package.json').version,
      node: process.version,
      redis: redisVersion,
    },
    info: {
      redis: { url: REDIS_URL.replace(/\/\/[^@]*@/, '//'), appendonly, appendfsync, save: save || '(none)' },
      job_options: 'defaults (completed jobs are kept, as Switchyard keeps finished tasks)',
      connections: `one per ${PER_CONNECTION} adds in flight`,
    },
    figures,
  };
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

if (process.argv[2] === '--worker') {
  workerProcess();
} else {
  main().catch(async (e) => {
    console.error('bullmq: failed:', e);
    try {
      await flushPrefix();
    } catch {}
    process.exit(1);
  });
}
