// The dashboard end to end: the real server (target/debug/switchyard, in
// memory, ephemeral ports), the real example worker
// (target/debug/examples/worker), tasks scheduled with the real CLI, and the
// page in headless Debian Chromium driven by playwright-core.
//
// Checks: tasks appear and change state live, the task detail shows its
// result and logs, a workflow shows its steps, the cancel button cancels a
// running task, the Retry button runs a failed task again until it
// completes, "Replay from here" runs an ended workflow's later steps again,
// the Pause and Resume buttons hold a task name's tasks and let them go,
// the Queues panel shows what a key limit and a rate limit hold (with the
// rate limit's tokens),
// filters narrow the list, workers and charts show, and the page keeps
// rendering during a burst. Saves target/artifacts/dashboard.png. On a
// server with API keys: a reader's dashboard has no cancel button (and its
// HTTP cancel is refused), a user-bound key's shows its user's tasks only
// and no server-wide panel, an operator's has the cancel button.
//
// Run: make test-dashboard (builds the binaries, installs Chromium and
// playwright-core). Outside CI, a missing Chromium skips; with CI=true it
// fails.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER_BIN = join(ROOT, 'target', 'debug', 'switchyard');
const WORKER_BIN = join(ROOT, 'target', 'debug', 'examples', 'worker');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'target', 'artifacts');
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const SHORT = 15_000;

const children = [];
const dirs = [];
let grpcUrl;
let adminUrl;
let browser;
let page;
let userDataDir;
let serverLog = '';

/** Spawns a child that is killed when the test ends. */
function child(cmd, args, env) {
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(p);
  return p;
}

