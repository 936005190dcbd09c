/**
 * Typed errors.
 *
 * Every failed call to the server rejects with a {@link SwitchyardError}: the
 * gRPC code by name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...), the server's
 * message, and the `google.rpc.BadRequest` field violations the server puts
 * in the `grpc-status-details-bin` trailer, decoded with the generated
 * `google.rpc` types. Handlers of the Node worker throw
 * {@link NonRetryableError} or {@link RetryableError} to say what happens
 * next.
 */
import { Metadata, status as GrpcStatus } from '@grpc/grpc-js';

import { BadRequest, ErrorInfo, PreconditionFailure, RetryInfo } from './gen/google/rpc/error_details.js';
import { Status as RpcStatus } from './gen/google/rpc/status.js';

/** A gRPC status code, by name. */
export type GrpcCodeName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

const CODE_NAMES: readonly GrpcCodeName[] = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

/** The name of a numeric gRPC code (`UNKNOWN` for a number outside 0..16). */
export function grpcCodeName(code: number): GrpcCodeName {
  return CODE_NAMES[code] ?? 'UNKNOWN';
}

/** One bad field of a request, from `google.rpc.BadRequest`. */
export interface FieldViolation {
  /** The field's path in the request, as the server names it (for example `options.attempts`). */
  field: string;
  /** What is wrong with it. */
  description: string;
}

/** Codes after which the same call may succeed later (the server was unreachable, draining, overloaded). */
const TRANSIENT: ReadonlySet<GrpcCodeName> = new Set<GrpcCodeName>([
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'RESOURCE_EXHAUSTED',
  'ABORTED',
  'INTERNAL',
  'UNKNOWN',
]);

/** What {@link SwitchyardError} is built from. */
export interface SwitchyardErrorInit {
  code: GrpcCodeName;
  details: string;
  fieldViolations?: FieldViolation[];
  preconditionViolations?: { type: string; subject: string; description: string }[];
  retryDelayMs?: number;
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
  metadata?: Metadata;
  method?: string;
  cause?: unknown;
}

/**
 * A call to Switchyard failed.
 *
 * ```ts
 * try {
 *   await orchestrator.scheduleTask('', {});
 * } catch (err) {
 *   if (err instanceof SwitchyardError && err.code === 'INVALID_ARGUMENT') {
 *     for (const v of err.fieldViolations) console.log(v.field, v.description);
 *   }
 * }
 * ```
 */
export class SwitchyardError extends Error {
  override readonly name = 'SwitchyardError';
  /** The gRPC code, by name. */
  readonly code: GrpcCodeName;
  /** The gRPC code, as a number. */
  readonly grpcCode: number;
  /** The server's message (gRPC's `details`), without the code. */
  readonly details: string;
  /** `google.rpc.BadRequest` field violations; empty unless `INVALID_ARGUMENT`. */
  readonly fieldViolations: FieldViolation[];
  /** `google.rpc.PreconditionFailure` violations, if the server sent any. */
  readonly preconditionViolations: { type: string; subject: string; description: string }[];
  /** `google.rpc.RetryInfo`'s delay, if the server sent one. */
  readonly retryDelayMs: number | undefined;
  /** `google.rpc.ErrorInfo`, if the server sent one. */
  readonly errorInfo: { reason: string; domain: string; metadata: Record<string, string> } | undefined;
  /** The response trailers. */
  readonly metadata: Metadata | undefined;
  /** The RPC that failed (for example `ScheduleTask`), when known. */
  readonly method: string | undefined;

