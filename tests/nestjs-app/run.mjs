#!/usr/bin/env node
// The newcomer's afternoon, as a test (issue 19). In a temporary directory:
// 1. `npm pack` the client (its prepack builds it) into a tarball;
// 2. create a fresh NestJS 11 app from the registry (`@nestjs/cli@11 new`),
//    copying nothing from the client's folder;
// 3. install the tarball (plus bullmq 5 and ioredis, for the team's
//    unchanged BullMQ Worker) and check there is one copy of Nest;
// 4. write every TypeScript sample of both original guides into src/guides/
//    verbatim (samples.mjs: only the import path changes), with scenario.ts;
// 5. compile them with a `module: commonjs` tsconfig and with the app's own
//    (nodenext);
// 6. run the scenario against the real server (SWITCHYARD_BIN, default
//    target/debug/switchyard) with its BullMQ backend on Redis ($REDIS_URL),
//    its Temporal backend on the dev server with a Python worker
//    (temporal_worker.py, from the repo's .venv), and its webhook executor
//    calling a local n8n-like server: once under Jest (the app's own
//    ts-jest config), once under `node --test` (the nodenext build).
// Under CI=true nothing is skipped: a missing Redis or Temporal rig fails.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { samples } from './samples.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');
const CLIENT = join(REPO, 'clients/typescript');
const GUIDES = resolve(REPO, process.env.SWITCHYARD_GUIDES ?? '../shared/original-design');
const BIN = process.env.SWITCHYARD_BIN ?? join(REPO, 'target/debug/switchyard');
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const VENV = resolve(REPO, process.env.TEMPORAL_VENV ?? '.venv');
const keep = process.env.KEEP_APP === '1';

