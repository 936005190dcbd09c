/**
 * TLS and mutual TLS against the real server, with certificates made by
 * openssl for the test: a client and a worker with the client certificate
 * schedule and run a task over `https://`; a client without a certificate
 * is refused; TLS files with an `http://` URL are refused up front.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { SwitchyardClient, SwitchyardError, createWorker } from '../src/core.js';
import { startServer, type TestServer } from './helpers/server.js';

/** A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`. */
function makeCertificates(dir: string): void {
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=ts-test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = (name: string, ext: string): void => {
    writeFileSync(join(dir, `${name}.ext`), `basicConstraints=CA:FALSE\n${ext}\n`);
    openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`);
  };
  leaf('server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth');
  leaf('client', 'extendedKeyUsage=clientAuth');
}

describe('TLS and mutual TLS', { timeout: 120_000 }, () => {
  let dir: string;
  let server: TestServer;
  let client: SwitchyardClient;
  const files = (name?: string) => ({
    caFile: join(dir, 'ca.pem'),
    ...(name ? { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`) } : {}),
  });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'switchyard-tls-'));
    makeCertificates(dir);
    server = await startServer({
      env: {
        SWITCHYARD_TLS__CERT_FILE: join(dir, 'server.pem'),
        SWITCHYARD_TLS__KEY_FILE: join(dir, 'server.key'),
        SWITCHYARD_TLS__CLIENT_CA_FILE: join(dir, 'ca.pem'),
        SWITCHYARD_TLS__CLIENT_AUTH: 'require',
      },
      tls: files('client'),
    });
    client = new SwitchyardClient({ url: server.url, tls: files('client') });
    await client.connection.waitForServing(10_000);
  });

  after(async () => {
    await client?.close();
    await server?.stop();
    if (dir) {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('schedules and runs a task over https with a client certificate', async () => {
    assert.match(server.url, /^https:\/\//);
    const worker = createWorker({
      url: server.url,
      tls: files('client'),
      logger: false,
      handlers: { 'tls.add': (p: { a: number; b: number }) => ({ sum: p.a + p.b }) },
    });
    try {
      await worker.waitUntilRegistered();
      const t = await client.orchestrator.scheduleTask('tls.add', { a: 20, b: 22 });
      assert.deepEqual((await client.orchestrator.waitForTask(t.taskId, { timeoutMs: 10_000 })).result, { sum: 42 });
    } finally {
      await worker.close();
    }
  });

  it('refuses a client without a certificate', async () => {
    const anonymous = new SwitchyardClient({ url: server.url, tls: files(), callTimeoutMs: 5_000 });
    try {
      await assert.rejects(anonymous.orchestrator.scheduleTask('tls.add', { a: 1, b: 1 }));
    } finally {
      await anonymous.close();
    }
  });

  it('refuses TLS files with an http:// URL', () => {
    assert.throws(() => new SwitchyardClient({ url: `http://127.0.0.1:${server.port}`, tls: files() }), SwitchyardError);
  });
});
