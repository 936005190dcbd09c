/**
 * The connection to a Switchyard server: one @grpc/grpc-js channel shared by
 * the orchestrator service, the execution manager, the health check and every
 * worker stream, and typed helpers that call the generated service
 * definitions. Every error leaves here as a {@link SwitchyardError}.
 *
 * Several replicas' URLs (comma-separated, or an array) make one channel
 * balanced over all of them when they are all plaintext IP literals of one
 * family (an `ipv4:`/`ipv6:` target with the `round_robin` policy), else one
 * channel per URL: either way a call goes to a replica whose connection is
 * ready, so the client rides a failover.
 */
import { isIPv4, isIPv6 } from 'node:net';

import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientDuplexStream,
  type ClientReadableStream,
  Client,
  Metadata,
  connectivityState,
  credentials as grpcCredentials,
} from '@grpc/grpc-js';

import { readFileSync } from 'node:fs';

import { HealthCheckRequest, HealthCheckResponse_ServingStatus, HealthService } from './gen/grpc/health/v1/health.js';
import { OrchestratorServiceService } from './gen/switchyard/v1/orchestrator.js';
import { FlowServiceService } from './gen/switchyard/v1/flow.js';
import { ScheduleServiceService } from './gen/switchyard/v1/schedule.js';
import { WorkerServiceService } from './gen/switchyard/v1/worker.js';
import { SwitchyardError } from './errors.js';
import { H2Unary } from './h2-unary.js';

/** PEM files of a TLS connection (paths). */
export interface SwitchyardTlsFiles {
  /** The CAs to trust instead of the system roots. */
  caFile?: string;
  /** The client certificate chain (mTLS), with `keyFile`. */
  certFile?: string;
  /** The client certificate's private key, with `certFile`. */
  keyFile?: string;
}

/** grpc-js credentials from TLS files; a certificate without its key (or the reverse) is refused. */
export function tlsCredentials(files: SwitchyardTlsFiles): ChannelCredentials {
  const { ca, key, cert } = tlsFiles(files);
  return grpcCredentials.createSsl(ca, key, cert);
}

/** The PEM contents of `files`; `INVALID_ARGUMENT` naming the file that cannot be read. */
function tlsFiles(files: SwitchyardTlsFiles): { ca: Buffer | null; key: Buffer | null; cert: Buffer | null } {
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) {
    throw SwitchyardError.invalidArgument('tls', 'a client certificate needs both certFile and keyFile');
  }
  const read = (what: string, path: string | undefined): Buffer | null => {
    if (path === undefined) {
      return null;
    }
    try {
      return readFileSync(path);
    } catch (err) {
      throw SwitchyardError.invalidArgument(`tls.${what}`, `${path}: ${(err as Error).message}`);
    }
  };
  return { ca: read('caFile', files.caFile), key: read('keyFile', files.keyFile), cert: read('certFile', files.certFile) };
}

/** How to reach the server. */
export interface SwitchyardConnectionOptions {
  /**
   * The server: `http://host:port` (plaintext), `https://host:port` (TLS with
   * the system roots), or a bare gRPC target such as `host:port` (plaintext)
   * or `dns:///host:port`. The port defaults to 50051 for http and 443 for
   * https.
   *
   * Several replicas of one cluster: their URLs comma-separated
   * (`http://10.0.0.1:50051,http://10.0.0.2:50051`) or as an array. Each
   * call goes to a replica that is up (a standby forwards it to the
   * leader), so the client rides a failover; a call in flight on a replica
   * that dies fails with `UNAVAILABLE` and can be retried (with its
   * idempotency key, a `scheduleTask` never creates a second task). A bare
   * `ipv4:`/`ipv6:` target is passed to grpc-js as is, commas included.
   */
  url: string | readonly string[];
  /** Overrides the credentials the URL's scheme implies (mutual TLS, call credentials). */
  credentials?: ChannelCredentials;
  /**
   * TLS files for `https://` URLs: the CAs to trust (else the system roots)
   * and a client certificate (mTLS). Read when the connection is made; set
   * with an `http://` URL, they are refused rather than ignored.
   */
  tls?: SwitchyardTlsFiles;
  /** Extra @grpc/grpc-js channel options, merged over this client's. */
  channelOptions?: ChannelOptions;
  /**
   * Metadata sent with every call (an authorization header, for example), or
   * a function that returns it per call.
   */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** Deadline of each unary call, in milliseconds. Default 30 000. */
  callTimeoutMs?: number;
  /**
   * How unary calls travel. `'http2'` (the default where it applies): straight
   * over one Node HTTP/2 session per connection, which costs a fraction of
   * grpc-js's time per call (bench/nestjs/README.md); it applies to one URL
   * of the form `http(s)://host:port` or `host:port`, without `credentials`
   * or `channelOptions`. `'grpc-js'`: every call through @grpc/grpc-js, as
   * streams always are (WatchTasks, the worker stream). Either way the
   * answers and errors are the same.
   */
  transport?: 'http2' | 'grpc-js';
}

