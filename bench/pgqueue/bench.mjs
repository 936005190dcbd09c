// graphile-worker peer of Switchyard's benchmark on PostgreSQL (`make bench`,
// parts pa, pb, pc): the same work as those scenarios, at the same
// concurrency, on the same database.
//
//   node bench/pgqueue/bench.mjs '<json config>'
//
// DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test). Every
// measurement gets a schema of its own (swbench_gw_<pid>_<n>, graphile-worker's
// migrations applied), dropped right after it and, for any left over, at
// exit. Progress goes to stderr; the result is one JSON object on the last
// line of stdout, as bench/bullmq/bench.mjs prints it:
//   {"versions": {...}, "info": {...}, "figures": {id: [one value per run]}}
import { performance } from 'node:perf_hooks';
import { RemoteWorker } from '../lib/remote-worker.mjs';
import { createRequire } from 'node:module';
import { readdirSync, readFileSync } from 'node:fs';
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import pg from 'pg';

const require = createRequire(import.meta.url);
const cfg = {
  runs: 1,
  warmup_s: 0.2,
  window_s: 0.5,
  lat_warmup_s: 0.2,
  lat_window_s: 0.8,
  inflight: [1, 16, 64, 256],
  producer_inflight: 64,
  concurrency: [100],
  drain_n: 2000,
  drain_concurrency: 100,
  lat_concurrency: 100,
  rates: [],
  // node-postgres runs one query at a time per connection: the producer's
  // pool has min(in flight, add_pool) connections, the worker's
  // min(concurrency, worker_pool) (graphile-worker warns below its
  // concurrency; PostgreSQL's max_connections is 100 here).
  add_pool: 32,
  worker_pool: 40,
  // Which scenarios: add (pa), e2e and drain (pb), lat (pc).
  parts: ['add', 'e2e', 'drain', 'lat'],
  ...(process.argv[2]?.startsWith('{') ? JSON.parse(process.argv[2]) : {}),
};
const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const TASK = 'bench';

const log = (...a) => console.error('graphile-worker:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// graphile-worker logs every worker's start at info: keep warnings and errors.
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`graphile-worker ${level}: ${message}`);
});

// The parent's own connection, for schemas (opened on first use).
let adminPool;
const admin = () => (adminPool ??= new pg.Pool({ connectionString: DATABASE_URL, max: 1 }));
const quote = (s) => `"${s.replace(/"/g, '""')}"`;

let schemaSeq = 0;
const schemas = new Set();
async function freshSchema() {
  const s = `swbench_gw_${process.pid}_${schemaSeq++}`;
  schemas.add(s);
  await admin().query(`DROP SCHEMA IF EXISTS ${quote(s)} CASCADE`);
  const utils = await makeWorkerUtils({ connectionString: DATABASE_URL, schema: s, logger, maxPoolSize: 1 });
  await utils.migrate();
  await utils.release();
  return s;
}

async function dropSchema(s) {
  await admin().query(`DROP SCHEMA IF EXISTS ${quote(s)} CASCADE`);
  schemas.delete(s);
}

async function dropAll() {
  for (const s of [...schemas]) await dropSchema(s);
}

