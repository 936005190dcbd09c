/**
 * Schedules (`ScheduleService`): a task fired on a cron expression or an
 * interval, exactly once per tick, durably, by the server. Also in BullMQ's
 * shape: `upsertJobScheduler(id, { pattern | every, tz }, { name, data, opts })`.
 *
 * ```ts
 * await client.schedules.upsertJobScheduler('nightly-report', { pattern: '0 2 * * *', tz: 'Europe/Paris' }, {
 *   name: 'send-report',
 *   data: { to: 'ops' },
 * });
 * ```
 */
import type { SwitchyardConnection } from './connection.js';
import { msToDuration, toScheduleRequest } from './convert.js';
import { SwitchyardError } from './errors.js';
import {
  ScheduleCatchUp,
  ScheduleOverlapPolicy,
  type ScheduleInfo,
  type ScheduleSpec,
} from './gen/switchyard/v1/schedule.js';
import type { ScheduleTaskOptions } from './types.js';

/** When a schedule fires (BullMQ's `RepeatOptions`, as far as it maps). */
export interface RepeatOptions {
  /** A cron expression (5 fields, or 6 with seconds first). */
  pattern?: string;
  /** A fixed interval in milliseconds (at least 1 000), instead of `pattern`. */
  every?: number;
  /** The IANA time zone of `pattern`. Default UTC. */
  tz?: string;
  /** No fire before this time. */
  startDate?: Date | number | string;
  /** No fire after this time. */
  endDate?: Date | number | string;
  /** Each fire up to this many milliseconds later (fixed per tick). */
  jitterMs?: number;
  /** While the previous fire runs: `skip` (default), `bufferOne`, `allowAll`, `cancelOther`. */
  overlap?: 'skip' | 'bufferOne' | 'allowAll' | 'cancelOther';
  /** How late (ms) a missed fire may still run after downtime. Default 60 000. */
  catchupWindowMs?: number;
  /** Which missed fires in the window run: `all` (default) or `one` (the latest). */
  catchup?: 'all' | 'one';
}

/** What each fire schedules (BullMQ's job template). */
export interface JobTemplate {
  /** The task name. */
  name: string;
  /** The payload, a JSON object. */
  data?: unknown;
  /** The task's options, as `scheduleTask` takes them. */
  opts?: ScheduleTaskOptions;
}

/** A schedule as the server reports it. */
export interface SchedulerInfo {
  id: string;
  pattern?: string;
  every?: number;
  tz: string;
  name: string;
  paused: boolean;
  /** The next fire times (up to 5). */
  next: Date[];
  fires: number;
  skipped: number;
  missed: number;
  lastTaskId?: string;
  lastError?: string;
}

function toDate(v: Date | number | string | undefined, field: string): Date | undefined {
  if (v === undefined) {
    return undefined;
  }
  const d = v instanceof Date ? v : new Date(v);
  if (Number.isNaN(d.getTime())) {
    throw SwitchyardError.invalidArgument(field, 'not a date');
  }
  return d;
}

const OVERLAP = {
  skip: ScheduleOverlapPolicy.SCHEDULE_OVERLAP_POLICY_SKIP,
  bufferOne: ScheduleOverlapPolicy.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE,
  allowAll: ScheduleOverlapPolicy.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL,
  cancelOther: ScheduleOverlapPolicy.SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER,
} as const;

/** The spec of `upsertJobScheduler`'s arguments. */
export function toScheduleSpec(repeat: RepeatOptions, template: JobTemplate): ScheduleSpec {
  if ((repeat.pattern === undefined) === (repeat.every === undefined)) {
    throw SwitchyardError.invalidArgument('repeat', 'exactly one of pattern or every is required');
  }
  return {
    cron: repeat.pattern,
    interval: repeat.every === undefined ? undefined : msToDuration(repeat.every),
    timeZone: repeat.tz ?? '',
    startAt: toDate(repeat.startDate, 'repeat.startDate'),
    endAt: toDate(repeat.endDate, 'repeat.endDate'),
    jitter: repeat.jitterMs === undefined ? undefined : msToDuration(repeat.jitterMs),
    overlap: repeat.overlap === undefined ? ScheduleOverlapPolicy.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED : OVERLAP[repeat.overlap],
    catchupWindow: repeat.catchupWindowMs === undefined ? undefined : msToDuration(repeat.catchupWindowMs),
    catchup:
      repeat.catchup === 'one'
        ? ScheduleCatchUp.SCHEDULE_CATCH_UP_ONE
        : repeat.catchup === 'all'
          ? ScheduleCatchUp.SCHEDULE_CATCH_UP_ALL
          : ScheduleCatchUp.SCHEDULE_CATCH_UP_UNSPECIFIED,
    task: toScheduleRequest(template.name, template.data ?? {}, template.opts ?? {}),
  };
}