/** The default of {@link SwitchyardConnectionOptions.callTimeoutMs}. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** The largest message either side may send: payloads are at most 1 MiB by default; a server may allow more. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

type Orchestrator = typeof OrchestratorServiceService;
type UnaryMethod = {
  [K in keyof Orchestrator]: Orchestrator[K]['responseStream'] extends false ? K : never;
}[keyof Orchestrator];
type StreamMethod = {
  [K in keyof Orchestrator]: Orchestrator[K]['responseStream'] extends true ? K : never;
}[keyof Orchestrator];
/** The request message of an OrchestratorService method. */
export type RequestOf<K extends keyof Orchestrator> = Parameters<Orchestrator[K]['requestSerialize']>[0];
/** The response message of an OrchestratorService method. */
export type ResponseOf<K extends keyof Orchestrator> = ReturnType<Orchestrator[K]['responseDeserialize']>;

type WorkDef = (typeof WorkerServiceService)['work'];
/** The worker's bidirectional stream. */
export type WorkStream = ClientDuplexStream<
  Parameters<WorkDef['requestSerialize']>[0],
  ReturnType<WorkDef['responseDeserialize']>
>;

/** Per-call options. */
export interface CallSettings {
  /** Deadline in milliseconds; default the connection's `callTimeoutMs`. */
  timeoutMs?: number;
  /** Metadata for this call, added to the connection's. */
  metadata?: Record<string, string>;
  /** Cancels the call. */
  signal?: AbortSignal;
}

/** The service config of a channel balanced over several replicas. */
const ROUND_ROBIN = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

/**
 * One channel to one server (or to several replicas of it, see
 * {@link SwitchyardConnectionOptions.url}). Cheap to share; {@link close} it
 * when done.
 *
 * ```ts
 * const conn = new SwitchyardConnection({ url: 'http://127.0.0.1:50051' });
 * await conn.waitForServing(10_000);
 * ```
 */
export class SwitchyardConnection {
  /**
   * The gRPC target the URL resolved to (for example `127.0.0.1:50051`;
   * `ipv4:10.0.0.1:50051,10.0.0.2:50051` for several IP literals; the
   * targets comma-separated when each URL has a channel of its own).
   */
  readonly target: string;
  /** One gRPC target per URL given. */
  readonly targets: readonly string[];
  /**
   * The underlying @grpc/grpc-js client (channel); with several URLs that
   * are not all plaintext IP literals, the first URL's (each has its own).
   */
  readonly grpc: Client;
  private readonly options: SwitchyardConnectionOptions;
  /** One client, or one per URL (then each call picks one that is ready). */
  private readonly clients: Client[];
  /** Unary calls straight over HTTP/2, where {@link SwitchyardConnectionOptions.transport} allows. */
  private readonly lean: H2Unary | undefined;
  /** Where the next pick among {@link clients} starts (round robin). */
  private nextPick = 0;
  private closed = false;

