// A real Node BullMQ 5 worker for tests/it/bullmq.rs. It processes the jobs
// Switchyard adds, honours Switchyard's cancellation of active jobs, and
// reports what it did as JSON lines on stdout (`start` and `processed` with
// `at`, the wall clock in ms).
//
// Environment: REDIS_URL, PREFIX, QUEUE, CONCURRENCY (default 1).
// What a job does comes from its data:
//   {"mode": "ok"}            log two lines, report progress 50, return a result
//   {"mode": "fail"}          throw (BullMQ retries while attempts remain)
//   {"mode": "fail_until", "ok_at": N}  fail until attempt N, then succeed
//   {"mode": "slow", "ms": M, "stop_ms": S}  run M ms (default 60 s) unless
//                             cancelled; stop S ms after the cancel
//
// Cancellation: Switchyard PUBLISHes the job id on
// `<prefix>:<queue>:switchyard:cancel` and sets
// `<prefix>:<queue>:<id>:switchyard:cancel` (for a worker that looks late).
// The processor's AbortController is aborted either way, and the job fails
// with an UnrecoverableError so that BullMQ does not retry it.
import { Worker, UnrecoverableError } from 'bullmq';
import IORedis from 'ioredis';

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const prefix = process.env.PREFIX || 'bull';
const queue = process.env.QUEUE || 'default';
const concurrency = Number(process.env.CONCURRENCY || '1');

const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const opts = { maxRetriesPerRequest: null };
const connection = new IORedis(url, opts);
const sub = new IORedis(url, opts);
const controllers = new Map();
const channel = `${prefix}:${queue}:switchyard:cancel`;
sub.on('message', (ch, id) => {
  if (ch === channel) controllers.get(id)?.abort();
});
await sub.subscribe(channel);

// The helper: runs `fn(job, signal)` with a signal Switchyard can abort.
function withSwitchyardCancellation(fn) {
  return async (job) => {
    const ac = new AbortController();
    controllers.set(job.id, ac);
    try {
      if (await connection.exists(`${prefix}:${queue}:${job.id}:switchyard:cancel`)) ac.abort();
      return await fn(job, ac.signal);
    } catch (e) {
      if (ac.signal.aborted) {
        say({ event: 'aborted', id: job.id });
        throw new UnrecoverableError('AbortError: cancelled through Switchyard');
      }
      throw e;
    } finally {
      controllers.delete(job.id);
    }
  };
}

// Sleeps `ms`, or until aborted and then `stopMs` more (a job that takes
// a while to wind down).
const sleep = (ms, signal, stopMs = 0) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      say({ event: 'abort-seen' });
      setTimeout(() => reject(new Error('aborted')), stopMs);
    }, { once: true });
  });

async function process_(job, signal) {
  const d = job.data || {};
  const attempt = job.attemptsMade + 1;
  say({ event: 'start', id: job.id, name: job.name, attempt, priority: job.opts.priority ?? 0, at: Date.now() });
  switch (d.mode) {
    case 'fail':
      throw new TypeError(`boom on attempt ${attempt}`);
    case 'fail_until':
      if (attempt < d.ok_at) throw new Error(`not yet (attempt ${attempt})`);
      break;
    case 'slow':
      say({ event: 'running', id: job.id });
      await sleep(d.ms ?? 60000, signal, d.stop_ms ?? 0);
      break;
    default:
      await job.log(`hello from node for ${job.name}`);
      await job.updateProgress(50);
      await job.log('second line');
  }
  say({ event: 'processed', id: job.id, name: job.name, attempt, at: Date.now() });
  return { ok: true, echo: d, by: 'node' };
}

const worker = new Worker(queue, withSwitchyardCancellation(process_), {
  connection,
  prefix,
  concurrency,
  // Quick stalled checks keep a killed Redis from holding jobs long.
  stalledInterval: 5000,
});
worker.on('error', (e) => say({ event: 'error', message: String(e?.message ?? e) }));
await worker.waitUntilReady();
say({ event: 'ready' });

const stop = async () => {
  await worker.close(true);
  sub.disconnect();
  connection.disconnect();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
