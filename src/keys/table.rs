//! The one table of what each call needs: every gRPC method and every admin
//! route maps to a [`Need`] (what the role must grant) and a [`Scoping`]
//! (whether a caller that sees only part of the tasks may make it: the
//! handler then narrows the call to the caller's tasks). A method or route
//! not in the table needs [`Need::Admin`].

/// What a call needs of the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health and reflection.
    Open,
    /// Read tasks, logs, metrics, rules, schedules.
    Read,
    /// Schedule tasks.
    Schedule,
    /// Cancel a task.
    Cancel,
    /// Disconnect, pause and resume, retry, replay, signal, trigger.
    Operate,
    /// Change the server's configuration: workflows, flow policies,
    /// schedules.
    Configure,
    /// The worker stream.
    Work,
    /// Keys and the audit log.
    Admin,
}

impl Need {
    /// Its name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Open => "nothing",
            Need::Read => "read",
            Need::Schedule => "schedule",
            Need::Cancel => "cancel",
            Need::Operate => "operate",
            Need::Configure => "configure",
            Need::Work => "work",
            Need::Admin => "admin",
        }
    }
}

/// Whether a caller that sees only part of the tasks (a user-bound key, a
/// scheduler key) may make the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoping {
    /// Yes: the handler checks each task (another's is NOT_FOUND) and marks
    /// the tasks it schedules.
    Tasks,
    /// A user-bound key yes (the handler narrows to its user); a scheduler
    /// key no.
    User,
    /// No, but a key of any namespace yes: the call stays inside the
    /// caller's namespace (its schedules, its workers, its keys, its flow
    /// rules).
    Namespace,
    /// No, nor a key of a namespace other than `default`: the call reaches
    /// every task or the whole server.
    Global,
}

use Need::*;
use Scoping::*;

/// gRPC methods, by `/package.Service/Method` path.
const GRPC: &[(&str, Need, Scoping)] = &[
    (
        "/switchyard.v1.OrchestratorService/ScheduleTask",
        Schedule,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/ScheduleTasks",
        Schedule,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/GetTaskStatus",
        Read,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/GetTaskLogs",
        Read,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/CancelTask",
        Cancel,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/RetryTask",
        Operate,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/ReplayWorkflow",
        Operate,
        Tasks,
    ),
    (
        "/switchyard.v1.OrchestratorService/SignalTask",
        Operate,
        Tasks,
    ),
    ("/switchyard.v1.OrchestratorService/ListTasks", Read, User),
    ("/switchyard.v1.OrchestratorService/WatchTasks", Read, User),
    (
        "/switchyard.v1.OrchestratorService/Disconnect",
        Operate,
        User,
    ),
    (
        "/switchyard.v1.OrchestratorService/GetMetrics",
        Read,
        Global,
    ),
    (
        "/switchyard.v1.OrchestratorService/ListWorkflows",
        Read,
        Global,
    ),
    (
        "/switchyard.v1.OrchestratorService/GetClusterStatus",
        Read,
        Global,
    ),
    (
        "/switchyard.v1.OrchestratorService/RegisterWorkflow",
        Configure,
        Global,
    ),
    ("/switchyard.v1.WorkerService/Work", Work, Namespace),
    (
        "/switchyard.v1.ScheduleService/CreateSchedule",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/UpdateSchedule",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/DeleteSchedule",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/GetSchedule",
        Read,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/ListSchedules",
        Read,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/PauseSchedule",
        Operate,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/ResumeSchedule",
        Operate,
        Namespace,
    ),
    (
        "/switchyard.v1.ScheduleService/TriggerSchedule",
        Operate,
        Namespace,
    ),
    (
        "/switchyard.v1.FlowService/SetConcurrencyPolicy",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.FlowService/DeleteConcurrencyPolicy",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.FlowService/SetRateLimit",
        Configure,
        Namespace,
    ),
    (
        "/switchyard.v1.FlowService/DeleteRateLimit",
        Configure,
        Namespace,
    ),
    ("/switchyard.v1.FlowService/ListFlowRules", Read, Namespace),
    ("/switchyard.v1.FlowService/PauseQueue", Operate, Namespace),
    ("/switchyard.v1.FlowService/ResumeQueue", Operate, Namespace),
    ("/switchyard.v1.KeysService/CreateKey", Admin, Namespace),
    ("/switchyard.v1.KeysService/ListKeys", Admin, Namespace),
    ("/switchyard.v1.KeysService/RevokeKey", Admin, Namespace),
    (
        "/switchyard.v1.KeysService/ListAuditEvents",
        Admin,
        Namespace,
    ),
];

