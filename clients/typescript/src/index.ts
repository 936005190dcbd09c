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
  type SwitchyardModuleAsyncOptions,
  type SwitchyardModuleOptions,
  type SwitchyardWorkerModuleOptions,
} from './nest/switchyard.module.js';
export { TASK_HANDLER_METADATA, TaskHandler, type TaskHandlerMetadata, type TaskHandlerOptions } from './nest/task-handler.decorator.js';
