/**
 * Unary gRPC calls straight over Node's HTTP/2 session, without grpc-js's
 * channel, resolver, load balancer and interceptor stack.
 *
 * A unary call is one HTTP/2 request: `POST /package.Service/Method` with
 * `content-type: application/grpc`, one length-prefixed message as the body,
 * and the status in the trailers (or, for an answer without a message, in
 * the headers: "trailers-only"). grpc-js does the same on the wire but spends
 * most of a call's time in the layers above it (bench/nestjs/README.md): this
 * transport is what {@link SwitchyardConnection} uses for its unary calls to
 * one server given by URL without custom credentials or channel options.
 * Streams (WatchTasks, the worker stream) and the other cases stay on
 * grpc-js.
 *
 * Failures are reported as grpc-js reports them (an object with `code`,
 * `details` and `metadata`), so `SwitchyardError.from` reads both alike:
 * a session that cannot connect or breaks is `UNAVAILABLE` (the next call
 * opens a new one), a deadline that passes is `DEADLINE_EXCEEDED`, an abort
 * is `CANCELLED`, and a server's status is its code, message and
 * `grpc-status-details-bin`.
 */
import http2 from 'node:http2';
import type { SecureClientSessionOptions } from 'node:http2';
import { Metadata, status as GrpcStatus } from '@grpc/grpc-js';

/** What a failed call rejects with: the shape of grpc-js's `ServiceError`. */
export interface UnaryFailure extends Error {
  code: number;
  details: string;
  metadata: Metadata;
}

/** Where and how to connect. */
export interface H2Target {
  /** `host:port` or `[v6]:port`. */
  authority: string;
  /** TLS (`https`), with `tls`'s files if given, else the system roots. */
  secure: boolean;
  /** CA, client key and certificate (PEM), for TLS. */
  tls?: { ca?: Buffer | null; key?: Buffer | null; cert?: Buffer | null };
  /** The largest answer accepted, in bytes. */
  maxReceiveBytes: number;
  /** The largest request sent, in bytes. */
  maxSendBytes: number;
}

const {
  HTTP2_HEADER_STATUS,
  HTTP2_HEADER_CONTENT_TYPE,
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_AUTHORITY,
  HTTP2_HEADER_SCHEME,
  HTTP2_HEADER_TE,
  HTTP2_HEADER_USER_AGENT,
  NGHTTP2_CANCEL,
  NGHTTP2_REFUSED_STREAM,
  NGHTTP2_ENHANCE_YOUR_CALM,
  NGHTTP2_INADEQUATE_SECURITY,
} = http2.constants;

const USER_AGENT = 'switchyard-node/0.1 (node:http2)';
/** How long a session that missed a deadline has to answer a ping. */
const PING_TIMEOUT_MS = 10_000;

/** A failure in grpc-js's shape. */
export function failure(code: number, details: string, metadata: Metadata = new Metadata()): UnaryFailure {
  const e = new Error(`${code} ${GrpcStatus[code] ?? code}: ${details}`) as UnaryFailure;
  e.code = code;
  e.details = details;
  e.metadata = metadata;
  return e;
}

/** gRPC's mapping of an HTTP status other than 200 (doc/http-grpc-status-mapping.md). */
function fromHttpStatus(status: number): number {
  switch (status) {
    case 400:
      return GrpcStatus.INTERNAL;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return GrpcStatus.UNAVAILABLE;
    default:
      return GrpcStatus.UNKNOWN;
  }
}

/** gRPC's mapping of an HTTP/2 RST_STREAM code (as grpc-js maps it). */
function fromResetCode(code: number): number {
  switch (code) {
    case NGHTTP2_REFUSED_STREAM:
      return GrpcStatus.UNAVAILABLE;
    case NGHTTP2_CANCEL:
      return GrpcStatus.CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
      return GrpcStatus.PERMISSION_DENIED;
    default:
      return GrpcStatus.INTERNAL;
  }
}

/** ` (caused by: …)` for an error with a cause, such as a refused connection. */
function causeOf(err: Error): string {
  const cause = (err as { cause?: unknown }).cause;
  return cause instanceof Error ? ` (caused by: ${cause.message})` : '';
}

