/**
 * @switchyard/client: schedule, track, cancel and watch Switchyard tasks and
 * run Node workers, from NestJS (`SwitchyardModule`, `@TaskHandler`) or plain
 * TypeScript (`SwitchyardClient`, `createWorker`). See README.md.
 */
export * from './core.js';
export {
  SWITCHYARD_MODULE_OPTIONS,
  SwitchyardLifecycle,
  SwitchyardModule,
  SwitchyardQueueModule,
  type SwitchyardModuleAsyncOptions,
  type SwitchyardModuleOptions,
  type SwitchyardWorkerModuleOptions,
} from './nest/switchyard.module.js';
export { TASK_HANDLER_METADATA, TaskHandler, type TaskHandlerMetadata, type TaskHandlerOptions } from './nest/task-handler.decorator.js';
export { ExecutionManagerController } from './nest/execution-manager.controller.js';
export {
  InjectSwitchyardQueue,
  InjectSwitchyardQueue as InjectQueue,
  JOB_NAME_LABEL,
  ON_TASK_EVENT_METADATA,
  OnTaskEvent,
  PROCESSOR_METADATA,
  Processor,
  SwitchyardJob,
  SwitchyardQueue,
  getSwitchyardQueueToken,
  type ProcessorMetadata,
  type ProcessorOptions,
  type RegisterQueueOptions,
  type TaskEventName,
} from './nest/queue.js';
