/**
 * The generated switchyard.v1 messages, enums and service definitions
 * (ts-proto, from proto/switchyard/v1), for callers that need the wire
 * shapes: `import { pb } from '@switchyard/client'`.
 */
export * from './gen/switchyard/v1/task.js';
export * from './gen/switchyard/v1/orchestrator.js';
export * from './gen/switchyard/v1/worker.js';
export * from './gen/switchyard/v1/schedule.js';
export * from './gen/switchyard/v1/flow.js';
export * from './gen/switchyard/v1/keys.js';
