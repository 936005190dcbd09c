/**
 * The client without NestJS: `@switchyard/client/core` loads neither
 * @nestjs/common nor @nestjs/core. Everything here is also exported by the
 * package root, next to the NestJS module.
 */
export {
  SwitchyardClient,
  closeDefaultSwitchyardClient,
  configureSwitchyard,
  defaultSwitchyardClient,
  setDefaultSwitchyardClient,
  executionManager,
  standardizedOrchestrator,
  type SwitchyardClientOptions,
} from './client.js';
export {
  DEFAULT_CALL_TIMEOUT_MS,
  SwitchyardConnection,
  parseUrl,
  parseUrls,
  tlsCredentials,
  type ParsedUrl,
  type CallSettings,
  type SwitchyardConnectionOptions,
  type SwitchyardTlsFiles,
} from './connection.js';
export { SwitchyardFlow, type ConcurrencyPolicyInfo, type FlowRules } from './flow.js';
export {
  SwitchyardSchedules,
  toScheduleSpec,
  toSchedulerInfo,
  type JobTemplate,
  type RepeatOptions,
  type SchedulerInfo,
} from './schedules.js';
export {
  NonRetryableError,
  RetryableError,
  SwitchyardError,
  TaskCancelledError,
  decodeStatusDetails,
  grpcCodeName,
  type FieldViolation,
  type GrpcCodeName,
  type SwitchyardErrorInit,
  type TaskFailureOptions,
} from './errors.js';
export {
  ExecutionManagerService,
  ExecutionTask,
  LogTask,
  ScanTask,
  TopologyTask,
  UserTask,
  UtilTask,
  type ExecutionManagerSettings,
  type ExecutionTaskOptions,
  type ExecutionTaskView,
  type SubmitOptions,
} from './execution-manager.service.js';
export { TaskFailedError, TaskHandle } from './handle.js';
export { asWatchStream, type WatchStream } from './watch.js';
export {
  DEFAULT_CANCEL_TIMEOUT_MS,
  MAX_BULK_TASKS,
  StandardizedOrchestratorService,
  type CancelOptions,
  type ComplexWorkflowOptions,
  type ExternalIntegrationOptions,
  type KindOptions,
  type OrchestratorSettings,
} from './orchestrator.service.js';
export * from './types.js';
export { TaskContext, type TaskHandlerFn, type TaskLogLevel } from './worker/context.js';
export {
  DEFAULT_CONCURRENCY,
  DEFAULT_DRAIN_TIMEOUT_MS,
  DEFAULT_IMMEDIATE_SLOTS,
  SwitchyardWorker,
  createWorker,
  type CreateWorkerOptions,
  type TaskHandlerRegistration,
  type TaskOutcomeEvent,
  type WorkerLogger,
} from './worker/worker.js';
export {
  SwitchyardCancelledError,
  switchyardCancelChannel,
  switchyardCancelMarker,
  withSwitchyardCancellation,
  type BullJobLike,
  type CancellableProcessor,
  type SwitchyardCancellableProcessor,
  type SwitchyardCancellationLogger,
  type SwitchyardCancellationOptions,
  type SwitchyardRedisConnection,
} from './bullmq.js';
export * as pb from './pb.js';