/// What a gRPC method needs. Health and reflection are open; a method not
/// in the table needs an admin.
pub fn grpc(path: &str) -> (Need, Scoping) {
    if path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.v1.")
        || path.starts_with("/grpc.reflection.v1alpha.")
    {
        return (Open, Global);
    }
    GRPC.iter()
        .find(|(p, _, _)| *p == path)
        .map_or((Admin, Global), |(_, n, s)| (*n, *s))
}

/// Every gRPC method of the table (for the tests' matrix).
pub fn grpc_methods() -> impl Iterator<Item = (&'static str, Need, Scoping)> {
    GRPC.iter().copied()
}

/// What an admin route needs, by method and path, and how far a scoped
/// caller reaches: the task routes narrow their answers as the gRPC
/// methods do (a user-bound key's lists, logs and event stream hold its
/// user's tasks; another's task is 404 to it; a scheduler key reads and
/// cancels the tasks it scheduled), so the dashboard page itself takes a
/// user-bound key (its global panels are refused: 403). The other routes
/// reach the whole server ([`Scoping::Global`]).
pub fn admin(method: &http::Method, path: &str) -> (Need, Scoping) {
    const API: &str = "/internal/execution-manager";
    match path {
        "/healthz" | "/readyz" => return (Open, Global),
        "/" | "/dashboard" | "/dashboard/" => return (Read, User),
        "/openapi.json" | "/metrics" => return (Read, Global),
        _ => {}
    }
    let Some(rest) = path.strip_prefix(API) else {
        return (Admin, Global);
    };
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let need = match (method.as_str(), segs.as_slice()) {
        ("DELETE", ["tasks", _]) => Cancel,
        ("POST", ["tasks", _, "retry"])
        | ("POST", ["tasks", _, "replay"])
        | ("POST", ["flow", "pause" | "resume"]) => Operate,
        ("GET" | "HEAD", _) => Read,
        _ => Admin,
    };
    let scoping = match segs.as_slice() {
        // One task: the handler answers 404 for one the caller does not see.
        ["tasks", _] | ["tasks", _, "logs" | "retry" | "replay"] | ["caller"] => Tasks,
        // Lists of tasks: narrowed to the caller's user.
        ["tasks"] | ["logs"] | ["events"] => User,
        _ => Global,
    };
    (need, scoping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_calls_need_an_admin_and_probes_nothing() {
        assert_eq!(grpc("/switchyard.v1.Nope/X"), (Admin, Global));
        assert_eq!(grpc("/grpc.health.v1.Health/Check"), (Open, Global));
        assert_eq!(
            grpc("/switchyard.v1.OrchestratorService/CancelTask"),
            (Cancel, Tasks)
        );
        let get = http::Method::GET;
        assert_eq!(admin(&get, "/healthz"), (Open, Global));
        assert_eq!(
            admin(&get, "/internal/execution-manager/tasks"),
            (Read, User)
        );
        assert_eq!(
            admin(&http::Method::DELETE, "/internal/execution-manager/tasks/x"),
            (Cancel, Tasks)
        );
        assert_eq!(
            admin(
                &http::Method::POST,
                "/internal/execution-manager/tasks/x/retry"
            ),
            (Operate, Tasks)
        );
        assert_eq!(
            admin(&get, "/internal/execution-manager/events"),
            (Read, User)
        );
        assert_eq!(
            admin(&get, "/internal/execution-manager/workers"),
            (Read, Global)
        );
        assert_eq!(
            admin(
                &http::Method::POST,
                "/internal/execution-manager/flow/pause"
            ),
            (Operate, Global)
        );
        assert_eq!(admin(&http::Method::POST, "/nope"), (Admin, Global));
    }
}