/** Resolves with the addresses once the server logs both listeners. */
function startServer(workflowDir, extraEnv = {}) {
  return new Promise((resolveReady, reject) => {
    const p = child(
      SERVER_BIN,
      ['serve', '--memory', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--log-format', 'json'],
      {
        SWITCHYARD_LOG__FILTER: 'info',
        SWITCHYARD_SCHEDULER__SHUTDOWN_GRACE: '1s',
        SWITCHYARD_WORKFLOWS__DIR: workflowDir,
        ...extraEnv,
      },
    );
    let grpc;
    let admin;
    let buf = '';
    const onData = (d) => {
      serverLog += d.toString();
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let rec;
        try {
          rec = JSON.parse(line);
        } catch {
          continue;
        }
        const f = rec.fields || {};
        const addr = String(f.addr || '').match(/\d+\.\d+\.\d+\.\d+:\d+/);
        if (f.message === 'switchyard ready' && addr) grpc = addr[0];
        if (f.message === 'admin server ready' && addr) admin = addr[0];
        if (grpc && admin) {
          p.stdout.off('data', onData);
          p.stderr.off('data', onData);
          p.stdout.on('data', (x) => { serverLog += x.toString(); });
          p.stderr.on('data', (x) => { serverLog += x.toString(); });
          resolveReady({ grpc, admin });
        }
      }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.once('exit', (code) => reject(new Error(`the server exited (${code}):\n${serverLog}`)));
    setTimeout(() => reject(new Error(`the server did not start:\n${serverLog}`)), SHORT);
  });
}

/** Schedules a task with the CLI; returns its id. */
async function schedule(name, payload, extra = []) {
  const { stdout } = await run(SERVER_BIN, [
    '--server', grpcUrl, '--json', 'task', 'schedule', name, '--payload', JSON.stringify(payload), ...extra,
  ]);
  const id = JSON.parse(stdout).taskId;
  assert.ok(id, stdout);
  return id;
}

const row = (id) => `#task-rows tr[data-id="${id}"]`;

async function waitRowState(id, state) {
  await page.waitForSelector(`${row(id)}[data-state="${state}"]`, { timeout: SHORT });
}

before(async () => {
  for (const [what, path] of [['switchyard', SERVER_BIN], ['the example worker', WORKER_BIN]]) {
    assert.ok(existsSync(path), `${what} is not built (${path}): cargo build --bin switchyard --example worker`);
  }
  if (!existsSync(CHROMIUM)) {
    assert.ok(!IN_CI, `${CHROMIUM} is missing (apt-get install -y chromium); CI must run this test`);
    return;
  }
  userDataDir = mkdtempSync(join(tmpdir(), 'switchyard-chromium-'));
  const workflowDir = mkdtempSync(join(tmpdir(), 'switchyard-flows-'));
  dirs.push(userDataDir, workflowDir);
  writeFileSync(join(workflowDir, 'dash-flow.toml'),
    'name = "dash-flow"\n[[steps]]\nid = "greet"\ntask = "echo"\n' +
    '[[steps]]\nid = "approve"\nsignal = "go"\ntimeout = "1h"\n');
  // Three steps that end: replayed from the second.
  writeFileSync(join(workflowDir, 'dash-replay.toml'),
    'name = "dash-replay"\n' +
    '[[steps]]\nid = "one"\ntask = "echo"\ninput = { n = 1 }\n' +
    '[[steps]]\nid = "two"\ntask = "echo"\ninput = { n = 2 }\n' +
    '[[steps]]\nid = "three"\ntask = "echo"\ninput = { n = 3 }\n');
  const addrs = await startServer(workflowDir);
  grpcUrl = `http://${addrs.grpc}`;
  adminUrl = `http://${addrs.admin}`;
  const worker = child(WORKER_BIN, [], { SWITCHYARD_SERVER: grpcUrl, RUST_LOG: 'warn' });
  worker.once('exit', (code) => { if (code) serverLog += `\n[worker exited ${code}]`; });
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
    viewport: { width: 1440, height: 1050 },
  });
  page = browser.pages()[0] || (await browser.newPage());
  page.on('pageerror', (e) => { serverLog += `\n[page error] ${e.message}`; });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  for (const c of children.reverse()) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('the dashboard shows tasks live, opens one, cancels one', { timeout: 180_000 }, async (t) => {
  if (!browser) {
    t.skip(`${CHROMIUM} is not installed`);
    return;
  }
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${adminUrl}/`);
  await page.waitForSelector('#conn.pill-live', { timeout: SHORT });
  assert.equal(await page.title(), 'Switchyard');

  // The worker registers: it shows with its task names.
  await page.waitForSelector('.worker[data-worker^="example-worker-"]', { timeout: SHORT });
  const workerText = await page.textContent('.worker[data-worker^="example-worker-"]');
  for (const n of ['echo', 'sleep', 'fail', 'flaky']) assert.ok(workerText.includes(n), workerText);

  // Tasks appear live, and change state live.
  const echo = await schedule('echo', { hello: 'dashboard' }, ['--user', 'dash-user']);
  await waitRowState(echo, 'completed');
  const slow = await schedule('sleep', { ms: 2500 }, ['--user', 'dash-user']);
  await waitRowState(slow, 'running');
  await waitRowState(slow, 'completed');
  const failing = await schedule('fail', {}, ['--user', 'dash-user']);
  await waitRowState(failing, 'failed');

  // Open one: status, result, logs.
  await page.click(row(echo));
  await page.waitForSelector('#detail[data-state="completed"] #d-result', { timeout: SHORT });
  assert.ok((await page.textContent('#d-result')).includes('dashboard'));
  assert.ok((await page.textContent('#d-logs')).includes('completed'));
  assert.ok(await page.isDisabled('#cancel-btn'), 'no cancel for a finished task');
  await page.click(row(failing));
  await page.waitForSelector(`#detail[data-task-id="${failing}"] #d-error`, { timeout: SHORT });

  // Cancel one that runs.
  const long = await schedule('sleep', { ms: 60000 }, ['--user', 'dash-user']);
  await waitRowState(long, 'running');
  await page.click(row(long));
  await page.waitForSelector(`#detail[data-task-id="${long}"][data-state="running"]`, { timeout: SHORT });
  await page.click('#cancel-btn');
  await page.waitForSelector(`#detail[data-task-id="${long}"][data-state="cancelled"]`, { timeout: SHORT });
  await waitRowState(long, 'cancelled');

  // A workflow (from the server's workflow directory) shows its steps.
  const flow = await schedule('dash-flow-run', {}, ['--workflow-type', 'dash-flow']);
  await page.waitForSelector(row(flow), { timeout: SHORT });
  await page.click(row(flow));
  await page.waitForSelector('#d-steps li[data-step="greet"][data-state="completed"]', { timeout: SHORT });
  await page.waitForSelector('#d-steps li[data-step="approve"][data-state="running"]', { timeout: SHORT });

  // Retry: `flaky` fails for good on its first run and completes on a later
  // one. The button runs it again under its id (run 1), and it completes.
  const flaky = await schedule('flaky', {}, ['--user', 'dash-user']);
  await waitRowState(flaky, 'failed');
  await page.click(row(flaky));
  const flakyDetail = `#detail[data-task-id="${flaky}"]`;
  await page.waitForSelector(`${flakyDetail}[data-state="failed"][data-run="0"] #d-error`, { timeout: SHORT });
  assert.ok((await page.textContent('#d-error')).includes('first_run'));
  assert.ok(await page.isVisible('#retry-btn'), 'a failed task shows Retry');
  await page.click('#retry-btn');
  await page.waitForSelector(`${flakyDetail}[data-state="completed"][data-run="1"] #d-result`, { timeout: SHORT });
  assert.ok((await page.textContent('#d-result')).includes(`${flaky}:run1:1`),
    'the worker ran the task again, under the new run\'s idempotency key');
  assert.ok(await page.isHidden('#retry-btn'), 'no Retry for a completed task');
  await waitRowState(flaky, 'completed');

  // Replay: an ended three-step workflow, replayed from its second step.
  // The first step keeps its task (and output); the second and third run
  // again as new step tasks, and the workflow completes under run 1.
  const replay = await schedule('dash-replay-run', {}, ['--workflow-type', 'dash-replay']);
  await waitRowState(replay, 'completed');
  await page.click(row(replay));
  const replayDetail = `#detail[data-task-id="${replay}"]`;
  await page.waitForSelector(`${replayDetail}[data-state="completed"][data-run="0"] #d-steps li[data-step="three"][data-state="completed"]`,
    { timeout: SHORT });
  const stepTasks = () => page.$$eval('#d-steps li[data-step]',
    (ls) => Object.fromEntries(ls.map((l) => [l.dataset.step, { task: l.dataset.taskId, state: l.dataset.state }])));
  const before = await stepTasks();
  for (const st of ['one', 'two', 'three']) assert.ok(before[st].task, `step ${st} has a task: ${JSON.stringify(before)}`);
  await page.click('#d-steps li[data-step="two"] button.replay-btn');
  await page.waitForSelector(`${replayDetail}[data-state="completed"][data-run="1"] #d-steps li[data-step="three"][data-state="completed"]`,
    { timeout: SHORT });
  const after = await stepTasks();
  assert.equal(after.one.task, before.one.task, 'the step before the replay point keeps its task');
  for (const st of ['two', 'three']) {
    assert.notEqual(after[st].task, before[st].task, `step ${st} ran again as a new task`);
    assert.equal(after[st].state, 'completed', JSON.stringify(after));
    await waitRowState(after[st].task, 'completed');
  }
  await waitRowState(replay, 'completed');

  // Pause and resume a task name from the Queues panel: while paused, its
  // new tasks wait (queue_paused) and none starts; after Resume they run.
  const queue = '#queue-list .queue[data-queue="echo"]';
  await page.waitForSelector(`${queue}[data-paused="false"] button.pause-btn[data-action="pause"]`, { timeout: SHORT });
  await page.click(`${queue} button.pause-btn`);
  await page.waitForSelector(`${queue}[data-paused="true"] button.pause-btn[data-action="resume"]`, { timeout: SHORT });
  const held = await Promise.all(Array.from({ length: 3 }, (_, i) => schedule('echo', { held: i }, ['--user', 'paused'])));
  for (const id of held) await waitRowState(id, 'pending');
  // The queue says how many the pause holds (GetMetrics' queueFlow).
  await page.waitForSelector(`${queue}[data-held-paused="3"]`, { timeout: SHORT });
  await page.click(row(held[0]));
  await page.waitForSelector(`#detail[data-task-id="${held[0]}"][data-state="pending"]`, { timeout: SHORT });
  await page.waitForFunction(() => document.getElementById('d-body').textContent.includes('queue paused'),
    null, { timeout: SHORT });
  // Long enough for the worker (idle, with free slots) to have taken them,
  // were they not held.
  await page.waitForTimeout(1500);
  for (const id of held) {
    assert.equal(await page.getAttribute(row(id), 'data-state'), 'pending', `${id} started while paused`);
  }
  const resumedAt = Date.now();
  await page.click(`${queue} button.pause-btn[data-action="resume"]`);
  await page.waitForSelector(`${queue}[data-paused="false"]`, { timeout: SHORT });
  for (const id of held) await waitRowState(id, 'completed');
  for (const id of held) {
    const { stdout } = await run(SERVER_BIN, ['--server', grpcUrl, '--json', 'task', 'status', id]);
    const started = Date.parse(JSON.parse(stdout).status.startedAt);
    assert.ok(started >= resumedAt - 50, `${id} started before the resume (${new Date(started).toISOString()})`);
  }

  // A concurrency limit of 1 per key on `sleep`: of one key's three tasks,
  // one runs and two are held; the queue shows them and the key.
  await run(SERVER_BIN, ['--server', grpcUrl, 'flow', 'set', 'sleep', '1']);
  await Promise.all(Array.from({ length: 3 }, (_, i) =>
    schedule('sleep', { ms: 15000, i }, ['--user', 'keyed', '--concurrency-key', 'dash-tenant'])));
  const sleepQueue = '#queue-list .queue[data-queue="sleep"]';
  await page.waitForSelector(`${sleepQueue}[data-held-limit="2"] .tag.key[data-key="dash-tenant"][data-pending="2"]`,
    { timeout: SHORT });

  // A rate limit of one start a minute on `fail`: of three tasks one
  // starts (and fails), two are held; the queue shows them and the rate
  // limit with its tokens (GetMetrics' heldRateLimited and rateLimits).
  await run(SERVER_BIN, ['--server', grpcUrl, 'flow', 'rate-set', 'fail', '1', '--per', '1m', '--burst', '1']);
  await Promise.all(Array.from({ length: 3 }, (_, i) => schedule('fail', { i }, ['--user', 'rated'])));
  const failQueue = '#queue-list .queue[data-queue="fail"]';
  await page.waitForSelector(
    `${failQueue}[data-held-rate="2"] .tag.rate[data-pattern="fail"][data-tokens="0"][data-burst="1"]`,
    { timeout: SHORT });
  assert.match(await page.textContent(failQueue), /2 held by rate limits/);

  // A backlog for a task name no worker takes: a queue that stays deep.
  await Promise.all(Array.from({ length: 25 }, (_, i) => schedule('nightly-report', { i }, ['--user', 'ops'])));
  await page.waitForFunction(() => Number(document.getElementById('c-pending').textContent) >= 25,
    null, { timeout: SHORT });

  // A burst: the page keeps up and keeps rendering.
  const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => schedule('echo', { i }, ['--user', 'burst'])));
  for (const id of [burst[0], burst[burst.length - 1]]) await waitRowState(id, 'completed');

  // Filters narrow the list (server side, and the stream with it).
  await page.fill('#f-name', 'sleep');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#task-rows tr[data-id]')];
    return rows.length > 0 && rows.every((r) => r.children[1].textContent === 'sleep');
  }, null, { timeout: SHORT });
  await page.fill('#f-name', '');
  await page.selectOption('#f-state', 'failed');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#task-rows tr[data-id]')];
    return rows.length > 0 && rows.every((r) => r.dataset.state === 'failed');
  }, null, { timeout: SHORT });
  await page.selectOption('#f-state', '');
  await page.waitForSelector(row(burst[0]), { timeout: SHORT });

  // Counts and charts fill in from the polled metrics.
  await page.waitForFunction(() => Number(document.getElementById('c-completed').textContent.replace(/,/g, '')) >= 40,
    null, { timeout: SHORT });
  await page.waitForFunction(() => document.getElementById('lg-queues').textContent.includes('nightly-report 25'),
    null, { timeout: SHORT });
  await page.click(row(long));
  await page.waitForSelector(`#detail[data-task-id="${long}"][data-state="cancelled"]`, { timeout: SHORT });
  // Who leads: the embedded store's one replica.
  await page.waitForFunction(() => document.body.dataset.leader === 'embedded', null, { timeout: SHORT });
  // A few more metric polls, so the charts have lines.
  const polls = Number(await page.getAttribute('body', 'data-polls'));
  await page.waitForFunction((n) => Number(document.body.dataset.polls) >= n + 3, polls, { timeout: SHORT });

  mkdirSync(ARTIFACTS, { recursive: true });
  const shot = join(ARTIFACTS, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(existsSync(shot));
  assert.deepEqual(pageErrors, [], `no script errors:\n${serverLog.slice(-3000)}`);
});

