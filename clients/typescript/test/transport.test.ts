/**
 * The unary transport over Node's HTTP/2 session (src/h2-unary.ts), which
 * the connection uses by default for one plain URL: the same answers and the
 * same errors as grpc-js against the real server, a server restart in the
 * middle, and what a misbehaving server does (no answer, an HTTP error, a
 * status in the headers, a reset) against local HTTP/2 servers that behave so.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardError } from '../src/core.js';
import { startServer, type TestServer } from './helpers/server.js';

/** What a call rejects with, as a SwitchyardError. */
async function rejection(p: Promise<unknown>): Promise<SwitchyardError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof SwitchyardError, `a SwitchyardError, got ${String(e)}`);
    return e;
  }
  assert.fail('the call resolved');
}

/** A local HTTP/2 server whose every request is answered by `handle`. */
async function fakeServer(handle: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void) {
  const server = http2.createServer();
  const seen: http2.IncomingHttpHeaders[] = [];
  server.on('stream', (stream, headers) => {
    seen.push(headers);
    stream.on('error', () => undefined);
    handle(stream, headers);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Sessions still open keep close() waiting: end them.
        server.emit('closeAll');
      }),
    server,
  };
}

describe('the HTTP/2 unary transport', { timeout: 120_000 }, () => {
  let server: TestServer;

  before(async () => {
    server = await startServer({ persistent: true });
  });

  after(async () => {
    await server?.stop();
  });

  it('answers and fails exactly as grpc-js does', async () => {
    const lean = new SwitchyardClient({ url: server.url });
    const viaGrpc = new SwitchyardClient({ url: server.url, transport: 'grpc-js' });
    try {
      await lean.waitForServing();
      await viaGrpc.waitForServing();
      const id = await lean.orchestrator.scheduleSimpleTask('transport.same', { n: 1 }, { userId: 'u1' });
      const a = await lean.orchestrator.getTaskStatus(id);
      const b = await viaGrpc.orchestrator.getTaskStatus(id);
      assert.deepEqual(a, b);
      // A bad argument: the same code, message and field violations.
      const bad = { userId: 'x'.repeat(300) };
      const e1 = await rejection(lean.orchestrator.scheduleSimpleTask('transport.same', {}, bad));
      const e2 = await rejection(viaGrpc.orchestrator.scheduleSimpleTask('transport.same', {}, bad));
      assert.equal(e1.code, 'INVALID_ARGUMENT');
      assert.equal(e1.code, e2.code);
      assert.equal(e1.details, e2.details);
      assert.deepEqual(e1.fieldViolations, e2.fieldViolations);
      assert.ok(e1.fieldViolations.length > 0, 'the details trailer was decoded');
      assert.equal(e1.method, 'ScheduleTask');
      // An unknown id: NOT_FOUND both ways, with a message that isn't mangled
      // (grpc-message is percent-encoded on the wire).
      const missing = '0190a0a0-0000-7000-8000-000000000000';
      const n1 = await rejection(lean.orchestrator.getTaskStatus(missing));
      const n2 = await rejection(viaGrpc.orchestrator.getTaskStatus(missing));
      assert.equal(n1.code, 'NOT_FOUND');
      assert.equal(n1.details, n2.details);
    } finally {
      await lean.close();
      await viaGrpc.close();
    }
  });

  it('fails UNAVAILABLE while the server is down, and reconnects when it is back', async () => {
    const client = new SwitchyardClient({ url: server.url, callTimeoutMs: 5_000 });
    try {
      await client.waitForServing();
      const before = await client.orchestrator.scheduleSimpleTask('transport.restart', { n: 1 });
      await server.kill();
      const down = await rejection(client.orchestrator.getTaskStatus(before));
      assert.equal(down.code, 'UNAVAILABLE', down.message);
      await server.restart();
      await client.waitForServing(20_000);
      const status = await client.orchestrator.getTaskStatus(before);
      assert.equal(status.id, before);
    } finally {
      await client.close();
    }
  });

  it('cancels on abort, and a closed connection refuses calls', async () => {
    const client = new SwitchyardClient({ url: server.url });
    await client.waitForServing();
    const ac = new AbortController();
    ac.abort();
    const e = await rejection(client.orchestrator.getTaskStatus('0190a0a0-0000-7000-8000-000000000000', { signal: ac.signal }));
    assert.equal(e.code, 'CANCELLED');
    await client.close();
    const closed = await rejection(client.orchestrator.scheduleSimpleTask('transport.abort', {}));
    assert.equal(closed.code, 'UNAVAILABLE');
  });

  it('DEADLINE_EXCEEDED when the server never answers, with grpc-timeout sent', async () => {
    const fake = await fakeServer(() => {
      /* never answers */
    });
    const client = new SwitchyardClient({ url: fake.url, callTimeoutMs: 300 });
    try {
      const t = Date.now();
      const e = await rejection(client.orchestrator.scheduleSimpleTask('x', {}));
      assert.equal(e.code, 'DEADLINE_EXCEEDED');
      assert.ok(Date.now() - t < 3_000, 'the deadline was kept');
      const h = fake.seen[0] as http2.IncomingHttpHeaders;
      assert.equal(h[':path'], '/switchyard.v1.OrchestratorService/ScheduleTask');
      assert.equal(h['content-type'], 'application/grpc');
      assert.equal(h.te, 'trailers');
      assert.match(String(h['grpc-timeout']), /^\d+m$/);
    } finally {
      await client.close();
      fake.server.close();
    }
  });

  it('maps HTTP errors, trailers-only statuses, resets and metadata', async () => {
    const fake = await fakeServer((stream, headers) => {
      const mode = String(headers['x-mode']);
      if (mode === '503') {
        stream.respond({ ':status': 503 }, { endStream: true });
      } else if (mode === 'html') {
        stream.respond({ ':status': 200, 'content-type': 'text/html' });
        stream.end('<html>');
      } else if (mode === 'trailers-only') {
        stream.respond(
          { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '9', 'grpc-message': 'not%20now%3A%20caf%C3%A9' },
          { endStream: true },
        );
      } else if (mode === 'reset') {
        stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      } else if (mode === 'auth') {
        const ok = headers.authorization === 'Bearer t0k';
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': ok ? '5' : '16', 'grpc-message': 'checked' }, { endStream: true });
      }
    });
    const call = async (mode: string) => {
      const client = new SwitchyardClient({ url: fake.url, callTimeoutMs: 3_000, metadata: { 'x-mode': mode, authorization: 'Bearer t0k' } });
      try {
        return await rejection(client.orchestrator.scheduleSimpleTask('x', {}));
      } finally {
        await client.close();
      }
    };
    try {
      assert.equal((await call('503')).code, 'UNAVAILABLE');
      assert.equal((await call('html')).code, 'UNKNOWN');
      const only = await call('trailers-only');
      assert.equal(only.code, 'FAILED_PRECONDITION');
      assert.equal(only.details, 'not now: café');
      assert.equal((await call('reset')).code, 'INTERNAL');
      assert.equal((await call('auth')).code, 'NOT_FOUND', 'the metadata reached the server as headers');
    } finally {
      fake.server.close();
    }
  });

  it('does not keep the process alive once its calls are done', async () => {
    // A script that makes a call and never closes its client must still exit.
    const script = `
      const { SwitchyardClient } = await import(${JSON.stringify(new URL('../src/core.js', import.meta.url).href)});
      const c = new SwitchyardClient({ url: ${JSON.stringify(server.url)} });
      await c.orchestrator.scheduleSimpleTask('transport.exit', { n: 1 });
      console.log('called');
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        resolve(null);
      }, 15_000);
      child.on('exit', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    assert.equal(out.trim(), 'called');
    assert.equal(code, 0, 'the process exited by itself');
  });
});