// CPU seconds (user + system) of every `postgres` process (the backends of
// every connection, the WAL writer, the checkpointer...): PostgreSQL's side
// of the work. Backends that exit inside a window take their CPU with them;
// the connections measured here stay open across the windows.
const TICKS = 100;
function postgresCpu() {
  let total = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${d}/stat`, 'utf8');
    } catch {
      continue;
    }
    const close = stat.lastIndexOf(')');
    if (stat.slice(stat.indexOf('(') + 1, close) !== 'postgres') continue;
    const f = stat.slice(close + 2).split(' ');
    total += (Number(f[11]) + Number(f[12])) / TICKS;
  }
  return total;
}

// CPU seconds this process has used.
const nodeCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// The rate of `sample().n` over the window, and the CPU per operation of
// PostgreSQL and of the Node processes (`sample().cpu`: the worker process's).
async function measure(sample, warmupS, windowS) {
  await sleep(warmupS * 1000);
  const [s1, p1, n1, t1] = [await sample(), postgresCpu(), nodeCpu(), performance.now()];
  await sleep(windowS * 1000);
  const [s2, p2, n2, t2] = [await sample(), postgresCpu(), nodeCpu(), performance.now()];
  const ops = Math.max(1, s2.n - s1.n);
  const db = ((p2 - p1) * 1e6) / ops;
  const node = ((n2 - n1 + (s2.cpu ?? 0) - (s1.cpu ?? 0)) * 1e6) / ops;
  return { rate: ((s2.n - s1.n) * 1000) / (t2 - t1), db_cpu_us: db, node_cpu_us: node, total_cpu_us: db + node };
}

async function utilsFor(schema, inflight) {
  return makeWorkerUtils({
    connectionString: DATABASE_URL,
    schema,
    logger,
    maxPoolSize: Math.max(1, Math.min(inflight, cfg.add_pool)),
  });
}

// `inflight` loops adding back to back until `stop.flag`; `count.n` counts.
function producer(utils, inflight, stop, count, limit = Infinity) {
  let seq = 0;
  const loops = [];
  for (let i = 0; i < inflight; i++) {
    loops.push(
      (async () => {
        while (!stop.flag) {
          const n = seq++;
          if (n >= limit) break;
          await utils.addJob(TASK, { n });
          count.n++;
        }
      })(),
    );
  }
  return Promise.all(loops);
}

// pa. addJob throughput at `inflight` adds in flight.
async function add(inflight) {
  const schema = await freshSchema();
  const utils = await utilsFor(schema, inflight);
  const stop = { flag: false };
  const count = { n: 0 };
  const done = producer(utils, inflight, stop, count);
  const m = await measure(async () => ({ n: count.n }), cfg.warmup_s, cfg.window_s);
  stop.flag = true;
  await done;
  await utils.release();
  await dropSchema(schema);
  return m;
}

// The clock shared by the producer and the worker process:
// CLOCK_MONOTONIC, in milliseconds.
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// The graphile-worker runner lives in its own Node process (this file with
// `--worker`), as it would in production and as the BullMQ peer's does. The
// parent drives it over IPC (bench/lib/remote-worker.mjs): start, count,
// record-window, stop.
const startWorker = (schema, concurrency, target = 0) =>
  RemoteWorker.start(import.meta.url, { schema, concurrency, target, pool: cfg.worker_pool });

async function workerProcess() {
  let runner;
  let processed = 0;
  let target = 0;
  let from = Infinity;
  let to = Infinity;
  const samples = [];
  const reply = (m) => process.send(m);
  // The parent gone (finished, or killed at its timeout), this process
  // ends too instead of holding its connections; after `stop` it ends here.
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m) => {
    try {
      if (m.op === 'start') {
        target = m.target;
        runner = await run({
          connectionString: DATABASE_URL,
          schema: m.schema,
          concurrency: m.concurrency,
          maxPoolSize: Math.max(1, Math.min(m.concurrency, m.pool)),
          noHandleSignals: true,
          logger,
          taskList: {
            [TASK]: async (payload) => {
              const t = payload?.t;
              if (t !== undefined && t >= from && t < to) samples.push(nowMs() - t);
              if (++processed === target) reply({ op: 'reached', t: nowMs() });
            },
          },
        });
        reply({ op: 'ready' });
      } else if (m.op === 'record') {
        from = m.from;
        to = m.to;
      } else if (m.op === 'count') {
        reply({ op: 'count', n: processed, cpu: nodeCpu() });
      } else if (m.op === 'stop') {
        await runner?.stop();
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

// pb. Add and process: a worker at `concurrency` with the producer running.
async function endToEnd(concurrency) {
  const schema = await freshSchema();
  const w = await startWorker(schema, concurrency);
  const utils = await utilsFor(schema, cfg.producer_inflight);
  const stop = { flag: false };
  const added = { n: 0 };
  const done = producer(utils, cfg.producer_inflight, stop, added);
  const m = await measure(() => w.sample(), cfg.warmup_s, cfg.window_s);
  stop.flag = true;
  await done;
  await w.stop();
  await utils.release();
  await dropSchema(schema);
  return m;
}

// pb. Drain: `n` jobs added first (add_jobs, 1,000 a call), then one worker
// processes them.
async function drain(n, concurrency) {
  const schema = await freshSchema();
  const s = quote(schema);
  for (let i = 0; i < n; i += 1000) {
    await admin().query(
      `SELECT count(*) FROM ${s}.add_jobs(ARRAY(
         SELECT ROW($1::text, json_build_object('n', g), NULL, NULL, NULL, NULL, NULL, NULL)::${s}.job_spec
         FROM generate_series($2::int, $3::int) g))`,
      [TASK, i, Math.min(n, i + 1000) - 1],
    );
  }
  const t = nowMs();
  const w = await startWorker(schema, concurrency, n);
  let timer;
  const timeout = new Promise((r) => (timer = setTimeout(() => r(null), 120_000)));
  const end = await Promise.race([w.reached, timeout]);
  clearTimeout(timer);
  const { n: processed } = await w.stop();
  await dropSchema(schema);
  if (end === null) throw new Error(`drain: only ${processed} of ${n} jobs processed within 120 s`);
  return (n * 1000) / (end - t);
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

// pc. Add-to-start latency at a fixed offered rate, open loop: every
// millisecond, every add that has come due is sent without waiting for the
// previous ones; `t` is taken just before each add.
async function latency(rate) {
  const schema = await freshSchema();
  const w = await startWorker(schema, cfg.lat_concurrency);
  const utils = await utilsFor(schema, cfg.producer_inflight);
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
      const p = utils.addJob(TASK, { t: nowMs() }).catch(() => errors++);
      pending.add(p);
      p.finally(() => pending.delete(p));
      sent++;
    }
    if (elapsed >= duration) break;
    await sleep(1);
  }
  await Promise.all([...pending]);
  // Beyond graphile-worker's own maximum the backlog takes a while to run
  // out: up to 3 minutes.
  const deadline = performance.now() + 180_000;
  let started = await w.count();
  while (started < sent - errors && performance.now() < deadline) {
    await sleep(5);
    started = await w.count();
  }
  const l = await w.stop();
  await utils.release();
  await dropSchema(schema);
  if (started < sent - errors) throw new Error(`latency: ${started} of ${sent} jobs started within 180 s`);
  if (errors) throw new Error(`latency: ${errors} adds failed`);
  if (!l.samples) throw new Error('latency: no sample was recorded');
  return { p50: l.p50, p99: l.p99, p999: l.p999, offered: (sent * 1000) / duration };
}

async function main() {
  const figures = {};
  const push = (id, v) => (figures[id] ??= []).push(v);
  const pushRate = (id, m) => {
    push(id, m.rate);
    push(`${id}.db_cpu_us`, m.db_cpu_us);
    push(`${id}.node_cpu_us`, m.node_cpu_us);
    push(`${id}.total_cpu_us`, m.total_cpu_us);
  };
  for (let run = 1; run <= cfg.runs; run++) {
    const part = (p) => cfg.parts.includes(p);
    for (const c of part('add') ? cfg.inflight : []) {
      log(`pa. addJob, ${c} in flight, run ${run}`);
      pushRate(`add.c${c}`, await add(c));
    }
    for (const c of part('e2e') ? cfg.concurrency : []) {
      log(`pb. add and process, concurrency ${c}, run ${run}`);
      pushRate(`e2e.c${c}`, await endToEnd(c));
    }
    if (part('drain')) {
      log(`pb. drain of ${cfg.drain_n}, concurrency ${cfg.drain_concurrency}, run ${run}`);
      push(`drain.c${cfg.drain_concurrency}`, await drain(cfg.drain_n, cfg.drain_concurrency));
    }
    for (const { percent, rate } of part('lat') ? cfg.rates : []) {
      log(`pc. add-to-start at ${rate}/s, run ${run}`);
      const l = await latency(rate);
      push(`lat.${percent}.p50`, l.p50);
      push(`lat.${percent}.p99`, l.p99);
      push(`lat.${percent}.p999`, l.p999);
      push(`lat.${percent}.offered`, l.offered);
    }
  }
  const settings = {};
  for (const k of ['server_version', 'synchronous_commit', 'fsync', 'max_connections', 'shared_buffers']) {
    settings[k] = (await admin().query(`SHOW ${k}`)).rows[0][k];
  }
  await dropAll();
  await admin().end();
  const result = {
    versions: {
      'graphile-worker': require('graphile-worker/package.json').version,
      pg: require('pg/package.json').version,
      node: process.version,
      postgresql: settings.server_version,
    },
    info: {
      postgresql: { url: DATABASE_URL.replace(/\/\/[^@]*@/, '//'), ...settings },
      job_options: 'defaults (a completed job is deleted; Switchyard keeps finished tasks)',
      connections: `producer: min(in flight, ${cfg.add_pool}); worker: min(concurrency, ${cfg.worker_pool})`,
    },
    figures,
  };
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

if (process.argv[2] === '--worker') {
  workerProcess();
} else {
  main().catch(async (e) => {
    console.error('graphile-worker: failed:', e);
    try {
      await dropAll();
    } catch {}
    process.exit(1);
  });
}