/** `grpc-message` is percent-encoded. */
function decodeMessage(raw: unknown): string {
  if (typeof raw !== 'string') {
    return '';
  }
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/** The `grpc-timeout` header for `ms` milliseconds (at most 8 digits). */
function grpcTimeout(ms: number): string {
  const m = Math.max(1, Math.ceil(ms));
  return m < 1e8 ? `${m}m` : `${Math.min(99_999_999, Math.ceil(m / 1000))}S`;
}

/** Unary calls to one server over one HTTP/2 session, opened on first use and again after it breaks. */
export class H2Unary {
  private session: http2.ClientHttp2Session | undefined;
  /** Calls in flight per session (a session keeps the process alive while it has any). */
  private readonly active = new WeakMap<http2.ClientHttp2Session, number>();
  private closed = false;
  private readonly origin: string;

  constructor(private readonly target: H2Target) {
    this.origin = `${target.secure ? 'https' : 'http'}://${target.authority}`;
  }

  /** Sends `body` (one serialized message) to `path`; resolves with the answer's message. */
  call(path: string, body: Buffer, metadata: Metadata, deadline: number, signal?: AbortSignal): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (this.closed) {
        reject(failure(GrpcStatus.UNAVAILABLE, 'the connection is closed'));
        return;
      }
      if (body.length > this.target.maxSendBytes) {
        reject(failure(GrpcStatus.RESOURCE_EXHAUSTED, `the request is ${body.length} bytes, over the limit of ${this.target.maxSendBytes}`));
        return;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        reject(failure(GrpcStatus.DEADLINE_EXCEEDED, 'the deadline passed before the call started'));
        return;
      }
      let session: http2.ClientHttp2Session;
      try {
        session = this.open();
      } catch (err) {
        reject(failure(GrpcStatus.UNAVAILABLE, `cannot connect to ${this.origin}: ${(err as Error).message}`));
        return;
      }
      const headers: http2.OutgoingHttpHeaders = {
        ...metadata.toHttp2Headers(),
        [HTTP2_HEADER_METHOD]: 'POST',
        [HTTP2_HEADER_SCHEME]: this.target.secure ? 'https' : 'http',
        [HTTP2_HEADER_AUTHORITY]: this.target.authority,
        [HTTP2_HEADER_PATH]: path,
        [HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
        [HTTP2_HEADER_TE]: 'trailers',
        [HTTP2_HEADER_USER_AGENT]: USER_AGENT,
        'grpc-timeout': grpcTimeout(left),
      };
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request(headers, { endStream: false });
      } catch (err) {
        this.drop(session);
        reject(failure(GrpcStatus.UNAVAILABLE, `cannot start a call on ${this.origin}: ${(err as Error).message}`));
        return;
      }
      this.hold(session);
      let settled = false;
      let httpStatus = 0;
      let contentType = '';
      let head: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      let received = 0;
      const settle = (err: UnaryFailure | undefined, message?: Buffer): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.release(session);
        if (err) {
          reject(err);
        } else {
          resolve(message as Buffer);
        }
      };
      const timer = setTimeout(() => {
        settle(failure(GrpcStatus.DEADLINE_EXCEEDED, `no answer within the deadline (${Math.round(left)} ms)`));
        stream.close(NGHTTP2_CANCEL);
        this.probe(session);
      }, left);
      const onAbort = (): void => {
        settle(failure(GrpcStatus.CANCELLED, 'the call was aborted'));
        stream.close(NGHTTP2_CANCEL);
      };
      signal?.addEventListener('abort', onAbort, { once: true });

      stream.on('response', (h) => {
        head = h;
        httpStatus = Number(h[HTTP2_HEADER_STATUS] ?? 0);
        contentType = String(h[HTTP2_HEADER_CONTENT_TYPE] ?? '');
        if (h['grpc-status'] !== undefined) {
          // Trailers-only: the status is in the headers.
          this.finish(h, settle, chunks, received);
        }
      });
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > this.target.maxReceiveBytes + 5) {
          settle(failure(GrpcStatus.RESOURCE_EXHAUSTED, `the answer is over the limit of ${this.target.maxReceiveBytes} bytes`));
          stream.close(NGHTTP2_CANCEL);
          return;
        }
        chunks.push(chunk);
      });
      stream.on('trailers', (t) => this.finish(t, settle, chunks, received));
      let broke: Error | undefined;
      stream.on('error', (err: Error) => {
        // Settled on 'close', which follows, from the reset code and the session.
        broke = err;
      });
      stream.on('close', () => {
        if (settled) {
          return;
        }
        const code = stream.rstCode ?? 0;
        if (session.destroyed || session.closed || (code === NGHTTP2_CANCEL && broke !== undefined)) {
          // The connection went away under the call (or never came up).
          const why = broke ? `: ${broke.message}${causeOf(broke)}` : '';
          settle(failure(GrpcStatus.UNAVAILABLE, `the connection to ${this.origin} closed during the call${why}`));
        } else if (code !== 0) {
          settle(failure(fromResetCode(code), `the server reset the call (HTTP/2 code ${code})`));
        } else if (head !== undefined && httpStatus !== 200) {
          settle(failure(fromHttpStatus(httpStatus), `the server answered HTTP ${httpStatus}`));
        } else if (head !== undefined && !contentType.startsWith('application/grpc')) {
          settle(failure(GrpcStatus.UNKNOWN, `the server answered with content-type ${contentType || 'none'}`));
        } else {
          settle(failure(GrpcStatus.UNAVAILABLE, `the call to ${this.origin} ended without a status${broke ? `: ${broke.message}` : ''}`));
        }
      });
      stream.end(frame(body));
    });
  }

  /** Closes the session; calls in flight finish first. */
  close(): void {
    this.closed = true;
    this.session?.close();
    this.session = undefined;
  }

  /** Settles a call from its status (trailers, or headers for trailers-only). */
  private finish(
    trailers: http2.IncomingHttpHeaders,
    settle: (err: UnaryFailure | undefined, message?: Buffer) => void,
    chunks: Buffer[],
    received: number,
  ): void {
    const code = Number(trailers['grpc-status']);
    const details = decodeMessage(trailers['grpc-message']);
    if (!Number.isInteger(code) || code < 0 || code > 16) {
      settle(failure(GrpcStatus.UNKNOWN, `the server sent no valid grpc-status (${String(trailers['grpc-status'])})`));
      return;
    }
    if (code !== GrpcStatus.OK) {
      settle(failure(code, details, Metadata.fromHttp2Headers(trailers)));
      return;
    }
    const all = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received);
    if (all.length < 5) {
      settle(failure(GrpcStatus.INTERNAL, 'the server answered OK without a message'));
      return;
    }
    if (all[0] !== 0) {
      settle(failure(GrpcStatus.INTERNAL, 'the server compressed its answer, which this client did not ask for'));
      return;
    }
    const len = all.readUInt32BE(1);
    if (len > this.target.maxReceiveBytes) {
      settle(failure(GrpcStatus.RESOURCE_EXHAUSTED, `the answer is ${len} bytes, over the limit of ${this.target.maxReceiveBytes}`));
      return;
    }
    if (all.length !== 5 + len) {
      settle(failure(GrpcStatus.INTERNAL, `a unary answer of ${all.length - 5} bytes for a message of ${len}`));
      return;
    }
    settle(undefined, all.subarray(5));
  }

  /** The session, opened if there is none. */
  private open(): http2.ClientHttp2Session {
    const current = this.session;
    if (current !== undefined && !current.closed && !current.destroyed) {
      return current;
    }
    const options: SecureClientSessionOptions = {};
    if (this.target.secure) {
      if (this.target.tls?.ca) options.ca = this.target.tls.ca;
      if (this.target.tls?.key) options.key = this.target.tls.key;
      if (this.target.tls?.cert) options.cert = this.target.tls.cert;
    }
    const session = http2.connect(this.origin, options);
    // The session's socket must not keep the process alive while no call
    // is in flight (grpc-js's channels do not either).
    session.unref();
    const forget = (): void => this.drop(session);
    session.on('error', forget);
    session.on('goaway', forget);
    session.on('close', forget);
    this.session = session;
    return session;
  }

  /** Forgets `session` (the next call opens another) and destroys it once its calls are done. */
  private drop(session: http2.ClientHttp2Session): void {
    if (this.session === session) {
      this.session = undefined;
    }
    if (!session.closed && !session.destroyed) {
      session.close();
    }
  }

  /** After a missed deadline: a session that does not answer a ping in time is dropped. */
  private probe(session: http2.ClientHttp2Session): void {
    if (session.closed || session.destroyed) {
      return;
    }
    const t = setTimeout(() => {
      this.drop(session);
      session.destroy();
    }, PING_TIMEOUT_MS);
    t.unref();
    try {
      session.ping((err) => {
        clearTimeout(t);
        if (err) {
          this.drop(session);
        }
      });
    } catch {
      clearTimeout(t);
      this.drop(session);
    }
  }

  /** A call started: the session keeps the process alive until it ends. */
  private hold(session: http2.ClientHttp2Session): void {
    const n = this.active.get(session) ?? 0;
    this.active.set(session, n + 1);
    if (n === 0 && !session.destroyed) {
      session.ref();
    }
  }

  private release(session: http2.ClientHttp2Session): void {
    const n = (this.active.get(session) ?? 1) - 1;
    this.active.set(session, n);
    if (n === 0 && !session.destroyed) {
      session.unref();
    }
  }
}

/** One gRPC message frame: not compressed, length, message. */
function frame(body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = 0;
  out.writeUInt32BE(body.length, 1);
  body.copy(out, 5);
  return out;
}
