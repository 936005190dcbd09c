/** The pure parts: conversions, error decoding, URL parsing, the worker's helpers. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Metadata } from '@grpc/grpc-js';

import { msToDuration, toMillis, toScheduleRequest, toTaskInfo } from '../src/convert.js';
import { BadRequest, RetryInfo } from '../src/gen/google/rpc/error_details.js';
import { Status } from '../src/gen/google/rpc/status.js';
import { DebounceMode, TaskSource, TaskState, TaskStatus, TaskType as PbTaskType } from '../src/gen/switchyard/v1/task.js';
import { truncateUtf8 } from '../src/worker/context.js';
import { heartbeatPeriod } from '../src/worker/worker.js';
import {
  SwitchyardConnection,
  SwitchyardError,
  parseUrl,
  parseUrls,
  switchyardCancelChannel,
  switchyardCancelMarker,
  withSwitchyardCancellation,
  pb,
} from '../src/core.js';

describe('durations', () => {
  it('reads milliseconds and unit strings', () => {
    assert.equal(toMillis(1500, 'd'), 1500);
    assert.equal(toMillis('250ms', 'd'), 250);
    assert.equal(toMillis('1m30s', 'd'), 90_000);
    assert.equal(toMillis('1.5s', 'd'), 1500);
    assert.equal(toMillis('2h', 'd'), 7_200_000);
    assert.equal(toMillis('1d', 'd'), 86_400_000);
    assert.equal(toMillis('42', 'd'), 42);
  });

  it('refuses what is not a duration, naming the field', () => {
    for (const bad of ['', 'soon', '5 minutes', '-1s', '1s garbage']) {
      assert.throws(() => toMillis(bad, 'options.delay'), (e: unknown) => e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'options.delay', bad);
    }
    assert.throws(() => toMillis(-1, 'options.delay'), SwitchyardError);
    assert.throws(() => toMillis(Number.NaN, 'options.delay'), SwitchyardError);
  });

  it('makes valid google.protobuf.Durations', () => {
    assert.deepEqual(msToDuration(1500), { seconds: 1, nanos: 500_000_000 });
    assert.deepEqual(msToDuration(0.5), { seconds: 0, nanos: 500_000 });
    const d = msToDuration(999.9999999999);
    assert.ok(d.nanos < 1e9 && d.nanos >= 0);
  });
});

describe('the schedule request', () => {
  it('maps the original design’s options onto TaskOptions and the target', () => {
    const req = toScheduleRequest(
      'scan-repository',
      { repo: 'a/b' },
      {
        priority: 10,
        attempts: 3,
        backoff: { type: 'exponential', delay: '1s', maxDelay: '1m' },
        delay: 5000,
        timeout: '10m',
        userId: 'u1',
        sessionId: 's1',
        immediate: true,
        idempotencyKey: 'k',
        labels: { team: 'x' },
        queue: 'scans',
      },
      { labels: { app: 'a' }, attempts: 9 },
    );
    assert.equal(req.taskType, PbTaskType.TASK_TYPE_SIMPLE);
    assert.deepEqual(req.simple, { queue: 'scans' });
    assert.equal(req.options?.priority, 10);
    assert.equal(req.options?.attempts, 3);
    assert.deepEqual(req.options?.backoff, { kind: 2, base: { seconds: 1, nanos: 0 }, max: { seconds: 60, nanos: 0 } });
    assert.deepEqual(req.options?.delay, { seconds: 5, nanos: 0 });
    assert.deepEqual(req.options?.executionTimeout, { seconds: 600, nanos: 0 });
    assert.deepEqual(req.options?.labels, { app: 'a', team: 'x' });
    assert.equal(req.options?.immediate, true);
  });

  it('infers the kind from the target', () => {
    const complex = toScheduleRequest('wf', {}, { temporal: { workflowType: 'onboarding', workflowArgs: [1, { a: 'b' }], taskQueue: 'q' } });
    assert.equal(complex.taskType, PbTaskType.TASK_TYPE_COMPLEX);
    assert.deepEqual(complex.complex?.workflowArgs, [1, { a: 'b' }]);
    const integration = toScheduleRequest('hook', {}, { n8n: { workflowId: 'wf-1', integrationSource: 'github' } });
    assert.equal(integration.taskType, PbTaskType.TASK_TYPE_INTEGRATION);
    assert.deepEqual(integration.integration?.n8n, { workflowId: 'wf-1', webhookUrl: '', integrationSource: 'github' });
    assert.equal(toScheduleRequest('x', {}, { taskType: 'complex' as never }).taskType, PbTaskType.TASK_TYPE_COMPLEX);
  });

  it("maps the dedup window, debounce and BullMQ's deduplication onto TaskOptions", () => {
    const ttl = toScheduleRequest('x', {}, { idempotencyKey: 'k', idempotencyTtl: '10m' });
    assert.equal(ttl.options?.idempotencyKey, 'k');
    assert.deepEqual(ttl.options?.idempotencyTtl, { seconds: 600, nanos: 0 });
    const own = toScheduleRequest('x', {}, { debounce: { key: 'doc-1', period: '2s', mode: 'THROTTLE' } });
    assert.deepEqual(own.options?.debounce, { key: 'doc-1', period: { seconds: 2, nanos: 0 }, mode: DebounceMode.DEBOUNCE_MODE_THROTTLE });
    assert.equal(own.options?.idempotencyKey, '');
    const throttle = toScheduleRequest('x', {}, { deduplication: { id: 'd', ttl: 5000 } });
    assert.equal(throttle.options?.idempotencyKey, 'd');
    assert.deepEqual(throttle.options?.idempotencyTtl, { seconds: 5, nanos: 0 });
    const older = toScheduleRequest('x', {}, { debounce: { id: 'd', ttl: 5000 } });
    assert.deepEqual(older.options?.idempotencyTtl, { seconds: 5, nanos: 0 });
    const debounce = toScheduleRequest('x', {}, { deduplication: { id: 'd', ttl: 1500, extend: true, replace: true } });
    assert.equal(debounce.options?.idempotencyKey, '');
    assert.deepEqual(debounce.options?.debounce, { key: 'd', period: { seconds: 1, nanos: 500_000_000 }, mode: DebounceMode.DEBOUNCE_MODE_DEBOUNCE });
    const simple = toScheduleRequest('x', {}, { deduplication: { id: 'd' } });
    assert.equal(simple.options?.idempotencyKey, 'd');
    assert.equal(simple.options?.idempotencyTtl, undefined);
    assert.throws(() => toScheduleRequest('x', {}, { deduplication: { id: 'd', ttl: 1, extend: true } }), (e: unknown) =>
      e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'options.deduplication');
    assert.throws(() => toScheduleRequest('x', {}, { jobId: 'j', deduplication: { id: 'd' } }), (e: unknown) =>
      e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'options.deduplication');
  });

  it("maps BullMQ's removeOnComplete/removeOnFail onto retention, and its own option beats them", () => {
    const none = toScheduleRequest('x', {}, { removeOnComplete: false, removeOnFail: 100 });
    assert.equal(none.options?.retention, undefined);
    const bull = toScheduleRequest('x', {}, { removeOnComplete: true, removeOnFail: { age: 3600, count: 10 } });
    assert.deepEqual(bull.options?.retention?.completed, msToDuration(0));
    assert.deepEqual(bull.options?.retention?.failed, msToDuration(3_600_000));
    assert.equal(bull.options?.retention?.cancelled, undefined);
    const own = toScheduleRequest('x', {}, { removeOnComplete: true, retention: { completed: '2h', cancelled: 0 } });
    assert.deepEqual(own.options?.retention?.completed, msToDuration(7_200_000));
    assert.deepEqual(own.options?.retention?.cancelled, msToDuration(0));
    assert.throws(
      () => toScheduleRequest('x', {}, { removeOnFail: { age: -1 } }),
      (e: unknown) => e instanceof SwitchyardError && e.message.includes('options.retention.failed'),
    );
  });

  it('sends class instances and Dates as JSON, and refuses non-objects', () => {
    const when = new Date('2030-01-02T03:04:05.000Z');
    const req = toScheduleRequest('x', { when, nested: new Map() });
    assert.deepEqual(req.payload, { when: '2030-01-02T03:04:05.000Z', nested: {} });
    assert.throws(() => toScheduleRequest('x', [1, 2]), (e: unknown) => e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'payload');
    assert.throws(() => toScheduleRequest('x', { big: 1n }), (e: unknown) => e instanceof SwitchyardError && e.fieldViolations[0]?.field === 'payload');
  });

  it('encodes nested payloads on the wire', () => {
    const payload = { a: { b: [1, 'two', null, { c: true }] } };
    const req = toScheduleRequest('x', payload);
    const back = pb.ScheduleTaskRequest.decode(pb.ScheduleTaskRequest.encode(req).finish());
    assert.deepEqual(back.payload, payload);
  });
});

describe('task status', () => {
  it('names enums and turns empty strings into undefined', () => {
    const s = TaskStatus.fromPartial({
      id: 't',
      name: 'n',
      taskType: PbTaskType.TASK_TYPE_INTEGRATION,
      state: TaskState.TASK_STATE_COMPENSATED,
      source: TaskSource.TASK_SOURCE_N8N,
      createdAt: new Date(1000),
      userId: '',
    });
    const info = toTaskInfo(s);
    assert.equal(info.status, 'COMPENSATED');
    assert.equal(info.source, 'N8N');
    assert.equal(info.taskType, 'INTEGRATION');
    assert.equal(info.userId, undefined);
    assert.equal(info.isFinal, true);
    assert.equal(toTaskInfo({ ...s, state: 99 as TaskState }).status, 'UNRECOGNIZED');
  });
});

describe('SwitchyardError', () => {
  it('decodes BadRequest and RetryInfo from grpc-status-details-bin', () => {
    const details = Status.encode({
      code: 3,
      message: 'bad',
      details: [
        {
          typeUrl: 'type.googleapis.com/google.rpc.BadRequest',
          value: BadRequest.encode({ fieldViolations: [{ field: 'name', description: 'must not be empty', reason: '', localizedMessage: undefined }] }).finish(),
        },
        { typeUrl: 'type.googleapis.com/google.rpc.RetryInfo', value: RetryInfo.encode({ retryDelay: { seconds: 2, nanos: 500_000_000 } }).finish() },
        { typeUrl: 'type.googleapis.com/unknown.Thing', value: new Uint8Array([1, 2, 3]) },
      ],
    }).finish();
    const md = new Metadata();
    md.set('grpc-status-details-bin', Buffer.from(details));
    const err = SwitchyardError.from({ code: 3, details: 'name: must not be empty', metadata: md }, 'ScheduleTask');
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.deepEqual(err.fieldViolations, [{ field: 'name', description: 'must not be empty' }]);
    assert.equal(err.retryDelayMs, 2500);
    assert.equal(err.message, 'INVALID_ARGUMENT: name: must not be empty');
    assert.equal(err.transient, false);
  });

  it('survives garbage details and wraps non-gRPC errors', () => {
    const md = new Metadata();
    md.set('grpc-status-details-bin', Buffer.from([0xff, 0xff, 0xff]));
    const err = SwitchyardError.from({ code: 14, details: 'connection refused', metadata: md });
    assert.equal(err.code, 'UNAVAILABLE');
    assert.equal(err.transient, true);
    assert.deepEqual(err.fieldViolations, []);
    assert.equal(SwitchyardError.from(new Error('boom')).code, 'UNKNOWN');
  });
});

describe('URLs', () => {
  it('turns URLs into gRPC targets', () => {
    assert.deepEqual(parseUrl('http://127.0.0.1:50051'), { target: '127.0.0.1:50051', secure: false });
    assert.deepEqual(parseUrl('https://switchyard.example.com'), { target: 'switchyard.example.com:443', secure: true });
    assert.deepEqual(parseUrl('http://[::1]:7000'), { target: '[::1]:7000', secure: false });
    assert.deepEqual(parseUrl('localhost:50051'), { target: 'localhost:50051', secure: false });
    assert.throws(() => parseUrl('http://host:1/path'), SwitchyardError);
  });

  it('splits several replicas’ URLs, comma-separated or in an array', () => {
    assert.deepEqual(parseUrls('http://127.0.0.1:50051'), [{ target: '127.0.0.1:50051', secure: false }]);
    assert.deepEqual(parseUrls(' http://10.0.0.1:1 , https://b.example ,, '), [
      { target: '10.0.0.1:1', secure: false },
      { target: 'b.example:443', secure: true },
    ]);
    assert.deepEqual(parseUrls(['http://a:1,http://b:2', 'c:3']), [
      { target: 'a:1', secure: false },
      { target: 'b:2', secure: false },
      { target: 'c:3', secure: false },
    ]);
    // A bare ipv4:/ipv6: target keeps its own list.
    assert.deepEqual(parseUrls('ipv4:10.0.0.1:1,10.0.0.2:2'), [{ target: 'ipv4:10.0.0.1:1,10.0.0.2:2', secure: false }]);
    assert.throws(() => parseUrls(' , '), SwitchyardError);
    assert.throws(() => parseUrls([]), SwitchyardError);
    assert.throws(() => parseUrls('http://a:1,http://b:2/path'), SwitchyardError);
  });

  it('balances plaintext IP literals of one family on one channel, else makes a channel per URL', () => {
    const targetOf = (url: string | string[]): string => {
      const conn = new SwitchyardConnection({ url });
      conn.close();
      return conn.target;
    };
    assert.equal(targetOf('http://127.0.0.1:1'), '127.0.0.1:1');
    assert.equal(targetOf('http://127.0.0.1:1,127.0.0.2:2'), 'ipv4:127.0.0.1:1,127.0.0.2:2');
    assert.equal(targetOf(['http://[::1]:1', 'http://[::1]:2']), 'ipv6:[::1]:1,[::1]:2');
    assert.equal(targetOf('http://127.0.0.1:1,http://[::1]:2'), '127.0.0.1:1,[::1]:2');
    assert.equal(targetOf('http://127.0.0.1:1,http://localhost:2'), '127.0.0.1:1,localhost:2');
    assert.equal(targetOf('https://127.0.0.1:1,https://127.0.0.1:2'), '127.0.0.1:1,127.0.0.1:2');
    assert.throws(() => new SwitchyardConnection({ url: [] }), SwitchyardError);
    assert.throws(() => new SwitchyardConnection({ url: ' ' }), SwitchyardError);
  });
});

describe('worker helpers', () => {
  it('heartbeats at the interval, else a third of the lease, never under 100 ms', () => {
    assert.equal(heartbeatPeriod({ workerId: 'w', leaseTtl: { seconds: 30, nanos: 0 }, heartbeatInterval: { seconds: 10, nanos: 0 } }), 10_000);
    assert.equal(heartbeatPeriod({ workerId: 'w', leaseTtl: { seconds: 9, nanos: 0 }, heartbeatInterval: undefined }), 3_000);
    assert.equal(heartbeatPeriod({ workerId: 'w', leaseTtl: undefined, heartbeatInterval: undefined }), 5_000);
    assert.equal(heartbeatPeriod({ workerId: 'w', leaseTtl: undefined, heartbeatInterval: { seconds: 0, nanos: 1000 } }), 100);
  });

  it('cuts text on a character boundary', () => {
    assert.equal(truncateUtf8('abc', 8), 'abc');
    assert.equal(truncateUtf8('abcdef', 3), 'abc');
    assert.equal(truncateUtf8('aé', 2), 'a');
    assert.equal(truncateUtf8('é', 0), '');
  });

  it('withSwitchyardCancellation speaks the backend’s key names and takes BullMQ’s signal', async () => {
    // src/backend/bullmq/conn.rs: publish_cancel.
    assert.equal(switchyardCancelChannel('bull', 'emails'), 'bull:emails:switchyard:cancel');
    assert.equal(switchyardCancelMarker('bull', 'emails', '0190-ab'), 'bull:emails:0190-ab:switchyard:cancel');
    // BullMQ 5 passes its own AbortSignal only to a processor of three parameters.
    const wrapped = withSwitchyardCancellation(async () => 1, { connection: 'redis://127.0.0.1:1', logger: false });
    assert.equal(wrapped.length, 3);
    // Nothing connects before a job runs.
    await wrapped.close();
    await assert.rejects(wrapped({ id: '1', name: 'n', queueName: 'q', data: {} }), /closed/);
    assert.throws(() => withSwitchyardCancellation(async () => 1, {} as never), TypeError);
  });
});

describe('entry points', () => {
  it('@switchyard/client/core loads no NestJS package', async () => {
    const { readFileSync } = await import('node:fs');
    const { dirname, resolve } = await import('node:path');
    const { fileURLToPath } = await import('node:url');
    const start = resolve(dirname(fileURLToPath(import.meta.url)), '../src/core.js');
    const seen = new Set<string>();
    const bare = new Set<string>();
    const staticBare = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) {
        return;
      }
      seen.add(file);
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(['"]([^'"]+)['"]\)|(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g)) {
        const spec = (m[1] ?? m[2] ?? m[3]) as string;
        if (spec.startsWith('.')) {
          visit(resolve(dirname(file), spec));
        } else {
          bare.add(spec);
          if (m[2] === undefined) {
            staticBare.add(spec);
          }
        }
      }
    };
    visit(start);
    assert.ok(seen.size > 10, `walked ${seen.size} files`);
    assert.deepEqual([...bare].filter((s) => s.startsWith('@nestjs/') || s === 'protobufjs' || s === 'reflect-metadata'), []);
    // The optional BullMQ peers load only when a wrapped processor runs.
    assert.ok(bare.has('ioredis') && bare.has('bullmq'), [...bare].join(', '));
    assert.deepEqual([...staticBare].filter((s) => s === 'ioredis' || s === 'bullmq'), []);
  });

  it('@switchyard/client/nestjs-grpc exposes the NestJS interfaces and decorators', async () => {
    const nest = await import('../src/nestjs-grpc.js');
    assert.equal(typeof nest.OrchestratorServiceControllerMethods, 'function');
    assert.equal(nest.ORCHESTRATOR_SERVICE_NAME, 'OrchestratorService');
    assert.equal(nest.SWITCHYARD_V1_PACKAGE_NAME, 'switchyard.v1');
  });
});
