//! The OpenAPI 3.1 document of the admin HTTP API (`GET /openapi.json`),
//! built from what the routes use: the parameters from the routes' table
//! ([`super::params`], `routes::takes`), the bodies' schemas from the JSON
//! dialect's own schema writer ([`crate::pb::dialect::schemas`]), so the
//! document says what the server reads and writes. `make test-openapi`
//! fuzzes the server against it (schemathesis).

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::params::{Param, Shape, NAME_BYTES, OWNER_BYTES, REASON_BYTES};
use super::routes::{takes, PREFIX};
use crate::pb::dialect;

/// The messages the routes write, by their full names.
const MESSAGES: &[&str] = &[
    "switchyard.v1.ListTasksResponse",
    "switchyard.v1.GetTaskStatusResponse",
    "switchyard.v1.CancelTaskResponse",
    "switchyard.v1.RetryTaskResponse",
    "switchyard.v1.ReplayWorkflowResponse",
    "switchyard.v1.GetTaskLogsResponse",
    "switchyard.v1.GetMetricsResponse",
    "switchyard.v1.GetClusterStatusResponse",
    "switchyard.v1.ScheduleInfo",
    "switchyard.v1.ListFlowRulesResponse",
    "switchyard.v1.PauseQueueResponse",
    "switchyard.v1.ResumeQueueResponse",
    "switchyard.v1.TaskEvent",
    "switchyard.v1.WatchGap",
    "switchyard.v1.WatchLive",
    "switchyard.v1.LogLine",
];

