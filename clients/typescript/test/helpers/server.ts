/**
 * Starts the real Switchyard server (`target/debug/switchyard serve`) on an
 * ephemeral port for a test file, and waits for its health check to say
 * SERVING. Build it first: `cargo build --bin switchyard` (make test-ts does).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { SwitchyardConnection, type SwitchyardTlsFiles } from '../../src/index.js';

/** clients/typescript/dist/test/helpers → the repository root. */
const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../../..');

/** The server binary: $SWITCHYARD_BIN, else target/debug/switchyard. */
export const SERVER_BIN = process.env.SWITCHYARD_BIN ?? join(REPO_ROOT, 'target', 'debug', 'switchyard');

export interface ServerOptions {
  /** Keep the store in a temporary directory (survives a restart) instead of memory. */
  persistent?: boolean;
  /** Extra environment, e.g. `SWITCHYARD_SCHEDULER__EVENT_HISTORY`. */
  env?: Record<string, string>;
  /**
   * A replica of a cluster (`env` names the PostgreSQL store): a standby
   * answers health NOT_SERVING, so start() waits only for an answer.
   */
  replica?: boolean;
  /**
   * The server speaks TLS (`env` sets `SWITCHYARD_TLS__*`): start() waits
   * over `https://` with these files, and `url` is `https://`.
   */
  tls?: SwitchyardTlsFiles;
}

export interface TestServer {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  port: number;
  /** Stops the server (SIGTERM, then SIGKILL after 10 s). */
  stop(): Promise<void>;
  /** Stops it and starts it again on the same port and store. */
  restart(): Promise<void>;
  /** Kills it with SIGKILL (no drain) and waits until it has exited. */
  kill(): Promise<void>;
  /** What the server printed, for failure messages. */
  output(): string;
}

/**
 * This process's environment without the variables that configure the tests
 * rather than the server (`SWITCHYARD_BIN`, `SWITCHYARD_TEST_*`): the server
 * reads every other `SWITCHYARD_*` variable as configuration and refuses
 * unknown ones.
 */
export function serverEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key === 'SWITCHYARD_BIN' || key.startsWith('SWITCHYARD_TEST_')) {
      delete env[key];
    }
  }
  return env;
}

/** A port nobody listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`${SERVER_BIN} does not exist: run \`cargo build --bin switchyard\` first (make test-ts does)`);
  }
  const dataDir = options.persistent ? mkdtempSync(join(tmpdir(), 'switchyard-ts-')) : undefined;
  const scheme = options.tls ? 'https' : 'http';
  let port = 0;
  let child: ChildProcess | undefined;
  let log = '';

  const launch = async (): Promise<void> => {
    const args = ['serve', '--listen', `127.0.0.1:${port}`];
    args.push(...(dataDir ? ['--data-dir', dataDir] : ['--memory']));
    const proc = spawn(SERVER_BIN, args, {
      env: {
        ...serverEnv(),
        SWITCHYARD_LOG__FILTER: process.env.SWITCHYARD_TEST_LOG ?? 'warn',
        SWITCHYARD_SCHEDULER__SHUTDOWN_GRACE: '2s',
        ...options.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = proc;
    proc.stdout?.on('data', (d: Buffer) => (log += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise<never>((_, reject) =>
      proc.once('exit', (code, signal) => reject(new Error(`the server exited early (${code ?? signal}):\n${log}`))),
    );
    const conn = new SwitchyardConnection({ url: `${scheme}://127.0.0.1:${port}`, tls: options.tls });
    try {
      await Promise.race([options.replica ? answersHealth(conn, 20_000) : conn.waitForServing(20_000), exited]);
    } finally {
      conn.close();
    }
  };

  const stop = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) {
      return;
    }
    await new Promise<void>((done) => {
      const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.once('exit', () => {
        clearTimeout(kill);
        done();
      });
      proc.kill(signal);
    });
  };

  // A freshly freed port can be taken by someone else before the server binds it: retry.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await launch();
      break;
    } catch (err) {
      await stop();
      if (attempt >= 3) {
        throw err;
      }
    }
  }

  return {
    url: `${scheme}://127.0.0.1:${port}`,
    port,
    output: () => log,
    async stop() {
      await stop();
      if (dataDir) {
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
    async restart() {
      await stop();
      await launch();
    },
    async kill() {
      await stop('SIGKILL');
    },
  };
}

/** Resolves once the server answers its health check, whatever it says. */
async function answersHealth(conn: SwitchyardConnection, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await conn.health('', { timeoutMs: 1_000 });
      return;
    } catch (err) {
      if (Date.now() > deadline) {
        throw err;
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves when `cond()` holds, polling every 20 ms; rejects after `timeoutMs` with `what`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A promise with its resolve function, for handlers that report they started. */
export function signal<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolveFn!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolveFn = r));
  return { promise, resolve: resolveFn };
}

export interface WebhookReceiver {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /** The bodies of the POSTs received, in order. */
  bodies: string[];
  /** Their headers. */
  headers: Record<string, string | string[] | undefined>[];
  close(): Promise<void>;
}

/** A webhook endpoint on loopback that answers every POST with 200 and a JSON body. */
export function startWebhookReceiver(): Promise<WebhookReceiver> {
  const bodies: string[] = [];
  const headers: Record<string, string | string[] | undefined>[] = [];
  const srv = createHttpServer((req, res) => {
    headers.push({ ...req.headers });
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      bodies.push(body);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ received: true }));
    });
  });
  return new Promise((resolveReceiver) => {
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      resolveReceiver({
        url: `http://127.0.0.1:${port}`,
        bodies,
        headers,
        close: () => new Promise<void>((done) => srv.close(() => done())),
      });
    });
  });
}
