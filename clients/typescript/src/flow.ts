/**
 * Flow control (`FlowService`): pause and resume a task name or queue,
 * concurrency policies (at most N tasks of one `concurrencyKey` at once) and
 * rate limits (at most N starts per interval, with a burst), enforced by the
 * server for every engine (embedded workers, BullMQ, Temporal, webhooks).
 * Durable across restarts.
 *
 * ```ts
 * await client.flow.setConcurrencyPolicy('email.*', 2);
 * await client.flow.setRateLimit('hook.*', { rate: 50, intervalMs: 1000, burst: 10 });
 * await client.orchestrator.scheduleSimpleTask('email.send', { to }, { concurrencyKey: tenantId });
 * await client.flow.pauseQueue('email.send');   // pending tasks wait (QUEUE_PAUSED)
 * await client.flow.resumeQueue('email.send');
 * ```
 */
import type { SwitchyardConnection } from './connection.js';

/** A concurrency policy as the server reports it. */
export interface ConcurrencyPolicyInfo {
  /** The glob over task names and queues. */
  pattern: string;
  /** Tasks of one key at once. */
  limit: number;
  /** Set in the server's configuration file (cannot be changed here). */
  fromConfig: boolean;
}

/** A rate limit to set: at most `rate` starts per `intervalMs`, up to `burst` at once. */
export interface RateLimitSpec {
  /** Starts per interval, 1 to 1,000,000. */
  rate: number;
  /** The interval in milliseconds, 1 ms to 24 h. Default 1000. */
  intervalMs?: number;
  /** Starts at once after a quiet time, 1 to 1,000,000. Default: `rate`. */
  burst?: number;
  /** One bucket per concurrency key. Default false. */
  perKey?: boolean;
}

/** A rate limit as the server reports it. */
export interface RateLimitInfo {
  /** The glob over task names and queues. */
  pattern: string;
  rate: number;
  intervalMs: number;
  burst: number;
  perKey: boolean;
  /** Set in the server's configuration file (cannot be changed here). */
  fromConfig: boolean;
  /** Tokens in its bucket now (for a rate limit per key, the emptiest key's). */
  tokens: number;
}

/** Every flow rule in force. */
export interface FlowRules {
  /** In the order they are matched (run-time ones first). */
  policies: ConcurrencyPolicyInfo[];
  /** The limit per key of keyed tasks no policy matches; 0: none. */
  defaultLimit: number;
  /** The paused names and queues. */
  paused: string[];
  /** The rate limits, in the order they are matched (run-time ones first). */
  rateLimits: RateLimitInfo[];
}

/** The flow rules of one server. */
export class SwitchyardFlow {
  constructor(private readonly connection: SwitchyardConnection) {}

  /**
   * Pauses a task name or queue: its pending tasks wait until it is resumed;
   * running ones finish. Resolves with whether it was paused already.
   */
  async pauseQueue(name: string): Promise<boolean> {
    return (await this.connection.flowUnary('pauseQueue', { name })).already;
  }

  /** Resumes a paused task name or queue. Resolves with whether it was paused. */
  async resumeQueue(name: string): Promise<boolean> {
    return (await this.connection.flowUnary('resumeQueue', { name })).wasPaused;
  }

  /**
   * Sets a concurrency policy: at most `limit` tasks of one concurrency key
   * run at once among the tasks whose name or queue matches `pattern`;
   * `weights` gives some keys more turns per round of fairness (1 to 100;
   * others have 1). Resolves with whether a policy with that pattern was
   * replaced.
   */
  async setConcurrencyPolicy(
    pattern: string,
    limit: number,
    weights: Record<string, number> = {},
  ): Promise<boolean> {
    return (await this.connection.flowUnary('setConcurrencyPolicy', {
      policy: { pattern, limit, fromConfig: false, weights },
    })).replaced;
  }

  /** Deletes a concurrency policy set at run time. */
  async deleteConcurrencyPolicy(pattern: string): Promise<void> {
    await this.connection.flowUnary('deleteConcurrencyPolicy', { pattern });
  }

  /**
   * Sets a rate limit: at most `rate` tasks start per `intervalMs` among the
   * tasks whose name or queue matches `pattern`, up to `burst` at once (per
   * concurrency key with `perKey`). A task over the rate waits with
   * `RATE_LIMITED`. Resolves with whether one with that pattern was replaced.
   */
  async setRateLimit(pattern: string, spec: RateLimitSpec): Promise<boolean> {
    const intervalMs = spec.intervalMs ?? 1000;
    const interval = { seconds: Math.floor(intervalMs / 1000), nanos: Math.round((intervalMs % 1000) * 1e6) };
    return (
      await this.connection.flowUnary('setRateLimit', {
        rateLimit: {
          pattern,
          rate: spec.rate,
          interval,
          burst: spec.burst ?? spec.rate,
          perKey: spec.perKey ?? false,
          fromConfig: false,
          tokens: 0,
        },
      })
    ).replaced;
  }

  /** Deletes a rate limit set at run time. */
  async deleteRateLimit(pattern: string): Promise<void> {
    await this.connection.flowUnary('deleteRateLimit', { pattern });
  }

  /** Every rule in force. */
  async rules(): Promise<FlowRules> {
    const r = await this.connection.flowUnary('listFlowRules', {});
    return {
      policies: r.policies.map((p) => ({ pattern: p.pattern, limit: p.limit, fromConfig: p.fromConfig })),
      defaultLimit: r.defaultLimit,
      paused: r.paused,
      rateLimits: r.rateLimits.map((l) => ({
        pattern: l.pattern,
        rate: l.rate,
        intervalMs: l.interval ? l.interval.seconds * 1000 + Math.floor(l.interval.nanos / 1e6) : 0,
        burst: l.burst,
        perKey: l.perKey,
        fromConfig: l.fromConfig,
        tokens: l.tokens,
      })),
    };
  }
}