const step = (m) => console.log(`# ${m}`);
function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
}
function freePort() {
  return new Promise((res, rej) => {
    const s = createNetServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const work = mkdtempSync(join(tmpdir(), 'switchyard-nestjs-app-'));
const children = [];
let failures = 0;
let passes = 0;
const cleanup = () => {
  for (const c of children) {
    if (c.exitCode === null) {
      c.kill('SIGTERM');
    }
  }
  if (!keep) {
    rmSync(work, { recursive: true, force: true });
  }
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

// 1. The tarball.
step(`npm pack ${CLIENT} (prepack builds)`);
if (!existsSync(join(CLIENT, 'node_modules/.bin/tsc'))) {
  sh('npm', ['ci', '--no-audit', '--no-fund'], { cwd: CLIENT, stdio: 'inherit' });
}
const packed = JSON.parse(sh('npm', ['pack', '--json', '--pack-destination', work], { cwd: CLIENT }));
const tarball = join(work, packed[0].filename);
const files = packed[0].files.map((f) => f.path);
for (const f of ['dist/cjs/index.js', 'dist/esm/index.js', 'dist/cjs/package.json', 'dist/cjs/bullmq.d.ts']) {
  if (!files.includes(f)) {
    throw new Error(`the tarball lacks ${f}`);
  }
}

// 2. A fresh Nest 11 app.
step('nest new (NestJS 11) from the registry');
sh('npx', ['-y', '@nestjs/cli@11', 'new', 'app', '--package-manager', 'npm', '--skip-git', '--skip-install'], { cwd: work, stdio: ['ignore', 'ignore', 'inherit'] });
const app = join(work, 'app');

// 3. Install.
step(`npm install ${packed[0].filename} bullmq@5 ioredis@5`);
sh('npm', ['install', '--no-audit', '--no-fund', tarball, 'bullmq@5', 'ioredis@5'], { cwd: app, stdio: ['ignore', 'ignore', 'inherit'] });
const cores = sh('npm', ['ls', '@nestjs/core', '--all', '--parseable'], { cwd: app }).trim().split('\n').filter(Boolean);
const uniqueCores = [...new Set(cores)];
if (uniqueCores.length !== 1) {
  throw new Error(`expected one copy of @nestjs/core, found:\n${uniqueCores.join('\n')}`);
}
const installedNest = JSON.parse(readFileSync(join(app, 'node_modules/@nestjs/core/package.json'), 'utf8')).version;
step(`one @nestjs/core: ${installedNest}`);

// 4. The samples.
const guideDir = join(app, 'src/guides');
mkdirSync(guideDir, { recursive: true });
const all = samples([
  ['exec', join(GUIDES, '000_3c913466791db97e.txt')],
  ['orch', join(GUIDES, '003_ee1f86f1022ece85.txt')],
]);
for (const s of all) {
  writeFileSync(join(guideDir, `${s.name}.ts`), s.file + '\n');
}
writeFileSync(join(guideDir, 'samples.ts'), all.map((s) => `export * as ${s.name} from './${s.name}';`).join('\n') + '\n');
copyFileSync(join(HERE, 'scenario.ts'), join(guideDir, 'scenario.ts'));
writeFileSync(
  join(guideDir, 'guides.spec.ts'),
  `import { runGuides } from './scenario';\n\njest.setTimeout(240_000);\n\nit('runs every sample of the original guides', async () => {\n  await runGuides((m) => process.stdout.write(\`  - \${m}\\n\`));\n});\n`,
);
writeFileSync(
  join(guideDir, 'guides.node-test.ts'),
  `import { test } from 'node:test';\n\nimport { runGuides } from './scenario';\n\ntest('runs every sample of the original guides', { timeout: 240_000 }, async () => {\n  await runGuides((m) => console.log(\`# \${m}\`));\n});\n`,
);
step(`${all.length} samples written to src/guides`);

// 5. Compile: a `module: commonjs` tsconfig (node10 resolution) and the app's own (nodenext).
writeFileSync(
  join(app, 'tsconfig.commonjs.json'),
  JSON.stringify({ extends: './tsconfig.json', compilerOptions: { module: 'commonjs', moduleResolution: 'node10', resolvePackageJsonExports: false, outDir: 'dist-commonjs', incremental: false }, include: ['src'] }, null, 2),
);
writeFileSync(
  join(app, 'tsconfig.nodenext.json'),
  JSON.stringify({ extends: './tsconfig.json', compilerOptions: { outDir: 'dist-nodenext', incremental: false }, include: ['src'] }, null, 2),
);
for (const cfg of ['tsconfig.commonjs.json', 'tsconfig.nodenext.json']) {
  step(`tsc -p ${cfg}`);
  try {
    sh('npx', ['tsc', '-p', cfg], { cwd: app, stdio: ['ignore', 'inherit', 'inherit'] });
    passes += 1;
    console.log(`ok - the guides compile under ${cfg}`);
  } catch {
    failures += 1;
    console.log(`not ok - the guides compile under ${cfg}`);
  }
}

// 6. The real world: Redis, Temporal, an n8n-like server, Switchyard.
async function redisOk() {
  const { default: IORedis } = await import(join(app, 'node_modules/ioredis/built/index.js'));
  const r = new IORedis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}
if (!(await redisOk())) {
  throw new Error(`the fresh-app test needs Redis at ${REDIS_URL}`);
}
if (!existsSync(join(VENV, 'bin/temporal'))) {
  throw new Error(`the fresh-app test needs the Temporal rig in ${VENV} (make test-temporal-deps)`);
}

// n8n's webhook trigger, as its docs describe it: POST {base}/webhook/{path};
// a registered path answers 200 with JSON, another 404 "not registered".
const n8nPaths = new Set(['ci-integration', 'workflow-id-n8n', 'trigger']);
const n8n = createServer((req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    const path = (req.url ?? '').replace(/^\/webhook\//, '').split('?')[0];
    if (req.method !== 'POST' || !req.url?.startsWith('/webhook/') || !n8nPaths.has(path)) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ code: 404, message: `The requested webhook "${req.method} ${path}" is not registered.`, hint: 'Activate the workflow' }));
      return;
    }
    let parsed = body;
    try {
      parsed = JSON.parse(body);
    } catch {
      // kept as text
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ executionId: String(Date.now()), path, body: parsed }));
  });
});
await new Promise((r) => n8n.listen(0, '127.0.0.1', r));
n8n.unref();
const n8nUrl = `http://127.0.0.1:${n8n.address().port}`;