  constructor(init: SwitchyardErrorInit) {
    const violations = init.fieldViolations ?? [];
    const suffix = violations.length > 0 && !init.details ? violations.map((v) => `${v.field}: ${v.description}`).join('; ') : '';
    super(`${init.code}: ${init.details || suffix || 'no message'}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = init.code;
    this.grpcCode = CODE_NAMES.indexOf(init.code);
    this.details = init.details;
    this.fieldViolations = violations;
    this.preconditionViolations = init.preconditionViolations ?? [];
    this.retryDelayMs = init.retryDelayMs;
    this.errorInfo = init.errorInfo;
    this.metadata = init.metadata;
    this.method = init.method;
  }

  /** Whether retrying the same call later may succeed (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...). */
  get transient(): boolean {
    return TRANSIENT.has(this.code);
  }

  /** The violation of one field, if any. */
  violation(field: string): FieldViolation | undefined {
    return this.fieldViolations.find((v) => v.field === field);
  }

  /**
   * Converts anything a gRPC call rejects with into a SwitchyardError,
   * decoding the `grpc-status-details-bin` trailer. A SwitchyardError is
   * returned as is; an error that is not a gRPC status becomes `UNKNOWN`.
   */
  static from(err: unknown, method?: string): SwitchyardError {
    if (err instanceof SwitchyardError) {
      return err;
    }
    if (isServiceError(err)) {
      const trailers = err.metadata instanceof Metadata ? err.metadata : undefined;
      const decoded = decodeStatusDetails(trailers);
      return new SwitchyardError({
        code: grpcCodeName(err.code),
        details: err.details ?? '',
        ...decoded,
        metadata: trailers,
        method,
        cause: err,
      });
    }
    const message = err instanceof Error ? err.message : String(err);
    return new SwitchyardError({ code: 'UNKNOWN', details: message, method, cause: err });
  }

  /** An `INVALID_ARGUMENT` raised by this client before anything was sent. */
  static invalidArgument(field: string, description: string, method?: string): SwitchyardError {
    return new SwitchyardError({
      code: 'INVALID_ARGUMENT',
      details: `${field}: ${description}`,
      fieldViolations: [{ field, description }],
      method,
    });
  }
}

interface ServiceErrorLike {
  code: number;
  details?: string;
  metadata?: unknown;
}

function isServiceError(err: unknown): err is ServiceErrorLike {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as { code?: unknown }).code === 'number' &&
    (err as { code: number }).code >= 0 &&
    (err as { code: number }).code <= GrpcStatus.UNAUTHENTICATED
  );
}

const TYPE_PREFIX = 'type.googleapis.com/';

/**
 * Decodes `google.rpc.Status` from the `grpc-status-details-bin` trailer and
 * picks out the details this client understands. Anything malformed is
 * ignored: the code and message still tell what happened.
 */
export function decodeStatusDetails(trailers: Metadata | undefined): Partial<SwitchyardErrorInit> {
  const out: Partial<SwitchyardErrorInit> = {};
  const raw = trailers?.get('grpc-status-details-bin')[0];
  if (raw === undefined || typeof raw === 'string') {
    return out;
  }
  let status: RpcStatus;
  try {
    status = RpcStatus.decode(raw);
  } catch {
    return out;
  }
  for (const any of status.details) {
    const type = any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : any.typeUrl;
    try {
      switch (type) {
        case 'google.rpc.BadRequest':
          out.fieldViolations = [
            ...(out.fieldViolations ?? []),
            ...BadRequest.decode(any.value).fieldViolations.map((v) => ({ field: v.field, description: v.description })),
          ];
          break;
        case 'google.rpc.PreconditionFailure':
          out.preconditionViolations = PreconditionFailure.decode(any.value).violations.map((v) => ({
            type: v.type,
            subject: v.subject,
            description: v.description,
          }));
          break;
        case 'google.rpc.RetryInfo': {
          const delay = RetryInfo.decode(any.value).retryDelay;
          if (delay) {
            out.retryDelayMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
          }
          break;
        }
        case 'google.rpc.ErrorInfo': {
          const info = ErrorInfo.decode(any.value);
          out.errorInfo = { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
          break;
        }
        default:
          break;
      }
    } catch {
      // A detail that does not decode is skipped.
    }
  }
  return out;
}

/** Options of the errors a task handler throws. */
export interface TaskFailureOptions {
  /** The error's kind or class, reported as `Fail.kind` (default: the error's `name`). */
  kind?: string;
  /** A stack trace or other detail, reported as `Fail.details` (default: the stack; cut at 8 KiB). */
  details?: string;
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * Thrown by a task handler: the attempt failed and no other attempt should
 * follow (the task fails for good now, whatever attempts remain). A payload
 * that does not validate is the usual case.
 */
export class NonRetryableError extends Error {
  override name = 'NonRetryableError';
  /** Always false: read by the worker, also across copies of this package. */
  readonly retryable = false as const;
  readonly kind: string | undefined;
  readonly details: string | undefined;

  constructor(message: string, options: TaskFailureOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = options.kind;
    this.details = options.details;
  }
}

/**
 * Thrown by a task handler: the attempt failed and another may follow (if
 * attempts remain), optionally after `retryAfterMs` instead of the task's
 * backoff. Any other error a handler throws is retryable too; this one only
 * adds the delay and the kind.
 */
export class RetryableError extends Error {
  override name = 'RetryableError';
  readonly retryable = true as const;
  readonly kind: string | undefined;
  readonly details: string | undefined;
  /** Wait this long before the next attempt instead of the task's backoff. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options: TaskFailureOptions & { retryAfterMs?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = options.kind;
    this.details = options.details;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** Why a task's AbortSignal fired: `signal.reason` is one of these. */
export class TaskCancelledError extends Error {
  override name = 'TaskCancelledError';
  /**
   * From the server: `cancelled` (CancelTask), `disconnected` (Disconnect),
   * `timeout` (the attempt's execution timeout), `shutdown` (the server
   * drains); the free-text reason given to CancelTask or Disconnect goes to
   * the task's log, not here. From the worker itself: `worker_shutdown` (its
   * drain timeout passed) or `connection_lost` (its stream broke; the server
   * requeues the task).
   */
  readonly reason: string;
  /** True when the server asked (the worker answers with CancelAck). */
  readonly byServer: boolean;

  constructor(reason: string, byServer: boolean) {
    super(`task cancelled: ${reason}`);
    this.reason = reason;
    this.byServer = byServer;
  }
}
