/**
 * Flow control (`FlowService`): pause and resume a task name or queue, and
 * concurrency policies (at most N tasks of one `concurrencyKey` at once),
 * enforced by the server for every engine (embedded workers, BullMQ,
 * Temporal, webhooks). Durable across restarts.
 *
 * ```ts
 * await client.flow.setConcurrencyPolicy('email.*', 2);
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

/** Every flow rule in force. */
export interface FlowRules {
  /** In the order they are matched (run-time ones first). */
  policies: ConcurrencyPolicyInfo[];
  /** The limit per key of keyed tasks no policy matches; 0: none. */
  defaultLimit: number;
  /** The paused names and queues. */
  paused: string[];
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
   * run at once among the tasks whose name or queue matches `pattern`.
   * Resolves with whether a policy with that pattern was replaced.
   */
  async setConcurrencyPolicy(pattern: string, limit: number): Promise<boolean> {
    return (await this.connection.flowUnary('setConcurrencyPolicy', { policy: { pattern, limit, fromConfig: false } })).replaced;
  }

  /** Deletes a concurrency policy set at run time. */
  async deleteConcurrencyPolicy(pattern: string): Promise<void> {
    await this.connection.flowUnary('deleteConcurrencyPolicy', { pattern });
  }

  /** Every rule in force. */
  async rules(): Promise<FlowRules> {
    const r = await this.connection.flowUnary('listFlowRules', {});
    return {
      policies: r.policies.map((p) => ({ pattern: p.pattern, limit: p.limit, fromConfig: p.fromConfig })),
      defaultLimit: r.defaultLimit,
      paused: r.paused,
    };
  }
}
