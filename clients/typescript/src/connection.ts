/**
 * The connection to a Switchyard server: one @grpc/grpc-js channel shared by
 * the orchestrator service, the execution manager, the health check and every
 * worker stream, and typed helpers that call the generated service
 * definitions. Every error leaves here as a {@link SwitchyardError}.
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientDuplexStream,
  type ClientReadableStream,
  Client,
  Metadata,
  credentials as grpcCredentials,
} from '@grpc/grpc-js';

import { HealthCheckRequest, HealthCheckResponse_ServingStatus, HealthService } from './gen/grpc/health/v1/health.js';
import { OrchestratorServiceService } from './gen/switchyard/v1/orchestrator.js';
import { WorkerServiceService } from './gen/switchyard/v1/worker.js';
import { SwitchyardError } from './errors.js';

/** How to reach the server. */
export interface SwitchyardConnectionOptions {
  /**
   * The server: `http://host:port` (plaintext), `https://host:port` (TLS with
   * the system roots), or a bare gRPC target such as `host:port` (plaintext)
   * or `dns:///host:port`. The port defaults to 50051 for http and 443 for
   * https.
   */
  url: string;
  /** Overrides the credentials the URL's scheme implies (mutual TLS, call credentials). */
  credentials?: ChannelCredentials;
  /** Extra @grpc/grpc-js channel options, merged over this client's. */
  channelOptions?: ChannelOptions;
  /**
   * Metadata sent with every call (an authorization header, for example), or
   * a function that returns it per call.
   */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** Deadline of each unary call, in milliseconds. Default 30 000. */
  callTimeoutMs?: number;
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

/**
 * One channel to one server. Cheap to share; {@link close} it when done.
 *
 * ```ts
 * const conn = new SwitchyardConnection({ url: 'http://127.0.0.1:50051' });
 * await conn.waitForServing(10_000);
 * ```
 */
export class SwitchyardConnection {
  /** The gRPC target the URL resolved to (for example `127.0.0.1:50051`). */
  readonly target: string;
  /** The underlying @grpc/grpc-js client (channel). */
  readonly grpc: Client;
  private readonly options: SwitchyardConnectionOptions;
  private closed = false;

  constructor(options: SwitchyardConnectionOptions) {
    if (typeof options?.url !== 'string' || options.url.trim() === '') {
      throw SwitchyardError.invalidArgument('url', 'a server URL is required, for example http://127.0.0.1:50051');
    }
    this.options = options;
    const { target, secure } = parseUrl(options.url);
    this.target = target;
    const creds = options.credentials ?? (secure ? grpcCredentials.createSsl() : grpcCredentials.createInsecure());
    this.grpc = new Client(target, creds, {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      // Detects a server that vanished without closing (worker streams are long-lived).
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...options.channelOptions,
    });
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
    return this.grpc.makeServerStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      request,
      this.metadata(settings.metadata),
      options,
    );
  }

  /** Opens a WorkerService.Work stream (no deadline). */
  work(): WorkStream {
    const def = WorkerServiceService.work;
    return this.grpc.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, this.metadata(), {});
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

  /** Closes the channel. Calls in flight fail with `CANCELLED`/`UNAVAILABLE`. */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.grpc.close();
    }
  }

  /** The metadata for one call: the connection's, then the call's. */
  metadata(extra?: Record<string, string>): Metadata {
    const md = new Metadata();
    const base = typeof this.options.metadata === 'function' ? this.options.metadata() : this.options.metadata;
    for (const [k, v] of Object.entries({ ...base, ...extra })) {
      md.set(k, v);
    }
    return md;
  }

  private unaryCall<Req, Res>(
    path: string,
    serialize: (v: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    request: Req,
    settings: CallSettings,
  ): Promise<Res> {
    const method = path.slice(path.lastIndexOf('/') + 1);
    if (this.closed) {
      return Promise.reject(new SwitchyardError({ code: 'UNAVAILABLE', details: 'the Switchyard connection is closed', method }));
    }
    if (settings.signal?.aborted) {
      return Promise.reject(new SwitchyardError({ code: 'CANCELLED', details: 'the call was aborted before it started', method }));
    }
    const timeoutMs = settings.timeoutMs ?? this.options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    return new Promise<Res>((resolve, reject) => {
      const call = this.grpc.makeUnaryRequest(
        path,
        serialize,
        deserialize,
        request,
        this.metadata(settings.metadata),
        { deadline: Date.now() + timeoutMs },
        (err, res) => {
          settings.signal?.removeEventListener('abort', onAbort);
          if (err) {
            reject(SwitchyardError.from(err, method));
          } else if (res === undefined) {
            reject(new SwitchyardError({ code: 'INTERNAL', details: 'empty response', method }));
          } else {
            resolve(res);
          }
        },
      );
      const onAbort = () => call.cancel();
      settings.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
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
