/**
 * The original design's internal routes, served from inside the app:
 *
 * - `GET    /internal/execution-manager/tasks`      running and waiting tasks of this process's manager
 * - `GET    /internal/execution-manager/tasks/:id`  one task (its `task.id`, or a Switchyard id)
 * - `DELETE /internal/execution-manager/tasks/:id`  cancels it: `{ id, cancelled }`
 * - `GET    /internal/execution-manager/logs`       execution logs (`?id=` for one task, `?limit=` tasks)
 * - `GET    /internal/execution-manager/metrics`    global metrics
 *
 * Mount it with `SwitchyardModule.forRoot({ ..., executionManagerRoutes: true })`
 * or by listing `ExecutionManagerController` in a module's `controllers`
 * (put your guards on that module: these routes cancel tasks).
 */
import { Controller, Delete, Get, HttpException, HttpStatus, Inject, Param, Query } from '@nestjs/common';

import { SwitchyardError } from '../errors.js';
import { ExecutionManagerService } from '../execution-manager.service.js';

/** A Switchyard error as the HTTP status it means. */
function toHttp(err: unknown): never {
  if (err instanceof SwitchyardError) {
    const status =
      err.code === 'NOT_FOUND'
        ? HttpStatus.NOT_FOUND
        : err.code === 'INVALID_ARGUMENT'
          ? HttpStatus.BAD_REQUEST
          : err.code === 'UNAVAILABLE'
            ? HttpStatus.SERVICE_UNAVAILABLE
            : HttpStatus.BAD_GATEWAY;
    throw new HttpException({ statusCode: status, message: err.details, code: err.code }, status);
  }
  throw err;
}

@Controller('internal/execution-manager')
export class ExecutionManagerController {
  constructor(@Inject(ExecutionManagerService) private readonly executionManager: ExecutionManagerService) {}

  @Get('tasks')
  tasks() {
    return this.executionManager.listTasks().catch(toHttp);
  }

  @Get('tasks/:id')
  task(@Param('id') id: string) {
    return this.executionManager.getTask(id).catch(toHttp);
  }

  @Delete('tasks/:id')
  async cancel(@Param('id') id: string) {
    try {
      return { id, cancelled: await this.executionManager.cancel(id, { reason: 'DELETE /internal/execution-manager/tasks/:id' }) };
    } catch (err) {
      return toHttp(err);
    }
  }

  @Get('logs')
  logs(@Query('id') id?: string, @Query('limit') limit?: string) {
    return this.executionManager.getLogs({ id, limit: limit ? Number(limit) : undefined }).catch(toHttp);
  }

  @Get('metrics')
  metrics() {
    return this.executionManager.getMetrics().catch(toHttp);
  }
}
