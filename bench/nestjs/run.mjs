#!/usr/bin/env node
// The TypeScript client's overhead per call, measured in one command: for
// each engine (the embedded one, and the BullMQ backend on the same Redis as
// Queue.add) a fresh release server on a free port, then the Rust client
// (`bench --client-timing`) and the TypeScript client (`bench.mjs`, a Node
// process of its own) against it, sequential and 32 in flight; Queue.add
// once per run. RUNS runs; prints each figure's median (min–max) and the
// TypeScript client's overhead over the Rust client's, and stops every
// server it started.
//
//   make bench-client                     # builds first
//   node bench/nestjs/run.mjs             # with the binaries already built
//
// Environment: RUNS (3), N (calls timed per measurement, 2000), WARMUP
// (untimed sequential calls first, for both clients, 5000), ENGINES
// (`embedded,bullmq`), STORE (`memory`: `serve --memory`; `sqlite`: a fresh
// data directory, fsync per group commit), REDIS_URL
// (redis://127.0.0.1:6379), SWITCHYARD_BIN and BENCH_BIN (default
// $CARGO_TARGET_DIR/release/{switchyard,bench}, CARGO_TARGET_DIR defaulting
// to target/), CLIENT_DIST (another build of the client's dist/cjs, to
// compare before and after a change), PROFILE_DIR (the TypeScript client's Node runs with
// --cpu-prof there), JSON_OUT (a file for every run's figures).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');
const CLIENT = join(REPO, 'clients/typescript');
const require = createRequire(join(CLIENT, 'package.json'));

const TARGET = resolve(REPO, process.env.CARGO_TARGET_DIR ?? 'target');
const SERVER_BIN = process.env.SWITCHYARD_BIN ?? join(TARGET, 'release/switchyard');
const BENCH_BIN = process.env.BENCH_BIN ?? join(TARGET, 'release/bench');
const RUNS = Math.max(1, Number(process.env.RUNS ?? 3));
const N = Math.max(1, Number(process.env.N ?? 2000));
const WARMUP = Math.max(0, Number(process.env.WARMUP ?? 5000));
const ENGINES = (process.env.ENGINES ?? 'embedded,bullmq').split(',').filter(Boolean);
const STORE = process.env.STORE ?? 'memory';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PROFILE_DIR = process.env.PROFILE_DIR;
const QUEUE = 'bench-nestjs';
/** A child that has not finished by then is killed and the run fails. */
const CHILD_TIMEOUT_MS = 300_000;

if (STORE !== 'memory' && STORE !== 'sqlite') {
  console.error(`run.mjs: STORE must be memory or sqlite, got ${STORE}`);
  process.exit(2);
}
for (const [what, path] of [
  ['the server', SERVER_BIN],
  ['the bench', BENCH_BIN],
  ['the TypeScript client', join(CLIENT, 'dist/cjs/core.js')],
]) {
  if (!existsSync(path)) {
    console.error(
      `run.mjs: ${what} is missing at ${path}: cargo build --release --bin switchyard --bin bench; ` +
        `cd clients/typescript && npm ci && npm run build (make bench-client does both)`,
    );
    process.exit(2);
  }
}
const { SwitchyardConnection } = require(join(CLIENT, 'dist/cjs/core.js'));
const { Queue } = require('bullmq');

const log = (msg) => console.error(`run.mjs: ${msg}`);

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** This environment without SWITCHYARD_* (the server reads each as configuration), plus `extra`. */
function envWith(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SWITCHYARD_')) env[k] = v;
  }
  return { ...env, ...extra };
}

/** Runs a command to its end; resolves with its stdout's JSON lines, rejects on a failure. */
function runJson(cmd, args, env) {
  return new Promise((ok, fail) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
    child.on('error', fail);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) {
        fail(new Error(`${cmd} ${args.join(' ')} exited with ${signal ?? code}`));
        return;
      }
      try {
        ok(out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)));
      } catch (e) {
        fail(e);
      }
    });
  });
}

const running = new Set();
process.on('exit', () => running.forEach((c) => c.kill('SIGKILL')));
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(130));
}

/** A fresh server for `engine` on a free port, SERVING. */
async function startServer(engine, tag) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  // Its working directory, and its data directory on the SQLite store.
  const dir = mkdtempSync(join(tmpdir(), 'sy-bench-client-'));
  const prefix = `benchclient-${process.pid}-${tag}`;
  const env = envWith({
    SWITCHYARD_ADMIN__ENABLED: 'false',
    RUST_LOG: 'warn',
    ...(engine === 'bullmq'
      ? {
          SWITCHYARD_BULLMQ__ENABLED: 'true',
          SWITCHYARD_BULLMQ__URL: REDIS_URL,
          SWITCHYARD_BULLMQ__PREFIX: prefix,
          SWITCHYARD_BULLMQ__QUEUES: JSON.stringify([QUEUE]),
        }
      : {}),
  });
  const store = STORE === 'sqlite' ? ['--data-dir', join(dir, 'data')] : ['--memory'];
  const child = spawn(SERVER_BIN, ['serve', ...store, '--listen', `127.0.0.1:${port}`], {
    cwd: dir,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise((ok) => child.on('exit', (code, signal) => ok(signal ?? code)));
  const conn = new SwitchyardConnection({ url });
  try {
    await Promise.race([
      conn.waitForServing(20_000),
      exited.then((how) => {
        throw new Error(`the server exited (${how}) before SERVING: ${stderr}`);
      }),
    ]);
  } finally {
    conn.close();
  }
  return {
    url,
    prefix: engine === 'bullmq' ? prefix : undefined,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      running.delete(child);
      rmSync(dir, { recursive: true, force: true });
      if (this.prefix) await obliterate(this.prefix);
    },
  };
}