  constructor(options: SwitchyardConnectionOptions) {
    const given: unknown = options?.url;
    const empty =
      typeof given === 'string' ? given.trim() === '' : !Array.isArray(given) || !given.some((u) => typeof u === 'string' && u.trim() !== '');
    if (empty) {
      throw SwitchyardError.invalidArgument('url', 'a server URL is required, for example http://127.0.0.1:50051');
    }
    this.options = options;
    const endpoints = parseUrls(options.url);
    this.targets = endpoints.map((e) => e.target);
    const channelOptions: ChannelOptions = {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      // Detects a server that vanished without closing (worker streams are long-lived).
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // Channelz (grpc-js's introspection service, which this client never
      // serves) would record every call: counters and a timestamp per call
      // on the channel, the subchannel and the transport.
      'grpc.enable_channelz': 0,
    };
    if (options.tls && endpoints.some((e) => !e.secure)) {
      throw SwitchyardError.invalidArgument('tls', 'TLS files are set but the URL is not https://');
    }
    const tls = options.tls ? tlsCredentials(options.tls) : undefined;
    const credsFor = (secure: boolean): ChannelCredentials =>
      options.credentials ?? (secure ? (tls ?? grpcCredentials.createSsl()) : grpcCredentials.createInsecure());
    const balanced = endpoints.length > 1 && !options.credentials && !tls ? ipListTarget(endpoints) : undefined;
    if (endpoints.length === 1) {
      const [{ target, secure }] = endpoints as [ParsedUrl];
      this.target = target;
      this.clients = [new Client(target, credsFor(secure), { ...channelOptions, ...options.channelOptions })];
    } else if (balanced !== undefined) {
      // One channel, a subchannel per replica: grpc-js's round_robin sends
      // each call to the next ready one.
      this.target = balanced;
      this.clients = [
        new Client(balanced, credsFor(false), { ...channelOptions, 'grpc.service_config': ROUND_ROBIN, ...options.channelOptions }),
      ];
    } else {
      // Host names (grpc-js resolves one name per channel) or TLS (each
      // channel checks its own host's certificate): a channel per URL.
      this.target = this.targets.join(',');
      this.clients = endpoints.map((e) => new Client(e.target, credsFor(e.secure), { ...channelOptions, ...options.channelOptions }));
    }
    this.grpc = this.clients[0] as Client;
    const only = endpoints.length === 1 ? endpoints[0] : undefined;
    const plainTarget = only !== undefined && /^(?:\[[0-9a-fA-F:.]+\]|[^:/[\]]+):\d+$/.test(only.target);
    if (options.transport !== 'grpc-js' && plainTarget && !options.credentials && !options.channelOptions) {
      this.lean = new H2Unary({
        authority: (only as ParsedUrl).target,
        secure: (only as ParsedUrl).secure,
        tls: options.tls ? tlsFiles(options.tls) : undefined,
        maxReceiveBytes: MAX_MESSAGE_BYTES,
        maxSendBytes: MAX_MESSAGE_BYTES,
      });
    }
  }

  /** Whether {@link close} was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls a unary OrchestratorService method. Rejects with a {@link SwitchyardError}. */
  unary<K extends UnaryMethod>(method: K, request: RequestOf<K>, settings: CallSettings = {}): Promise<ResponseOf<K>> {
    const def = OrchestratorServiceService[method] as unknown as {
      path: string;
      requestSerialize: (v: RequestOf<K>) => Buffer;
      responseDeserialize: (b: Buffer) => ResponseOf<K>;
    };
    return this.unaryCall(def.path, def.requestSerialize, def.responseDeserialize, request, settings);
  }

  /** Calls a ScheduleService method. Rejects with a {@link SwitchyardError}. */
  scheduleUnary<K extends keyof typeof ScheduleServiceService>(
    method: K,
    request: Parameters<(typeof ScheduleServiceService)[K]['requestSerialize']>[0],
    settings: CallSettings = {},
  ): Promise<ReturnType<(typeof ScheduleServiceService)[K]['responseDeserialize']>> {
    type Req = Parameters<(typeof ScheduleServiceService)[K]['requestSerialize']>[0];
    type Res = ReturnType<(typeof ScheduleServiceService)[K]['responseDeserialize']>;
    const def = ScheduleServiceService[method] as unknown as {
      path: string;
      requestSerialize: (v: Req) => Buffer;
      responseDeserialize: (b: Buffer) => Res;
    };
    return this.unaryCall(def.path, def.requestSerialize, def.responseDeserialize, request, settings);
  }

