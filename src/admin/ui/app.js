// The Switchyard live dashboard. Plain JavaScript, no build step, no
// dependency: everything it loads comes from this server.
//
// Data: the task list comes from GET …/tasks (first page) merged with the
// server-sent event stream GET …/events (same filters); each task's status
// carries its last event sequence, so whichever arrives later wins. Every
// body is the JSON dialect (GET /openapi.json): lower-case enum words
// (`completed`), numbers as numbers, camelCase names. Counts,
// queues, latencies, workers, schedules and the flow rules (paused names)
// are polled every two seconds.
//
// Smoothness under thousands of events per second: events only update a
// Map and set a dirty flag; drawing happens on requestAnimationFrame at most
// four times a second, the table shows at most MAX_ROWS rows, the Map keeps
// at most MAX_TASKS tasks, and the detail panel refreshes at most once a
// second.
(() => {
  'use strict';

  const API = '/internal/execution-manager';
  const MAX_ROWS = 200;
  const MAX_TASKS = 5000;
  const RENDER_MS = 250;
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const FINAL = new Set(['completed', 'failed', 'cancelled', 'compensated']);
  const RETRYABLE = new Set(['failed', 'cancelled', 'compensated']);
  const COLORS = ['#4f46e5', '#0ea5e9', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6'];

  const token = new URLSearchParams(location.search).get('access_token') || '';
  const $ = (id) => document.getElementById(id);

  const tasks = new Map();
  let selected = null;
  let dirty = true;
  let chartsDirty = true;
  let detailDirty = false;
  let detailBusy = false;
  let lastDetail = 0;
  let lastRender = 0;
  let lastSeq = 0;
  let evCount = 0;
  let evWindow = performance.now();
  let es = null;
  let retryTimer = null;
  const history = [];
  let prevTotals = null;
  let workersJson = '';
  let polls = 0;

  // ---------------------------------------------------------------------
  // Helpers.

  const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => (
    { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  // An enum word for display (`no_worker` → `no worker`).
  const word = (v) => String(v || '').replace(/_/g, ' ');
  const stateOf = (s) => String(s.state || '');
  const num = (v) => Number(v || 0);
  const fmtInt = (n) => Math.round(n).toLocaleString('en-US');
  const fmtNum = (n) => {
    if (!isFinite(n)) return '–';
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(0) + 'k';
    if (Math.abs(n) >= 1e3) return (n / 1e3).toFixed(1) + 'k';
    if (Math.abs(n) >= 10 || n === 0) return n.toFixed(0);
    return n.toFixed(n < 1 ? 2 : 1);
  };
  // A value with its unit; milliseconds turn into seconds past 1000.
  const withUnit = (v, unit) => {
    if (unit === 'ms' && v >= 1000) return fmtNum(v / 1000) + ' s';
    if (unit === 'ms') return fmtNum(v) + ' ms';
    return fmtNum(v) + (unit || '');
  };
  const time = (ts) => {
    if (!ts) return '';
    const d = new Date(ts);
    return isNaN(d) ? '' : d.toLocaleTimeString('en-GB', { hour12: false });
  };
  const dateTime = (ts) => {
    if (!ts) return '–';
    const d = new Date(ts);
    return isNaN(d) ? '–' : d.toLocaleString('en-GB', { hour12: false });
  };

  function toast(msg, bad) {
    const t = $('toast');
    t.textContent = msg;
    t.className = 'toast' + (bad ? ' bad' : '');
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
  }

  // Who the bearer is: the dashboard shows only what it may use. A key
  // bound to a user sees that user's tasks (the server narrows every list
  // and stream) and no server-wide panel; a reader has no cancel button.
  // Without the route (an older server), everything is shown.
  let me = { canCancel: true, canOperate: true, serverWide: true, userId: null };

  async function api(path, opts = {}) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    const resp = await fetch(API + path, { ...opts, headers });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.message || resp.status + ' ' + resp.statusText);
    return body;
  }

  // ---------------------------------------------------------------------
  // Filters.

  // Inputs (`#f-<key>`) and the query parameter each sets (the clients'
  // filter names).
  const FILTERS = { user: 'userId', name: 'name', type: 'type', state: 'state', source: 'source' };

  function filterQuery() {
    const q = new URLSearchParams();
    for (const [f, param] of Object.entries(FILTERS)) {
      const v = $('f-' + f).value.trim();
      if (v) q.set(param, v);
    }
    return q;
  }

  let filterTimer = null;
  function filtersChanged() {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      tasks.clear();
      dirty = true;
      connect();
      loadList();
    }, 300);
  }

  // ---------------------------------------------------------------------
  // Tasks: the list, the stream, merging.

  function apply(s) {
    if (!s || !s.id) return;
    const cur = tasks.get(s.id);
    if (cur && num(cur.sequence) > num(s.sequence)) return;
    tasks.set(s.id, s);
    dirty = true;
    if (s.id === selected) detailDirty = true;
  }

  async function loadList() {
    const q = filterQuery();
    q.set('limit', String(MAX_ROWS));
    try {
      const r = await api('/tasks?' + q);
      for (const s of r.tasks || []) apply(s);
      dirty = true;
    } catch (e) {
      toast('Cannot list tasks: ' + e.message, true);
    }
  }

  function setConn(kind, text) {
    const c = $('conn');
    c.className = 'pill pill-' + kind;
    c.textContent = text;
  }

  function connect() {
    if (es) es.close();
    clearTimeout(retryTimer);
    const q = filterQuery();
    if (token) q.set('access_token', token);
    const src = new EventSource(API + '/events?' + q);
    es = src;
    setConn('wait', 'connecting');
    src.addEventListener('live', (e) => {
      setConn('live', 'live');
      lastSeq = Math.max(lastSeq, num(JSON.parse(e.data).sequence));
    });
    src.addEventListener('task', (e) => {
      evCount++;
      const ev = JSON.parse(e.data);
      lastSeq = Math.max(lastSeq, num(ev.sequence));
      apply(ev.status);
    });
    src.addEventListener('stream-error', (e) => {
      toast('Event stream: ' + (JSON.parse(e.data).message || 'failed'), true);
    });
    src.onerror = () => {
      if (src !== es) return;
      if (src.readyState === EventSource.CLOSED) {
        // Refused (a bad token, the server gone): try again later.
        setConn('down', 'disconnected');
        retryTimer = setTimeout(connect, 3000);
      } else {
        setConn('wait', 'reconnecting');
      }
    };
  }

  function prune() {
    if (tasks.size <= MAX_TASKS) return;
    // Ids are UUIDv7: sorting them sorts by creation time. Drop the oldest.
    const ids = [...tasks.keys()].sort();
    let drop = tasks.size - Math.floor(MAX_TASKS * 0.8);
    for (const id of ids) {
      if (drop <= 0) break;
      if (id === selected) continue;
      tasks.delete(id);
      drop--;
    }
  }

  function rowHtml(s) {
    const st = stateOf(s);
    const pct = Math.max(0, Math.min(100, num(s.progress)));
    const sel = s.id === selected ? ' class="sel"' : '';
    return `<tr data-id="${esc(s.id)}" data-state="${esc(st)}"${sel}>` +
      `<td><span class="badge s-${esc(st)}">${esc(st)}</span></td>` +
      `<td title="${esc(s.name)}">${esc(s.name)}</td>` +
      `<td class="mono" title="${esc(s.id)}">…${esc(String(s.id).slice(-12))}</td>` +
      `<td>${esc(s.taskType)}</td>` +
      `<td>${esc(s.source)}</td>` +
      `<td>${esc(s.userId || '')}</td>` +
      `<td class="num">${num(s.attempt)}/${num(s.maxAttempts)}</td>` +
      `<td><span class="bar b-${esc(st)}"><i style="width:${pct}%"></i></span></td>` +
      `<td class="muted">${esc(time(s.createdAt))}</td></tr>`;
  }

  function renderTasks() {
    prune();
    const list = [...tasks.values()];
    list.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const shown = list.slice(0, MAX_ROWS);
    $('task-rows').innerHTML = shown.length
      ? shown.map(rowHtml).join('')
      : '<tr class="empty"><td colspan="9">No task matches.</td></tr>';
    $('task-count').textContent = list.length ? fmtInt(list.length) : '';
    $('task-foot').textContent = list.length > MAX_ROWS
      ? `Showing the newest ${MAX_ROWS} of ${fmtInt(list.length)} tasks in view.`
      : `${fmtInt(list.length)} task${list.length === 1 ? '' : 's'} in view.`;
  }

  // ---------------------------------------------------------------------
  // Detail.

  function select(id) {
    selected = id;
    $('detail').hidden = false;
    detailDirty = true;
    lastDetail = 0;
    dirty = true;
  }

  async function loadDetail() {
    const id = selected;
    if (!id) return;
    detailBusy = true;
    detailDirty = false;
    try {
      const [d, logs] = await Promise.all([
        api('/tasks/' + encodeURIComponent(id)),
        api('/tasks/' + encodeURIComponent(id) + '/logs?limit=500'),
      ]);
      if (id === selected) {
        apply(d.status);
        renderDetail(d.status, logs);
      }
    } catch (e) {
      toast('Cannot load the task: ' + e.message, true);
    } finally {
      detailBusy = false;
      lastDetail = performance.now();
    }
  }

  function renderDetail(s, logs) {
    const st = stateOf(s);
    const panel = $('detail');
    panel.dataset.state = st;
    panel.dataset.taskId = s.id;
    panel.dataset.run = String(num(s.run));
    $('d-title').innerHTML = `${esc(s.name)} <span class="badge s-${esc(st)}">${esc(st)}</span>`;
    $('cancel-btn').hidden = !me.canCancel;
    $('cancel-btn').disabled = FINAL.has(st) || s.cancelRequested;
    // RetryTask takes a FAILED, CANCELLED or COMPENSATED task that is not
    // a workflow's step (those replay with their workflow).
    $('retry-btn').hidden = !me.canOperate || !RETRYABLE.has(st) || !!s.parentId;
    $('retry-btn').disabled = false;
    const row = (k, v) => `<dt>${esc(k)}</dt><dd>${v}</dd>`;
    let h = '<dl class="kv">' +
      row('Id', `<span class="mono">${esc(s.id)}</span>`) +
      row('Type', esc(s.taskType)) +
      row('Source', esc(s.source)) +
      row('Attempt', `${num(s.attempt)} of ${num(s.maxAttempts)}`) +
      // Run again by RetryTask or ReplayWorkflow: the run number.
      (num(s.run) > 0 ? row('Run', `<span id="d-run">${num(s.run)}</span>`) : '') +
      row('Priority', esc(s.priority) + (s.immediate ? ' · immediate' : '')) +
      (s.userId ? row('User', esc(s.userId)) : '') +
      (s.sessionId ? row('Session', esc(s.sessionId)) : '') +
      (st === 'pending' && s.waitingReason
        ? row('Waiting', esc(word(s.waitingReason))) : '') +
      (s.workerId ? row('Worker', `<span class="mono">${esc(s.workerId)}</span>`) : '') +
      (s.externalId ? row('External id', `<span class="mono">${esc(s.externalId)}</span>`) : '') +
      (s.target ? row('Target', esc(s.target)) : '') +
      row('Progress', `<span class="bar b-${esc(st)}"><i style="width:${Math.min(100, num(s.progress))}%"></i></span> ` +
        `${fmtNum(num(s.progress))}%${s.progressMessage ? ' · ' + esc(s.progressMessage) : ''}`) +
      row('Created', esc(dateTime(s.createdAt))) +
      (s.startedAt ? row('Started', esc(dateTime(s.startedAt))) : '') +
      (s.finishedAt ? row('Finished', esc(dateTime(s.finishedAt))) : '') +
      (s.cancelRequested ? row('Cancel', 'requested, waiting for the worker') : '') +
      '</dl>';
    if (s.result !== null && s.result !== undefined && st === 'completed') {
      h += `<h3>Result</h3><pre id="d-result">${esc(JSON.stringify(s.result, null, 2))}</pre>`;
    }
    const err = s.lastError;
    if (err && err.message) {
      h += `<h3>Error</h3><pre class="err" id="d-error">${esc(err.kind ? '[' + err.kind + '] ' : '')}` +
        `${esc(err.message)}${err.details ? '\n\n' + esc(err.details) : ''}</pre>`;
    }
    if (s.steps && s.steps.length) {
      h += '<h3>Workflow steps</h3><ul class="steps" id="d-steps">' + s.steps.map((p) => {
        const ps = String(p.state || '');
        return `<li data-step="${esc(p.id)}" data-state="${esc(ps)}" data-task-id="${esc(p.taskId || '')}">` +
          `<span class="sid">${esc(p.id)}</span>` +
          `<span class="muted">${esc(p.kind)}</span>` +
          `<span class="badge s-${esc(ps)}">${esc(word(ps))}</span>` +
          (num(p.attempt) > 1 ? `<span class="muted">attempt ${num(p.attempt)}</span>` : '') +
          // ReplayWorkflow from this step, once the workflow has ended.
          (FINAL.has(st) ? `<button type="button" class="replay-btn ghost" data-step="${esc(p.id)}" ` +
            `title="Run the workflow again from this step">Replay from here</button>` : '') + '</li>';
      }).join('') + '</ul>';
    }
    const lines = (logs && logs.lines) || [];
    h += `<h3>Logs</h3><div class="logs" id="d-logs">` + (lines.length ? lines.map((l) => {
      const lv = esc(String(l.level || '').toLowerCase());
      return `<div class="lv-${lv}"><time>${esc(time(l.time))}</time>${esc(l.message)}</div>`;
    }).join('') : '<div class="muted">No log lines.</div>') +
      (logs && logs.hasMore ? '<div class="muted">… more lines (GET …/logs?taskId=…&afterLine=)</div>' : '') + '</div>';
    $('d-body').innerHTML = h;
  }

  async function cancelSelected() {
    const id = selected;
    if (!id) return;
    $('cancel-btn').disabled = true;
    try {
      const r = await api('/tasks/' + encodeURIComponent(id) + '?reason=' +
        encodeURIComponent('cancelled from the dashboard'), { method: 'DELETE' });
      apply(r.status);
      const outcome = word(r.outcome);
      toast('Task ' + outcome);
      detailDirty = true;
      lastDetail = 0;
    } catch (e) {
      toast('Cannot cancel: ' + e.message, true);
      $('cancel-btn').disabled = false;
    }
  }

  // Retry and replay: POST …/retry, POST …/replay?fromStep=; the answer is
  // the task's new status (PENDING, the next run).
  async function rerunSelected(what, step) {
    const id = selected;
    if (!id) return;
    const q = new URLSearchParams({ reason: what + ' from the dashboard' });
    if (step) q.set('fromStep', step);
    try {
      const r = await api('/tasks/' + encodeURIComponent(id) + '/' + what + '?' + q, { method: 'POST' });
      apply(r.status);
      toast((step ? 'Replaying from ' + step : 'Retrying') + ': run ' + num(r.status.run));
      detailDirty = true;
      lastDetail = 0;
    } catch (e) {
      toast('Cannot ' + what + ': ' + e.message, true);
    }
  }

  // ---------------------------------------------------------------------
  // Metrics and workers (polled).

  async function pollMetrics() {
    try {
      const m = await api('/metrics');
      const t = m.total || {};
      for (const k of ['pending', 'running', 'completed', 'failed', 'cancelled']) {
        $('c-' + k).textContent = fmtInt(num(t[k]));
      }
      $('c-workers').textContent = fmtInt(num(m.workersConnected));
      $('seq').textContent = fmtInt(Math.max(lastSeq, num(m.lastSequence)));
      const now = Date.now();
      const totals = { completed: num(t.completed), failed: num(t.failed) + num(t.cancelled) + num(t.compensated) };
      let done = 0;
      let bad = 0;
      if (prevTotals) {
        const dt = Math.max(0.001, (now - prevTotals.at) / 1000);
        done = Math.max(0, totals.completed - prevTotals.completed) / dt;
        bad = Math.max(0, totals.failed - prevTotals.failed) / dt;
        $('c-tput').textContent = fmtNum(done + bad);
      }
      prevTotals = { ...totals, at: now };
      const queues = {};
      for (const q of m.queues || []) queues[q.name] = num(q.ready);
      queueRows(m.queues || [], m.queueFlow || []);
      const s2s = m.scheduleToStart || {};
      const run = m.runTime || {};
      history.push({
        t: now, queues, done, bad,
        s2s50: num(s2s.p50Ms), s2s99: num(s2s.p99Ms), run50: num(run.p50Ms), run99: num(run.p99Ms),
      });
      while (history.length && history[0].t < now - WINDOW_MS) history.shift();
      chartsDirty = true;
      document.body.dataset.polls = String(++polls);
    } catch (e) {
      setConn('down', 'server unreachable');
    }
  }

  // Which replica leads (PostgreSQL store), or "embedded" (SQLite).
  async function pollCluster() {
    try {
      const c = await api('/cluster');
      const el = $('c-leader');
      if (c.store !== 'postgres') {
        el.textContent = 'embedded';
        el.title = 'one replica on the embedded SQLite store';
      } else if (c.leader) {
        const standbys = (c.replicas || []).filter((r) => r.id !== c.leader.replica).length;
        el.textContent = `${c.leader.replica} · term ${fmtInt(num(c.leader.term))}`;
        el.title = `${c.leader.address}; ${standbys} standby replica(s)`;
      } else {
        el.textContent = 'none';
        el.title = 'no replica holds the lease: a takeover is under way';
      }
      document.body.dataset.leader = el.textContent;
    } catch (e) {
      /* the metrics poll reports the server as unreachable */
    }
  }

  async function pollWorkers() {
    try {
      const r = await api('/workers');
      const text = JSON.stringify(r.workers);
      if (text === workersJson) return;
      workersJson = text;
      const ws = r.workers || [];
      $('worker-count').textContent = ws.length ? String(ws.filter((w) => !w.local).length) + ' remote' : '';
      $('worker-list').innerHTML = ws.length ? ws.map((w) => {
        const total = num(w.slots) + num(w.immediateSlots);
        const slots = w.slots == null ? 'no slot limit' : `${fmtInt(num(w.freeSlots))}/${fmtInt(total)} free`;
        return `<div class="worker" data-worker="${esc(w.name)}"><div class="wn"><span>${esc(w.name)}` +
          `${w.local ? ' <span class="tag local">in-process</span>' : ''}</span>` +
          `<span class="slots">${fmtInt(num(w.running))} running · ${slots}</span></div>` +
          `<div>${(w.taskNames || []).map((n) => `<span class="tag">${esc(n)}</span>`).join('')}</div></div>`;
      }).join('') : '<div class="muted">No worker connected.</div>';
    } catch (e) {
      /* the metrics poll reports the server as unreachable */
    }
  }

  // Schedules (polled): each with when it fires next.
  let schedulesJson = '';
  function scheduleWhen(spec) {
    if (!spec) return '';
    if (spec.cron) return spec.timeZone ? `${spec.cron} (${spec.timeZone})` : spec.cron;
    return spec.intervalMs != null ? `every ${withUnit(num(spec.intervalMs), 'ms')}` : '';
  }
  async function pollSchedules() {
    try {
      const r = await api('/schedules?limit=100');
      const text = JSON.stringify(r.schedules);
      if (text === schedulesJson) return;
      schedulesJson = text;
      const ss = r.schedules || [];
      $('schedule-count').textContent = ss.length ? String(ss.length) + (r.next ? '+' : '') : '';
      $('schedule-list').innerHTML = ss.length ? ss.map((x) => {
        const next = x.paused ? 'paused' : (x.nextFires && x.nextFires.length ? `next ${esc(new Date(x.nextFires[0]).toLocaleString())}` : 'no next fire');
        const task = x.spec && x.spec.task ? x.spec.task.name : '';
        return `<div class="worker" data-schedule="${esc(x.scheduleId)}"><div class="wn"><span>${esc(x.scheduleId)}</span>` +
          `<span class="slots">${next}</span></div>` +
          `<div><span class="tag">${esc(task)}</span> <span class="muted">${esc(scheduleWhen(x.spec))} · ${fmtInt(num(x.fires))} fires</span></div></div>`;
      }).join('') : '<div class="muted">No schedule.</div>';
    } catch (e) {
      /* the metrics poll reports the server as unreachable */
    }
  }

  // ---------------------------------------------------------------------
  // Queues and pauses: each task name or queue the metrics list (internal
  // `#…` queues left out), and each paused name, with a Pause or Resume
  // button (POST …/flow/pause?name=, …/flow/resume?name=). A paused name's
  // pending tasks wait (queue_paused); running ones finish. With flow rules:
  // the tasks each rule holds and the concurrency keys with the most ready
  // tasks (GetMetrics' queueFlow).

  let queueList = [];
  let flowByName = new Map();
  let paused = new Set();
  let queuesHtml = '';

  function queueRows(list, flow) {
    queueList = list.filter((q) => !String(q.name).startsWith('#'));
    flowByName = new Map(flow.map((f) => [f.name, f]));
    renderQueues();
  }

  async function pollFlow() {
    try {
      const r = await api('/flow');
      paused = new Set(r.paused || []);
      renderQueues();
    } catch (e) {
      /* the metrics poll reports the server as unreachable */
    }
  }

  function renderQueues() {
    const byName = new Map(queueList.map((q) => [q.name, q]));
    for (const n of paused) if (!byName.has(n)) byName.set(n, { name: n });
    for (const n of flowByName.keys()) if (!byName.has(n)) byName.set(n, { name: n });
    const names = [...byName.keys()].sort();
    const h = names.length ? names.map((n) => {
      const q = byName.get(n);
      const p = paused.has(n);
      const counts = `${fmtInt(num(q.ready))} ready · ${fmtInt(num(q.running))} running`;
      const f = flowByName.get(n) || {};
      const held = [[num(f.heldConcurrencyLimit), 'by key limits'], [num(f.heldQueuePaused), 'by the pause'],
        [num(f.heldRateLimited), 'by rate limits']]
        .filter(([c]) => c > 0).map(([c, why]) => `${fmtInt(c)} held ${why}`).join(' · ');
      const rates = (f.rateLimits || []).map((r) => {
        const tokens = Math.floor(Number(r.tokens || 0));
        return `<span class="tag rate" data-pattern="${esc(r.pattern)}" data-tokens="${tokens}" ` +
          `data-burst="${num(r.burst)}" title="rate limit ${esc(r.pattern)}: ${fmtInt(num(r.rate))} per ` +
          `${fmtInt(num(r.intervalMs))} ms${r.perKey ? ', per key' : ''}">${esc(r.pattern)} ` +
          `${fmtInt(tokens)}/${fmtInt(num(r.burst))} tokens</span>`;
      }).join('');
      const keys = (f.topKeys || []).map((k) => `<span class="tag key" data-key="${esc(k.key)}" ` +
        `data-pending="${num(k.pending)}" title="${fmtInt(num(k.running))} running">${esc(k.key)} ` +
        `${fmtInt(num(k.pending))}</span>`).join('');
      // Another namespace's queue (`name@ns`) is paused by that
      // namespace's callers, not from here (a name holds no `@`).
      return `<div class="worker queue" data-queue="${esc(n)}" data-paused="${p}" ` +
        `data-held-limit="${num(f.heldConcurrencyLimit)}" data-held-paused="${num(f.heldQueuePaused)}" ` +
        `data-held-rate="${num(f.heldRateLimited)}"><div class="wn">` +
        `<span>${esc(n)}${p ? ' <span class="tag paused">paused</span>' : ''}</span>` +
        `<span class="slots">${counts}${me.canOperate && !n.includes('@') ? ` <button type="button" class="pause-btn ghost" data-name="${esc(n)}" ` +
        `data-action="${p ? 'resume' : 'pause'}">${p ? 'Resume' : 'Pause'}</button>` : ''}</span></div>` +
        (held ? `<div class="muted held">${held}</div>` : '') +
        (keys ? `<div class="keys" title="concurrency keys with the most ready tasks">${keys}</div>` : '') +
        (rates ? `<div class="keys rates" title="rate limits and the tokens left in their buckets">${rates}</div>` : '') +
        '</div>';
    }).join('') : '<div class="muted">No queue.</div>';
    if (h === queuesHtml) return;
    queuesHtml = h;
    $('queue-count').textContent = paused.size ? `${paused.size} paused` : '';
    $('queue-list').innerHTML = h;
  }

  async function pauseOrResume(action, name) {
    try {
      const r = await api(`/flow/${action}?name=` + encodeURIComponent(name), { method: 'POST' });
      const noop = action === 'pause' ? r.already : !r.wasPaused;
      toast(`${action === 'pause' ? 'Paused' : 'Resumed'} ${name}${noop ? ' (it was already)' : ''}`);
    } catch (e) {
      toast(`Cannot ${action} ${name}: ${e.message}`, true);
    }
    queuesHtml = '';
    await pollFlow();
  }

  // ---------------------------------------------------------------------
  // Charts: lines on a canvas over the last five minutes.

  function drawChart(id, legendId, series, unit) {
    const c = $(id);
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pad = { l: 44, r: 8, t: 8, b: 18 };
    const now = Date.now();
    const x0 = now - WINDOW_MS;
    let max = 0;
    for (const s of series) for (const p of s.points) max = Math.max(max, p[1]);
    max = niceMax(max);
    const X = (t) => pad.l + ((t - x0) / WINDOW_MS) * (w - pad.l - pad.r);
    const Y = (v) => pad.t + (1 - v / max) * (h - pad.t - pad.b);
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    g.strokeStyle = '#eef0f3';
    g.fillStyle = '#98a2b3';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath();
      g.moveTo(pad.l, y);
      g.lineTo(w - pad.r, y);
      g.stroke();
      g.fillText(withUnit(v, unit), pad.l - 6, y);
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (const m of [5, 4, 3, 2, 1, 0]) {
      g.fillText(m ? `-${m}m` : 'now', Math.min(w - pad.r - 10, X(now - m * 60000)), h - pad.b + 4);
    }
    g.lineWidth = 1.8;
    g.lineJoin = 'round';
    for (const s of series) {
      if (!s.points.length) continue;
      g.strokeStyle = s.color;
      g.beginPath();
      s.points.forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))));
      g.stroke();
    }
    const lg = series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
      return `<span><i style="background:${s.color}"></i>${esc(s.label)} <b>${esc(withUnit(last, unit))}</b></span>`;
    }).join('');
    if ($(legendId).innerHTML !== lg) $(legendId).innerHTML = lg;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawCharts() {
    // The five deepest queues (by their peak in the window).
    const peak = {};
    for (const hp of history) {
      for (const [q, v] of Object.entries(hp.queues)) peak[q] = Math.max(peak[q] || 0, v);
    }
    // Internal engine queues (#…) only when they held something.
    const top = Object.keys(peak)
      .filter((q) => !q.startsWith('#') || peak[q] > 0)
      .sort((a, b) => peak[b] - peak[a] || (a < b ? -1 : 1))
      .slice(0, 5);
    drawChart('ch-queues', 'lg-queues', top.map((q, i) => ({
      label: q, color: COLORS[i % COLORS.length], points: history.map((hp) => [hp.t, hp.queues[q] || 0]),
    })), '');
    const rest = history.slice(1);
    drawChart('ch-tput', 'lg-tput', [
      { label: 'completed', color: '#12b76a', points: rest.map((hp) => [hp.t, hp.done]) },
      { label: 'failed or cancelled', color: '#f04438', points: rest.map((hp) => [hp.t, hp.bad]) },
    ], '/s');
    drawChart('ch-lat', 'lg-lat', [
      { label: 'schedule→start p50', color: '#0ea5e9', points: history.map((hp) => [hp.t, hp.s2s50]) },
      { label: 'schedule→start p99', color: '#4f46e5', points: history.map((hp) => [hp.t, hp.s2s99]) },
      { label: 'run time p99', color: '#f59e0b', points: history.map((hp) => [hp.t, hp.run99]) },
    ], 'ms');
  }

  // ---------------------------------------------------------------------
  // The render loop: at most one render per RENDER_MS.

  function frame(now) {
    requestAnimationFrame(frame);
    if (now - lastRender < RENDER_MS) return;
    lastRender = now;
    if (now - evWindow >= 1000) {
      $('evrate').textContent = fmtNum((evCount * 1000) / (now - evWindow));
      evCount = 0;
      evWindow = now;
    }
    if (dirty) {
      dirty = false;
      renderTasks();
    }
    if (chartsDirty) {
      chartsDirty = false;
      drawCharts();
    }
    if (detailDirty && !detailBusy && now - lastDetail >= 1000) loadDetail();
  }

  // ---------------------------------------------------------------------
  // Wiring.

  $('task-rows').addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-id]');
    if (tr) select(tr.dataset.id);
  });
  $('filters').addEventListener('input', filtersChanged);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('f-clear').addEventListener('click', () => {
    for (const f of Object.keys(FILTERS)) $('f-' + f).value = '';
    filtersChanged();
  });
  $('cancel-btn').addEventListener('click', cancelSelected);
  $('retry-btn').addEventListener('click', () => {
    $('retry-btn').disabled = true;
    rerunSelected('retry');
  });
  $('d-body').addEventListener('click', (e) => {
    const b = e.target.closest('button.replay-btn');
    if (b) rerunSelected('replay', b.dataset.step);
  });
  $('queue-list').addEventListener('click', (e) => {
    const b = e.target.closest('button.pause-btn');
    if (!b) return;
    b.disabled = true;
    pauseOrResume(b.dataset.action, b.dataset.name);
  });
  $('pause-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('pause-name').value.trim();
    if (!name) return;
    $('pause-name').value = '';
    pauseOrResume('pause', name);
  });
  $('d-close').addEventListener('click', () => {
    selected = null;
    $('detail').hidden = true;
    dirty = true;
  });
  window.addEventListener('resize', () => { chartsDirty = true; });

  async function start() {
    try {
      me = await api('/caller');
    } catch (e) {
      if (/^40[13]/.test(e.message)) setConn('down', e.message);
    }
    document.body.dataset.role = me.role || '';
    document.body.dataset.serverWide = String(!!me.serverWide);
    if (me.keyId) {
      $('who').textContent = [me.role, me.namespace, me.userId ? 'user ' + me.userId : '']
        .filter(Boolean).join(' · ');
      $('who').hidden = false;
    }
    if (me.userId) {
      $('f-user').value = me.userId;
      $('f-user').disabled = true;
    }
    $('cancel-btn').hidden = !me.canCancel;
    $('retry-btn').hidden = true;
    connect();
    loadList();
    if (!me.serverWide) {
      // Metrics, charts, workers, queues, schedules and the cluster are
      // the whole server's: not this key's to see.
      for (const sel of ['#cards', '.charts', '.panel.queues', '.panel.workers', '.panel.schedules']) {
        const el = document.querySelector(sel);
        if (el) el.hidden = true;
      }
      requestAnimationFrame(frame);
      return;
    }
    if (!me.canOperate) $('pause-form').hidden = true;
    pollMetrics();
    pollWorkers();
    pollSchedules();
    pollCluster();
    pollFlow();
    setInterval(pollMetrics, POLL_MS);
    setInterval(pollFlow, POLL_MS);
    setInterval(pollWorkers, POLL_MS);
    setInterval(pollSchedules, POLL_MS);
    setInterval(pollCluster, POLL_MS);
    requestAnimationFrame(frame);
  }
  start();
})();
