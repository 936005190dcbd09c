/**
 * The NestJS flavour of the generated code (ts-proto `nestJs=true`), for apps
 * that call Switchyard through @nestjs/microservices' own gRPC transport
 * (`ClientsModule.register({ transport: Transport.GRPC, options: { package:
 * 'switchyard.v1', protoPath } })`): the `OrchestratorServiceClient` and
 * `WorkerServiceClient` interfaces, the controller interfaces and decorators,
 * and protobufjs wrappers that turn Timestamp into Date and Struct into plain
 * objects. Loading it needs @nestjs/microservices and protobufjs, and
 * registers those wrappers on protobufjs globally.
 *
 * Most apps want the package root instead, whose services run on the binary
 * codecs in src/gen.
 */
export * from './gen/nestjs/switchyard/v1/task.js';
export * from './gen/nestjs/switchyard/v1/orchestrator.js';
export * from './gen/nestjs/switchyard/v1/worker.js';

/** The proto package, for `ClientsModule.register({ options: { package } })`. */
export const SWITCHYARD_V1_PACKAGE_NAME = 'switchyard.v1';