test('the dashboard shows each key only what it may see and do', { timeout: 120_000 }, async (t) => {
  if (!browser) {
    t.skip('Chromium is not installed');
    return;
  }
  const ROOT_TOKEN = 'dash-root-token';
  const flows = mkdtempSync(join(tmpdir(), 'switchyard-flows-'));
  dirs.push(flows);
  const addrs = await startServer(flows, { SWITCHYARD_AUTH__TOKENS: ROOT_TOKEN });
  const grpc = `http://${addrs.grpc}`;
  const admin = `http://${addrs.admin}`;
  const cli = async (...args) => {
    const { stdout } = await run(SERVER_BIN, ['--server', grpc, '--token', ROOT_TOKEN, '--json', ...args]);
    return JSON.parse(stdout);
  };
  const key = async (...args) => (await cli('keys', 'create', ...args)).secret;
  const reader = await key('--role', 'reader');
  const alice = await key('--role', 'reader', '--user', 'alice');
  const operator = await key('--role', 'operator');
  // No worker: the tasks stay pending, so a cancel would change them.
  const ofAlice = (await cli('task', 'schedule', 'dash-keys', '--payload', '{}', '--user', 'alice')).taskId;
  const ofBob = (await cli('task', 'schedule', 'dash-keys', '--payload', '{}', '--user', 'bob')).taskId;
  const p = await browser.newPage();
  const errors = [];
  p.on('pageerror', (e) => errors.push(e.message));
  const open = async (secret) => {
    await p.goto(`${admin}/?access_token=${encodeURIComponent(secret)}`);
    await p.waitForSelector('body[data-role]', { state: 'attached', timeout: SHORT });
  };

  // A reader: every task, no cancel button; its HTTP cancel is refused.
  await open(reader);
  await p.waitForSelector(row(ofBob), { timeout: SHORT });
  await p.click(row(ofBob));
  await p.waitForSelector(`#detail[data-task-id="${ofBob}"]`, { timeout: SHORT });
  assert.equal(await p.isHidden('#cancel-btn'), true, "a reader's dashboard has no cancel button");
  assert.equal(await p.isHidden('#retry-btn'), true);
  assert.equal(await p.isHidden('#pause-form'), true, 'nor a pause form');
  const refused = await fetch(`${admin}/internal/execution-manager/tasks/${ofBob}`, {
    method: 'DELETE', headers: { Authorization: `Bearer ${reader}` },
  });
  assert.equal(refused.status, 403);
  const still = await cli('task', 'status', ofBob);
  assert.equal(JSON.stringify(still).includes('"pending"') || JSON.stringify(still).includes('PENDING'), true,
    `a refused cancel changes nothing: ${JSON.stringify(still)}`);

  // A key bound to alice: her task only, her user filter fixed, no
  // server-wide panel; bob's task is 404 to it over HTTP.
  await open(alice);
  await p.waitForSelector(row(ofAlice), { timeout: SHORT });
  assert.equal(await p.$(row(ofBob)), null, "bob's task is not listed");
  assert.equal(await p.inputValue('#f-user'), 'alice');
  assert.equal(await p.isDisabled('#f-user'), true);
  assert.equal(await p.isHidden('#cards'), true, 'no server-wide counts');
  assert.equal(await p.isHidden('.panel.workers'), true, 'no workers panel');
  assert.match(await p.textContent('#who'), /reader · default · user alice/);
  const other = await fetch(`${admin}/internal/execution-manager/tasks/${ofBob}`, {
    headers: { Authorization: `Bearer ${alice}` },
  });
  assert.equal(other.status, 404, "another user's task is not found");
  const metrics = await fetch(`${admin}/internal/execution-manager/metrics`, {
    headers: { Authorization: `Bearer ${alice}` },
  });
  assert.equal(metrics.status, 403, 'the metrics are not a user-bound key\'s');

  // An operator: the cancel button, and it cancels.
  await open(operator);
  await p.waitForSelector(row(ofBob), { timeout: SHORT });
  await p.click(row(ofBob));
  await p.waitForSelector(`#detail[data-task-id="${ofBob}"]`, { timeout: SHORT });
  assert.equal(await p.isHidden('#cancel-btn'), false);
  await p.click('#cancel-btn');
  await p.waitForSelector(`#detail[data-task-id="${ofBob}"][data-state="cancelled"]`, { timeout: SHORT });
  await p.close();
  assert.deepEqual(errors, [], `no script errors:\n${serverLog.slice(-3000)}`);
});
