// The peers' worker in a process of its own, as in production (inside the
// producer's process its event loop starves behind the adds in flight):
// bench/bullmq/bench.mjs and bench/pgqueue/bench.mjs fork themselves with
// `--worker` and talk to that process over IPC. The child answers every
// request with a message whose `op` names the reply (`ready`, `count`,
// `stopped`), sends `{op: 'reached', t}` once it has processed its target,
// and `error` in a reply fails the request.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export class RemoteWorker {
  // Forks `script` (an import.meta.url) with `--worker` and sends it
  // `start`; resolves once it answers `ready`.
  static async start(script, start) {
    const child = fork(fileURLToPath(script), ['--worker'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const w = new RemoteWorker(child);
    await w.request({ op: 'start', ...start }, 'ready');
    return w;
  }

  constructor(child) {
    this.child = child;
    this.waiting = new Map();
    this.reached = new Promise((r) => (this.onReached = r));
    this.exited = new Promise((r) => child.once('exit', (code) => r(code)));
    child.on('message', (m) => {
      if (m.op === 'reached') this.onReached(m.t);
      const w = this.waiting.get(m.op);
      if (w) {
        this.waiting.delete(m.op);
        w(m);
      }
    });
    this.exited.then((code) => {
      for (const w of this.waiting.values()) w({ op: 'exit', error: `the worker process exited (${code})` });
    });
  }

  async request(msg, replyOp) {
    const reply = new Promise((r) => this.waiting.set(replyOp, r));
    this.child.send(msg);
    const m = await reply;
    if (m.error) throw new Error(m.error);
    return m;
  }

  async count() {
    return (await this.request({ op: 'count' }, 'count')).n;
  }

  // Jobs processed and the worker process's CPU seconds.
  async sample() {
    const m = await this.request({ op: 'count' }, 'count');
    return { n: m.n, cpu: m.cpu };
  }

  async stop() {
    const m = await this.request({ op: 'stop' }, 'stopped');
    await this.exited;
    return m;
  }
}