/** Deletes the bench queue's jobs under `prefix` in Redis. */
async function obliterate(prefix) {
  const r = new URL(REDIS_URL);
  const q = new Queue(QUEUE, { connection: { host: r.hostname, port: Number(r.port || 6379) }, prefix });
  await q.obliterate({ force: true }).catch((e) => log(`could not delete ${prefix}:${QUEUE}: ${e.message}`));
  await q.close();
}

async function rust(url) {
  const [r] = await runJson(BENCH_BIN, ['--client-timing', url, '--client-name', QUEUE, '--client-calls', String(N), '--client-warmup', String(WARMUP)], envWith({}));
  return r;
}

async function nodeBench(mode, extra, tag) {
  const args = [];
  if (PROFILE_DIR && mode === 'ts') {
    args.push('--cpu-prof', '--cpu-prof-dir', PROFILE_DIR, '--cpu-prof-name', `ts-${tag}.cpuprofile`);
  }
  args.push(join(HERE, 'bench.mjs'));
  const [r] = await runJson(process.execPath, args, { ...envWith(extra), MODE: mode, JSON: '1', N: String(N), WARMUP: String(WARMUP), REDIS_URL, BENCH_QUEUE: QUEUE });
  return r;
}

// figures[key] = [{ seq_ms, rate32 }, …] over runs.
const figures = {};
const push = (key, r) => (figures[key] ??= []).push({ seq_ms: r.seq_ms, rate32: r.rate32 });

for (let run = 1; run <= RUNS; run++) {
  if (ENGINES.includes('bullmq')) {
    log(`run ${run}: Queue.add`);
    push('queue', await nodeBench('queue', { BULL_PREFIX: `benchclient-${process.pid}-add` }, `add-${run}`));
  }
  for (const engine of ENGINES) {
    // Each client on a fresh server, alternating which goes first.
    const order = run % 2 === 1 ? ['rust', 'ts'] : ['ts', 'rust'];
    for (const who of order) {
      const tag = `${engine}-${who}-${run}`;
      log(`run ${run}: ${who === 'ts' ? 'TypeScript' : 'Rust'} client, ${engine} engine`);
      const server = await startServer(engine, tag);
      try {
        push(`${engine}.${who}`, who === 'rust' ? await rust(server.url) : await nodeBench('ts', { SWITCHYARD_URL: server.url }, tag));
      } finally {
        await server.stop();
      }
    }
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const stat = (key, f) => {
  const xs = (figures[key] ?? []).map((r) => r[f]);
  return xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) } : undefined;
};
const ms = (s) => (s ? `${s.median.toFixed(3)} (${s.min.toFixed(3)}–${s.max.toFixed(3)})` : '—');
const rate = (s) => (s ? `${Math.round(s.median)} (${Math.round(s.min)}–${Math.round(s.max)})` : '—');

const rows = [];
if (figures.queue) rows.push(['`Queue.add` (BullMQ, same Redis)', stat('queue', 'seq_ms'), stat('queue', 'rate32')]);
const overheads = {};
for (const engine of ENGINES) {
  const label = engine === 'bullmq' ? 'BullMQ backend' : 'embedded engine';
  rows.push([`Rust client \`ScheduleTask\`, ${label}`, stat(`${engine}.rust`, 'seq_ms'), stat(`${engine}.rust`, 'rate32')]);
  rows.push([`TS \`scheduleSimpleTask\`, ${label}`, stat(`${engine}.ts`, 'seq_ms'), stat(`${engine}.ts`, 'rate32')]);
  // The overhead per run (same run's Rust figure), then its median.
  const ts = figures[`${engine}.ts`] ?? [];
  const rs = figures[`${engine}.rust`] ?? [];
  overheads[engine] = ts.map((t, i) => t.seq_ms - (rs[i]?.seq_ms ?? NaN)).filter(Number.isFinite);
}

console.log(`\n${RUNS} run(s), N = ${N} calls per measurement after ${WARMUP} untimed, store: ${STORE}; median (min–max)\n`);
console.log('| client, engine | sequential ms/call | 32 in flight calls/s |');
console.log('|---|---:|---:|');
for (const [label, seq, r32] of rows) console.log(`| ${label} | ${ms(seq)} | ${rate(r32)} |`);
console.log('');
for (const engine of ENGINES) {
  const o = overheads[engine];
  if (o.length) {
    console.log(
      `TS overhead over Rust, ${engine}: ${median(o).toFixed(3)} ms/call sequential ` +
        `(runs: ${o.map((x) => x.toFixed(3)).join(', ')}; target ≤ 0.050)`,
    );
  }
}
if (process.env.JSON_OUT) {
  writeFileSync(process.env.JSON_OUT, JSON.stringify({ runs: RUNS, n: N, warmup: WARMUP, store: STORE, figures, overheads }, null, 2));
}