/** A `ScheduleInfo` as {@link SchedulerInfo}. */
export function toSchedulerInfo(s: ScheduleInfo): SchedulerInfo {
  const spec = s.spec;
  const every = spec?.interval ? Number(spec.interval.seconds) * 1000 + Math.round(spec.interval.nanos / 1e6) : undefined;
  return {
    id: s.scheduleId,
    pattern: spec?.cron,
    every,
    tz: spec?.timeZone ?? '',
    name: spec?.task?.name ?? '',
    paused: s.paused,
    next: s.nextFires,
    fires: s.fires,
    skipped: s.skipped,
    missed: s.missed,
    lastTaskId: s.lastTaskId || undefined,
    lastError: s.lastError || undefined,
  };
}

/** The schedules of one server. */
export class SwitchyardSchedules {
  constructor(private readonly connection: SwitchyardConnection) {}

  /**
   * Creates the scheduler `id`, or replaces its timing and template
   * (BullMQ's `upsertJobScheduler`). Resolves with the schedule.
   */
  async upsertJobScheduler(id: string, repeat: RepeatOptions, template: JobTemplate): Promise<SchedulerInfo> {
    const res = await this.connection.scheduleUnary('updateSchedule', {
      scheduleId: id,
      spec: toScheduleSpec(repeat, template),
      createIfMissing: true,
    });
    return toSchedulerInfo(res.schedule as ScheduleInfo);
  }

  /** One scheduler, or `undefined` when there is none by that id. */
  async getJobScheduler(id: string): Promise<SchedulerInfo | undefined> {
    try {
      const res = await this.connection.scheduleUnary('getSchedule', { scheduleId: id });
      return toSchedulerInfo(res.schedule as ScheduleInfo);
    } catch (e) {
      if (e instanceof SwitchyardError && e.code === 'NOT_FOUND') {
        return undefined;
      }
      throw e;
    }
  }

  /** Every scheduler, by id. */
  async getJobSchedulers(): Promise<SchedulerInfo[]> {
    const out: SchedulerInfo[] = [];
    let pageToken = '';
    do {
      const res = await this.connection.scheduleUnary('listSchedules', { pageSize: 1000, pageToken });
      out.push(...res.schedules.map(toSchedulerInfo));
      pageToken = res.nextPageToken;
    } while (pageToken !== '');
    return out;
  }

  /** Deletes a scheduler; resolves with whether there was one. */
  async removeJobScheduler(id: string): Promise<boolean> {
    try {
      await this.connection.scheduleUnary('deleteSchedule', { scheduleId: id });
      return true;
    } catch (e) {
      if (e instanceof SwitchyardError && e.code === 'NOT_FOUND') {
        return false;
      }
      throw e;
    }
  }

  /** Fires a scheduler now; resolves with the task's id. */
  async trigger(id: string): Promise<string> {
    return (await this.connection.scheduleUnary('triggerSchedule', { scheduleId: id })).taskId;
  }

  /** Pauses a scheduler. */
  async pause(id: string, note = ''): Promise<SchedulerInfo> {
    const res = await this.connection.scheduleUnary('pauseSchedule', { scheduleId: id, note });
    return toSchedulerInfo(res.schedule as ScheduleInfo);
  }

  /** Resumes a paused scheduler (fires missed while paused do not run). */
  async resume(id: string, note = ''): Promise<SchedulerInfo> {
    const res = await this.connection.scheduleUnary('resumeSchedule', { scheduleId: id, note });
    return toSchedulerInfo(res.schedule as ScheduleInfo);
  }
}