step('Temporal dev server and Python worker');
const temporalPort = await freePort();
const temporal = spawn(join(VENV, 'bin/python'), [join(HERE, 'temporal_worker.py'), '--temporal', join(VENV, 'bin/temporal'), '--port', String(temporalPort), '--log-file', join(work, 'temporal.log')], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
children.push(temporal);
await new Promise((res, rej) => {
  let out = '';
  const t = setTimeout(() => rej(new Error(`the Temporal worker was not ready in 90 s:\n${out}`)), 90_000);
  temporal.stdout.on('data', (d) => {
    out += d;
    if (out.includes('@@ READY')) {
      clearTimeout(t);
      res();
    }
  });
  temporal.once('exit', (c) => rej(new Error(`the Temporal worker exited (${c}):\n${out}`)));
});

async function startSwitchyard(prefix) {
  const port = await freePort();
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('SWITCHYARD_')) {
      delete env[k];
    }
  }
  Object.assign(env, {
    SWITCHYARD_LOG__FILTER: process.env.SWITCHYARD_TEST_LOG ?? 'warn',
    SWITCHYARD_ADMIN__ENABLED: 'false',
    SWITCHYARD_SCHEDULER__SHUTDOWN_GRACE: '2s',
    SWITCHYARD_BULLMQ__ENABLED: 'true',
    SWITCHYARD_BULLMQ__URL: REDIS_URL,
    SWITCHYARD_BULLMQ__PREFIX: prefix,
    SWITCHYARD_BULLMQ__QUEUES: JSON.stringify(['maFile', 'nom-de-la-tache', 'preparation-migration']),
    SWITCHYARD_TEMPORAL__ENABLED: 'true',
    SWITCHYARD_TEMPORAL__ADDRESS: `http://127.0.0.1:${temporalPort}`,
    SWITCHYARD_TEMPORAL__WORKFLOW_TYPES: JSON.stringify(['workflowType', 'migrationWorkflow']),
    SWITCHYARD_TEMPORAL__PROGRESS_INTERVAL: '300ms',
    SWITCHYARD_WEBHOOK__N8N_BASE_URL: n8nUrl,
    SWITCHYARD_WEBHOOK__ALLOW_HOSTS: JSON.stringify(['127.0.0.1']),
    SWITCHYARD_WEBHOOK__CONNECT_TIMEOUT: '1s',
  });
  const proc = spawn(BIN, ['serve', '--memory', '--listen', `127.0.0.1:${port}`], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  children.push(proc);
  const { SwitchyardConnection } = await import(join(app, 'node_modules/@switchyard/client/dist/esm/core.js'));
  const conn = new SwitchyardConnection({ url: `http://127.0.0.1:${port}` });
  try {
    await conn.waitForServing(20_000);
  } finally {
    conn.close();
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise((r) => {
        if (proc.exitCode !== null) {
          return r();
        }
        proc.once('exit', () => r());
        proc.kill('SIGTERM');
      }),
  };
}

function run(name, cmd, args, env) {
  return new Promise((res) => {
    step(name);
    const p = spawn(cmd, args, { cwd: app, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.once('exit', (code) => {
      // The runners' own summaries stay readable; indented so CI's parser reads only our totals.
      console.log(out.replace(/^/gm, '    '));
      if (code === 0) {
        passes += 1;
        console.log(`ok - ${name}`);
      } else {
        failures += 1;
        console.log(`not ok - ${name} (exit ${code})`);
      }
      res();
    });
  });
}

for (const [name, cmd, args] of [
  ['the guides run under Jest (ts-jest, the app’s own config)', 'npx', ['jest', '--runInBand', '--rootDir', 'src', 'guides']],
  ['the guides run under node --test (nodenext build)', process.execPath, ['--test', 'dist-nodenext/guides/guides.node-test.js']],
]) {
  const prefix = `sy-nestjs-app-${process.pid}-${passes + failures}`;
  const server = await startSwitchyard(prefix);
  await run(name, cmd, args, { SWITCHYARD_URL: server.url, BULL_PREFIX: prefix, REDIS_URL });
  await server.stop();
}

temporal.stdin.end();
console.log(`${passes} passed, ${failures} failed`);
if (keep) {
  console.log(`# the app is kept in ${app}`);
}
process.exitCode = failures === 0 ? 0 : 1;