  /** Calls a FlowService method. Rejects with a {@link SwitchyardError}. */
  flowUnary<K extends keyof typeof FlowServiceService>(
    method: K,
    request: Parameters<(typeof FlowServiceService)[K]['requestSerialize']>[0],
    settings: CallSettings = {},
  ): Promise<ReturnType<(typeof FlowServiceService)[K]['responseDeserialize']>> {
    type Req = Parameters<(typeof FlowServiceService)[K]['requestSerialize']>[0];
    type Res = ReturnType<(typeof FlowServiceService)[K]['responseDeserialize']>;
    const def = FlowServiceService[method] as unknown as {
      path: string;
      requestSerialize: (v: Req) => Buffer;
      responseDeserialize: (b: Buffer) => Res;
    };
    return this.unaryCall(def.path, def.requestSerialize, def.responseDeserialize, request, settings);
  }

  /** Opens a server-streaming OrchestratorService call (WatchTasks). */
  serverStream<K extends StreamMethod>(method: K, request: RequestOf<K>, settings: CallSettings = {}): ClientReadableStream<ResponseOf<K>> {
    const def = OrchestratorServiceService[method] as unknown as {
      path: string;
      requestSerialize: (v: RequestOf<K>) => Buffer;
      responseDeserialize: (b: Buffer) => ResponseOf<K>;
    };
    const options: CallOptions = {};
    if (settings.timeoutMs !== undefined) {
      options.deadline = Date.now() + settings.timeoutMs;
    }
    return this.pickNow().makeServerStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      request,
      this.metadata(settings.metadata),
      options,
    );
  }

  /**
   * Opens a WorkerService.Work stream (no deadline). With a channel per
   * replica, each new stream goes to the next one that is ready, so a
   * worker that reconnects moves on to another replica.
   */
  work(): WorkStream {
    const def = WorkerServiceService.work;
    return this.pickNow().makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, this.metadata(), {});
  }

  /**
   * The server's health (`grpc.health.v1.Health/Check`) for `service` (empty:
   * the whole server): `SERVING`, `NOT_SERVING` (draining), ... Rejects when
   * the server cannot be reached.
   */
  async health(service = '', settings: CallSettings = {}): Promise<keyof typeof HealthCheckResponse_ServingStatus> {
    const def = HealthService.check;
    const res = await this.unaryCall(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      HealthCheckRequest.create({ service }),
      { timeoutMs: 5_000, ...settings },
    );
    return (HealthCheckResponse_ServingStatus[res.status] ?? 'UNKNOWN') as keyof typeof HealthCheckResponse_ServingStatus;
  }

  /**
   * Waits until the server answers its health check with `SERVING`, polling
   * every 50 ms. Rejects with the last error (or `DEADLINE_EXCEEDED`) when
   * `timeoutMs` passes.
   */
  async waitForServing(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw last instanceof SwitchyardError
          ? last
          : new SwitchyardError({ code: 'DEADLINE_EXCEEDED', details: `the server at ${this.target} was not SERVING within ${timeoutMs} ms`, cause: last });
      }
      try {
        const status = await this.health('', { timeoutMs: Math.min(left, 2_000) });
        if (status === 'SERVING') {
          return;
        }
        last = new SwitchyardError({ code: 'UNAVAILABLE', details: `health is ${status}` });
      } catch (err) {
        last = err;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(50, Math.max(0, deadline - Date.now()))));
    }
  }

  /** Closes the channel(s). Calls in flight fail with `CANCELLED`/`UNAVAILABLE`. */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      for (const c of this.clients) {
        c.close();
      }
      this.lean?.close();
    }
  }

  /** The metadata for one call: the connection's, then the call's. */
  metadata(extra?: Record<string, string>): Metadata {
    const md = new Metadata();
    const base = typeof this.options.metadata === 'function' ? this.options.metadata() : this.options.metadata;
    if (base === undefined && extra === undefined) {
      return md;
    }
    for (const [k, v] of Object.entries({ ...base, ...extra })) {
      md.set(k, v);
    }
    return md;
  }

  private async unaryCall<Req, Res>(
    path: string,
    serialize: (v: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    request: Req,
    settings: CallSettings,
  ): Promise<Res> {
    const method = path.slice(path.lastIndexOf('/') + 1);
    if (this.closed) {
      throw new SwitchyardError({ code: 'UNAVAILABLE', details: 'the Switchyard connection is closed', method });
    }
    if (settings.signal?.aborted) {
      throw new SwitchyardError({ code: 'CANCELLED', details: 'the call was aborted before it started', method });
    }
    const timeoutMs = settings.timeoutMs ?? this.options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    let res: Res | undefined;
    try {
      if (this.lean !== undefined) {
        const body = serialize(request);
        const answer = await this.lean.call(path, body, this.metadata(settings.metadata), deadline, settings.signal);
        res = deserialize(answer);
      } else if (this.clients.length > 1) {
        const client = await this.pickReady(deadline);
        if (this.closed) {
          throw new SwitchyardError({ code: 'UNAVAILABLE', details: 'the Switchyard connection is closed', method });
        }
        if (settings.signal?.aborted) {
          throw new SwitchyardError({ code: 'CANCELLED', details: 'the call was aborted before it started', method });
        }
        res = await this.unaryOn(client, path, serialize, deserialize, request, settings, deadline);
      } else {
        res = await this.unaryOn(this.grpc, path, serialize, deserialize, request, settings, deadline);
      }
    } catch (err) {
      // Made here, after the await, so that its stack ends with the
      // awaiting callers (V8's async stack frames): the caller's place in
      // the code, which grpc-js's own error no longer records (see unaryOn).
      throw SwitchyardError.from(err, method);
    }
    if (res === undefined) {
      throw new SwitchyardError({ code: 'INTERNAL', details: 'empty response', method });
    }
    return res;
  }

  /** One unary call on `client`: resolves with the reply, rejects with grpc-js's error. */
  private unaryOn<Req, Res>(
    client: Client,
    path: string,
    serialize: (v: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    request: Req,
    settings: CallSettings,
    deadline: number,
  ): Promise<Res | undefined> {
    const metadata = this.metadata(settings.metadata);
    return new Promise<Res | undefined>((resolve, reject) => {
      const done = (err: Error | null, res?: Res): void => {
        settings.signal?.removeEventListener('abort', onAbort);
        if (err) {
          reject(err);
        } else {
          resolve(res);
        }
      };
      // grpc-js captures a stack trace on every call (for the text of an
      // error that most calls never have), and capturing it cost more than
      // all of this client's own work per call (bench/nestjs/README.md).
      // With the limit at 0 for this synchronous call the capture is
      // almost free; unaryCall's error carries the caller's frames instead.
      const limit = Error.stackTraceLimit;
      Error.stackTraceLimit = 0;
      let call: ReturnType<Client['makeUnaryRequest']>;
      try {
        call = client.makeUnaryRequest(path, serialize, deserialize, request, metadata, { deadline }, done);
      } finally {
        Error.stackTraceLimit = limit;
      }
      const onAbort = () => call.cancel();
      settings.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * With a channel per URL: the client of the next URL (round robin) whose
   * channel is ready, else of the next one still connecting (every idle
   * channel is asked to connect), else the next one. Does not wait.
   */
  private pickNow(): Client {
    return this.clients[this.look(this.takeStart()).index] as Client;
  }

  /** Where a pick starts: the next URL after the last pick's start. */
  private takeStart(): number {
    const start = this.nextPick;
    this.nextPick = (start + 1) % this.clients.length;
    return start;
  }

  /**
   * From `start` on, the first channel that is ready (`settled`), else the
   * first still connecting or idle (asking idle ones to connect), else
   * `start` (`settled`: every channel is failing, so the call fails at once
   * with UNAVAILABLE, as it would on a single channel).
   */
  private look(start: number): { index: number; settled: boolean; states: connectivityState[] } {
    const n = this.clients.length;
    if (n === 1) {
      return { index: 0, settled: true, states: [] };
    }
    const states = this.clients.map((c) => c.getChannel().getConnectivityState(true));
    let connecting = -1;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      if (states[i] === connectivityState.READY) {
        return { index: i, settled: true, states };
      }
      if (connecting < 0 && states[i] !== connectivityState.TRANSIENT_FAILURE && states[i] !== connectivityState.SHUTDOWN) {
        connecting = i;
      }
    }
    return connecting < 0 ? { index: start, settled: true, states } : { index: connecting, settled: false, states };
  }

  /**
   * With a channel per URL: the client of the next URL whose channel is
   * ready, waiting (until `deadline`) while none is but some are still
   * connecting. So a call does not go to a URL that cannot be reached while
   * another can, and is never sent twice.
   */
  private async pickReady(deadline: number): Promise<Client> {
    const start = this.takeStart();
    for (;;) {
      const { index, settled, states } = this.look(start);
      if (settled || this.closed || Date.now() >= deadline) {
        return this.clients[index] as Client;
      }
      // Wake on the first change of any channel's state (and look again every second).
      const until = Math.min(deadline, Date.now() + 1_000);
      await new Promise<void>((resolve) => {
        let done = false;
        const wake = (): void => {
          if (!done) {
            done = true;
            resolve();
          }
        };
        this.clients.forEach((c, i) => c.getChannel().watchConnectivityState(states[i] as connectivityState, until, wake));
      });
    }
  }
}

/** A URL as a gRPC target and whether it needs TLS. */
export interface ParsedUrl {
  target: string;
  secure: boolean;
}

/**
 * Splits a URL list (comma-separated, or an array of URLs or lists) into
 * gRPC targets: see {@link parseUrl}. A bare `ipv4:`/`ipv6:` target is one
 * target, commas included.
 */
export function parseUrls(url: string | readonly string[]): ParsedUrl[] {
  const parts = (typeof url === 'string' ? [url] : [...url])
    .flatMap((u) => (/^\s*ipv[46]:/i.test(u) ? [u] : u.split(',')))
    .map((u) => u.trim())
    .filter((u) => u !== '');
  if (parts.length === 0) {
    throw SwitchyardError.invalidArgument('url', 'a server URL is required, for example http://127.0.0.1:50051');
  }
  return parts.map(parseUrl);
}

/**
 * The `ipv4:`/`ipv6:` target listing every URL when they are all plaintext
 * `host:port` with IP literals of one family; else undefined.
 */
function ipListTarget(urls: readonly ParsedUrl[]): string | undefined {
  const hosts = urls.map((u) => (u.secure ? undefined : /^(?:\[([^\]]+)\]|([^:[\]]+)):\d+$/.exec(u.target)));
  if (hosts.every((m) => m && m[2] !== undefined && isIPv4(m[2]))) {
    return `ipv4:${urls.map((u) => u.target).join(',')}`;
  }
  if (hosts.every((m) => m && m[1] !== undefined && isIPv6(m[1]))) {
    return `ipv6:${urls.map((u) => u.target).join(',')}`;
  }
  return undefined;
}

/** Splits a server URL into a gRPC target and whether it needs TLS. */
export function parseUrl(url: string): { target: string; secure: boolean } {
  const trimmed = url.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(trimmed)?.[1]?.toLowerCase();
  if (scheme === 'http' || scheme === 'https' || scheme === 'grpc' || scheme === 'grpcs') {
    let parsed: URL;
    try {
      parsed = new URL(trimmed);
    } catch {
      throw SwitchyardError.invalidArgument('url', `not a valid URL: ${url}`);
    }
    const secure = scheme === 'https' || scheme === 'grpcs';
    if (parsed.pathname !== '/' && parsed.pathname !== '') {
      throw SwitchyardError.invalidArgument('url', `a gRPC server URL has no path: ${url}`);
    }
    const port = parsed.port || (secure ? '443' : '50051');
    return { target: `${parsed.hostname}:${port}`, secure };
  }
  // A bare target (`host:port`, `dns:///host:port`, `unix:/path`) is passed to
  // grpc-js as is, in plaintext unless credentials say otherwise.
  return { target: trimmed, secure: false };
}