const UUID: &str = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A comma-separated list of `piece`s (empty pieces allowed, so runs of
/// commas too).
fn comma_list(piece: &str) -> String {
    format!("^,*(?:(?:{piece})(?:,+(?:{piece}))*)?,*$")
}

fn param_schema(p: &Param) -> Value {
    match p.shape {
        Shape::Owner => json!({"type": "string", "maxLength": OWNER_BYTES}),
        Shape::Reason => json!({"type": "string", "maxLength": REASON_BYTES}),
        Shape::Text { max } => json!({"type": "string", "maxLength": max}),
        Shape::Name => json!({
            "type": "string",
            "pattern": format!("^[A-Za-z0-9_.:/-]{{0,{NAME_BYTES}}}$"),
        }),
        Shape::Names => json!({
            "type": "array",
            "items": {
                "type": "string",
                "pattern": comma_list(&format!("[A-Za-z0-9_.:/-]{{1,{NAME_BYTES}}}")),
            },
        }),
        Shape::Id => json!({"type": "string", "pattern": format!("^({UUID})?$")}),
        Shape::Ids => json!({
            "type": "array",
            "items": {"type": "string", "pattern": comma_list(UUID)},
        }),
        Shape::Words(w) => {
            let mut alts: Vec<String> = w.words().iter().map(|x| x.to_string()).collect();
            alts.extend(
                w.words()
                    .iter()
                    .map(|x| format!("{}{}", w.proto_prefix(), x.to_ascii_uppercase())),
            );
            json!({
                "type": "array",
                    "items": {
                    "type": "string",
                    "pattern": comma_list(&alts.join("|")),
                    "examples": w.words(),
                },
            })
        }
        Shape::Count { default, max } => {
            json!({"type": "integer", "minimum": 0, "maximum": max, "default": default})
        }
        Shape::Position => json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
        Shape::Flag => json!({
            "type": "string",
            "enum": ["true", "false", "1", "0", "yes", "no"],
            "default": "false",
        }),
    }
}

fn describe(p: &Param) -> String {
    let mut d = p.doc.to_string();
    if p.is_list() {
        d.push_str(&format!(
            " Repeat it, or separate values with commas; at most {} values.",
            crate::domain::rules::MAX_FILTER_VALUES
        ));
    }
    if let Shape::Words(w) = p.shape {
        d.push_str(&format!(
            " One of {} (the proto names, `{}…`, are read too).",
            w.words().join(", "),
            w.proto_prefix()
        ));
    }
    if matches!(p.shape, Shape::Count { .. }) {
        d.push_str(" 0 means the default.");
    }
    d
}

fn parameters(ps: &[Param]) -> Vec<Value> {
    let mut out = Vec::new();
    for p in ps {
        let schema = param_schema(p);
        let mut one = |name: &str, deprecated: bool| {
            let mut v = json!({
                "name": name,
                "in": "query",
                "required": false,
                "description": if deprecated {
                    format!("The old name of `{}`.", p.name)
                } else {
                    describe(p)
                },
                "schema": schema,
            });
            if p.is_list() {
                v["style"] = json!("form");
                v["explode"] = json!(true);
            }
            if deprecated {
                v["deprecated"] = json!(true);
            }
            out.push(v);
        };
        one(p.name, false);
        for a in p.aliases {
            one(a, true);
        }
    }
    out
}

fn path_id() -> Value {
    json!({
        "name": "id",
        "in": "path",
        "required": true,
        "description": "The task id (a UUID).",
        "schema": {"type": "string", "format": "uuid", "pattern": format!("^{UUID}$")},
    })
}

fn ok_json(schema: &str, what: &str) -> Value {
    json!({
        "description": what,
        "content": {"application/json": {"schema": schema_ref(schema)}},
    })
}

fn error(what: &str) -> Value {
    json!({
        "description": what,
        "content": {"application/json": {"schema": schema_ref("Error")}},
    })
}

/// The answers every API route may give besides its own.
fn with_errors(mut responses: Value, bad_request: bool) -> Value {
    if bad_request {
        responses["400"] = error("A bad parameter, named in `field`.");
    }
    responses["401"] = error("A bearer token is required, or the one given is not valid.");
    responses["default"] = error("Any other error: the gRPC code's HTTP status.");
    responses
}

fn get_op(summary: &str, params: &[Param], responses: Value, bad_request: bool) -> Value {
    json!({
        "summary": summary,
        "parameters": parameters(params),
        "responses": with_errors(responses, bad_request || !params.is_empty()),
    })
}

/// `name` as a copy of the generated schema `of`, with `extra` properties
/// (all required).
fn extend(schemas: &mut Map<String, Value>, name: &str, of: &str, extra: Value) {
    let Some(mut s) = schemas.get(of).cloned() else {
        return;
    };
    if let (Some(props), Some(extra)) = (s["properties"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            props.insert(k.clone(), v.clone());
        }
    }
    if let (Some(req), Some(extra)) = (s["required"].as_array_mut(), extra.as_object()) {
        req.extend(extra.keys().map(|k| json!(k)));
    }
    s["description"] = json!(format!(
        "`{of}` in the JSON dialect, and {}",
        extra_names(&extra)
    ));
    schemas.insert(name.to_string(), s);
}

fn extra_names(extra: &Value) -> String {
    extra
        .as_object()
        .map(|m| {
            m.keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn components() -> Value {
    let mut schemas: Map<String, Value> = dialect::schemas(MESSAGES).into_iter().collect();
    extend(
        &mut schemas,
        "ExecutionLogLine",
        "LogLine",
        json!({"taskId": {"type": "string", "format": "uuid"}}),
    );
    extend(
        &mut schemas,
        "ClusterStatus",
        "GetClusterStatusResponse",
        json!({"leader": {
            "description": "Partition 0's lease; null on SQLite or while none holds it.",
            "type": ["object", "null"],
            "properties": {
                "replica": {"type": "string"},
                "address": {"type": "string"},
                "term": {"type": "integer", "format": "int64"},
            },
            "required": ["replica", "address", "term"],
            "additionalProperties": false,
        }}),
    );
    let codes: Vec<&str> = (0..17)
        .map(|c| crate::pb::code_name(tonic::Code::from(c)))
        .collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "Every error's body.",
            "properties": {
                "code": {"type": "string", "enum": codes, "description": "The gRPC code's name."},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The offending parameter, for bad input."},
            },
            "required": ["code", "message"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "ExecutionLog".into(),
        json!({
            "type": "object",
            "properties": {
                "lines": {"type": "array", "items": schema_ref("ExecutionLogLine")},
                "hasMore": {"type": "boolean"},
            },
            "required": ["lines", "hasMore"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Worker".into(),
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "taskNames": {"type": "array", "items": {"type": "string"}},
                "slots": {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit."},
                "immediateSlots": {"type": "integer", "minimum": 0},
                "running": {"type": "integer", "minimum": 0},
                "freeSlots": {"type": ["integer", "null"], "minimum": 0},
                "local": {"type": "boolean", "description": "Runs inside the server."},
            },
            "required": ["id", "name", "taskNames", "slots", "immediateSlots", "running", "freeSlots", "local"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Workers".into(),
        json!({
            "type": "object",
            "properties": {"workers": {"type": "array", "items": schema_ref("Worker")}},
            "required": ["workers"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Caller".into(),
        json!({
            "type": "object",
            "description": "Who the bearer is and what it may do (the dashboard hides what it may not).",
            "properties": {
                "keyId": {"type": "string", "description": "The key's id, `token`, `open`, or `jwt:<sub>`."},
                "role": {"type": "string", "enum": ["admin", "operator", "scheduler", "reader", "worker"]},
                "namespace": {"type": "string"},
                "userId": {"type": ["string", "null"], "description": "The user a bound key is bound to."},
                "canCancel": {"type": "boolean"},
                "canOperate": {"type": "boolean", "description": "Retry, replay, pause and resume."},
                "serverWide": {"type": "boolean", "description": "Metrics, workers, cluster, schedules and flow rules."},
            },
            "required": ["keyId", "role", "namespace", "userId", "canCancel", "canOperate", "serverWide"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "SchedulePage".into(),
        json!({
            "type": "object",
            "properties": {
                "schedules": {"type": "array", "items": schema_ref("ScheduleInfo")},
                "next": {"type": "string", "description": "`after` of the next page; empty on the last."},
            },
            "required": ["schedules", "next"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Health".into(),
        json!({
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["serving", "ready", "draining", "store_cannot_commit"]},
                "reason": {"type": "string"},
            },
            "required": ["status"],
            "additionalProperties": false,
        }),
    );
    json!({
        "schemas": schemas,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Needed when `[auth] tokens` is set (all routes but the probes).",
            },
        },
    })
}

const DIALECT: &str = "Every JSON body is Switchyard's one JSON dialect (the CLI's `--json` too): \
camelCase field names (the TypeScript client's), lower-case enum words (`completed`, `bullmq`), \
numbers as JSON numbers (64-bit ones too), RFC 3339 timestamps in UTC, durations as `…Ms` \
milliseconds, every field written (`null` for an unset message; of a oneof, the member that is set). \
Filters take the clients' names (`userId`, `sessionId`, `scheduleId`, `errorKind`, `taskId`, `name`, `type`, \
`state`, `source`). An unknown or bad query parameter is a 400 naming it.";

/// The document (built once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let api = |p: &str| format!("{PREFIX}{p}");
    let mut paths = Map::new();
    paths.insert(
        api("/tasks"),
        json!({"get": get_op(
            "Tasks matching the filter, newest first, a page at a time (as ListTasks).",
            takes::LIST,
            json!({"200": ok_json("ListTasksResponse", "A page of tasks.")}),
            true,
        )}),
    );
    let task = json!({
        "parameters": [path_id()],
        "get": get_op(
            "A task's status and payload (as GetTaskStatus).",
            &[],
            json!({
                "200": ok_json("GetTaskStatusResponse", "The task."),
                "404": error("No such task."),
            }),
            true,
        ),
        "delete": get_op(
            "Cancels a task (as CancelTask).",
            takes::CANCEL,
            json!({
                "200": ok_json("CancelTaskResponse", "What the cancel did, and the task now."),
                "404": error("No such task."),
            }),
            true,
        ),
    });
    paths.insert(api("/tasks/{id}"), task);
    paths.insert(
        api("/tasks/{id}/retry"),
        json!({
            "parameters": [path_id()],
            "post": get_op(
                "Runs a failed, cancelled or compensated task again under the same id (as RetryTask).",
                takes::RETRY,
                json!({
                    "200": ok_json("RetryTaskResponse", "The task, pending again under its next run."),
                    "404": error("No such task."),
                    "409": error("The task cannot be retried (its state, or where it runs)."),
                }),
                true,
            ),
        }),
    );
    paths.insert(
        api("/tasks/{id}/replay"),
        json!({
            "parameters": [path_id()],
            "post": get_op(
                "Replays an embedded workflow from a step (as ReplayWorkflow).",
                takes::REPLAY,
                json!({
                    "200": ok_json("ReplayWorkflowResponse", "The workflow, running again under its next run."),
                    "404": error("No such task."),
                    "409": error("The task cannot be replayed (not an ended embedded workflow, or an earlier step did not complete)."),
                }),
                true,
            ),
        }),
    );
    paths.insert(
        api("/tasks/{id}/logs"),
        json!({
            "parameters": [path_id()],
            "get": get_op(
                "A task's log lines, oldest first (as GetTaskLogs).",
                takes::TASK_LOGS,
                json!({
                    "200": ok_json("GetTaskLogsResponse", "Lines, and whether more follow."),
                    "404": error("No such task."),
                }),
                true,
            ),
        }),
    );
    paths.insert(
        api("/logs"),
        json!({"get": get_op(
            "The execution log: the newest lines of the newest tasks matching the filter, oldest \
             first, each with its task id (`afterLine`: each task's lines after it); with one \
             `taskId`, that task's lines from the start.",
            takes::LOGS,
            json!({
                "200": ok_json("ExecutionLog", "Lines, and whether more exist."),
                "404": error("No such task (one `taskId`)."),
            }),
            true,
        )}),
    );
    paths.insert(
        api("/metrics"),
        json!({"get": get_op(
            "Counts, queues, throughput and latencies (as GetMetrics).",
            &[],
            json!({"200": ok_json("GetMetricsResponse", "The metrics.")}),
            true,
        )}),
    );
    paths.insert(
        api("/caller"),
        json!({"get": get_op(
            "Who the bearer is and what it may do: its key, role, namespace and user.",
            &[],
            json!({"200": ok_json("Caller", "The caller.")}),
            true,
        )}),
    );
    paths.insert(
        api("/workers"),
        json!({"get": get_op(
            "Connected workers and in-process engines.",
            &[],
            json!({"200": ok_json("Workers", "The workers.")}),
            true,
        )}),
    );
    paths.insert(
        api("/cluster"),
        json!({"get": get_op(
            "Who leads and which replicas are alive (as GetClusterStatus).",
            &[],
            json!({"200": ok_json("ClusterStatus", "The cluster.")}),
            true,
        )}),
    );
    paths.insert(
        api("/schedules"),
        json!({"get": get_op(
            "Schedules by id, each with its next fire times.",
            takes::SCHEDULES,
            json!({"200": ok_json("SchedulePage", "A page of schedules.")}),
            true,
        )}),
    );
    paths.insert(
        api("/flow"),
        json!({"get": get_op(
            "The flow rules in force in the caller's namespace (its switchyard-namespace header): concurrency policies, the default limit, the paused names (as ListFlowRules).",
            &[],
            json!({"200": ok_json("ListFlowRulesResponse", "The rules.")}),
            true,
        )}),
    );
    for (path, summary, schema, what) in [
        (
            "/flow/pause",
            "Pauses a task name or queue of the caller's namespace: its pending tasks there wait (queue_paused), running ones finish (as PauseQueue).",
            "PauseQueueResponse",
            "Whether it was paused already.",
        ),
        (
            "/flow/resume",
            "Resumes a paused task name or queue of the caller's namespace: its tasks are queued again (as ResumeQueue).",
            "ResumeQueueResponse",
            "Whether it was paused.",
        ),
    ] {
        paths.insert(
            api(path),
            json!({"post": get_op(
                summary,
                takes::PAUSE,
                json!({
                    "200": ok_json(schema, what),
                    "429": error("This server holds the most paused names it takes."),
                }),
                true,
            )}),
        );
    }
    let mut events = get_op(
        "Task events as server-sent events: `event: task` (data: a TaskEvent, id: its \
         sequence; snapshot events have no id), `event: gap` (a WatchGap), `event: live` (a \
         WatchLive, once caught up), `event: stream-error` (an Error); a `: heartbeat` comment \
         when idle. Resume with `Last-Event-ID` or `after`.",
        takes::EVENTS,
        json!({"200": {
            "description": "The stream; it ends when the server drains.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }}),
        true,
    );
    if let Some(ps) = events["parameters"].as_array_mut() {
        ps.push(json!({
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "Resume after this sequence number (EventSource sends it).",
            "schema": {"type": "integer", "minimum": 0},
        }));
    }
    paths.insert(api("/events"), json!({ "get": events }));
    paths.insert(
        "/metrics".into(),
        json!({"get": {
            "summary": "Prometheus metrics (OpenMetrics text).",
            "responses": with_errors(json!({"200": {
                "description": "The exposition.",
                "content": {"application/openmetrics-text": {"schema": {"type": "string"}}},
            }}), false),
        }}),
    );
    for (path, what) in [
        (
            "/healthz",
            "Liveness: 503 only while draining; says when the store cannot commit.",
        ),
        (
            "/readyz",
            "Readiness: 503 while draining or while the store cannot commit.",
        ),
    ] {
        paths.insert(
            path.into(),
            json!({"get": {
                "summary": what,
                "security": [],
                "responses": {
                    "200": ok_json("Health", "Serving."),
                    "503": ok_json("Health", "Not now, and why."),
                },
            }}),
        );
    }
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {
            "summary": "This document.",
            "responses": with_errors(json!({"200": {
                "description": "OpenAPI 3.1.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }}), false),
        }}),
    );
    for path in ["/", "/dashboard"] {
        paths.insert(
            path.into(),
            json!({"get": {
                "summary": "The live dashboard (one HTML page).",
                "responses": with_errors(json!({"200": {
                    "description": "The page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }}), false),
            }}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchyard admin HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": DIALECT,
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "{name} is not defined");
        }
    }

    #[test]
    fn filters_use_the_clients_names() {
        let ps = doc_params("/internal/execution-manager/tasks");
        for name in [
            "userId",
            "sessionId",
            "scheduleId",
            "taskId",
            "name",
            "type",
            "state",
            "source",
            "limit",
            "pageToken",
        ] {
            assert!(
                ps.iter()
                    .any(|p| p["name"] == name && p.get("deprecated").is_none()),
                "{name}"
            );
        }
        assert!(ps
            .iter()
            .any(|p| p["name"] == "user" && p["deprecated"] == true));
    }

    fn doc_params(path: &str) -> Vec<Value> {
        document()["paths"][path]["get"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
