//! Workflow definitions: parsing (TOML or JSON), validation, and the compiled
//! form the engine runs.
//!
//! A definition is parsed into [`RawDefinition`] (durations as text, as
//! written), normalised (a definition that sets `depends_on` nowhere becomes a
//! sequence) and checked; its canonical JSON is what the registry stores and
//! compares, so the same definition in TOML or in JSON is the same version.
//! [`Workflow`] is the checked, compiled form. The schema is documented in
//! the [module docs](super).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::template;
use crate::domain::{Backoff, BackoffKind};

/// Longest workflow name.
pub const MAX_NAME: usize = 128;
/// Longest step id.
pub const MAX_STEP_ID: usize = 64;
/// Most steps in one workflow.
pub const MAX_STEPS: usize = 200;
/// An error of a parser, cut short: TOML's quote the offending lines.
fn short(e: impl std::fmt::Display) -> String {
    crate::domain::text::cut(&e.to_string(), 512)
}

/// The most errors one definition's check reports.
const MAX_ERRORS: usize = 20;
const DAY: u64 = 86_400;
/// Longest timer, signal wait or workflow timeout.
const MAX_WAIT: Duration = Duration::from_secs(365 * DAY);
/// Longest time limit of one task attempt (as for any task).
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(7 * DAY);
/// Default attempts of a task step.
const TASK_ATTEMPTS: u32 = 1;
/// Default attempts of a webhook step (as for any INTEGRATION task).
const WEBHOOK_ATTEMPTS: u32 = 5;
/// Default attempts of a compensation: it must complete.
const COMPENSATION_ATTEMPTS: u32 = 3;

/// A problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// Where: `step "reserve"`, `timeout`, or the parser's position.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// A definition as written (durations as text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefinition {
    /// The workflow type.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The whole workflow's time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The workflow's result, templated (default: every step's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The steps.
    pub steps: Vec<RawStep>,
}

/// A step as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique within the workflow.
    pub id: String,
    /// A task name run by workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// A webhook call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<RawWebhook>,
    /// A timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<String>,
    /// A signal to wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The input (task payload or webhook body), templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Retries of a task or webhook step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// A task attempt's time limit, or how long a signal is waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What a signal step does on timeout: `fail` (default) or `continue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    /// The task that undoes this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<RawCompensate>,
    /// Steps that must complete first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
}

/// A webhook as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// A full http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An n8n workflow id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The external system (github, jenkins, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A retry policy as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// `exponential` (default) or `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// First delay (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Largest delay (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// A compensation as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCompensate {
    /// The task name.
    pub task: String,
    /// Its input, templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Its retries (default 3 attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// Its attempt time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A checked workflow definition, one version of a workflow type.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// The workflow type.
    pub name: String,
    /// The version (0 until registered).
    pub version: u32,
    /// The whole workflow's time limit.
    pub timeout: Option<Duration>,
    /// The result template, if any.
    pub output: Option<Value>,
    /// The steps, in definition order.
    pub steps: Vec<Step>,
    /// The canonical JSON of the definition.
    pub json: String,
}

/// A checked step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step id.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Its input template, if any.
    pub input: Option<Value>,
    /// Attempts in all (tasks and webhooks).
    pub attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// A task attempt's limit, or a signal's wait.
    pub timeout: Option<Duration>,
    /// A signal step that times out completes (with a `null` output) instead
    /// of failing.
    pub continue_on_timeout: bool,
    /// Its compensation.
    pub compensate: Option<Compensation>,
    /// Ids of the steps it waits for.
    pub depends_on: Vec<String>,
    /// Their indexes.
    pub deps: Vec<usize>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A SIMPLE task run by workers.
    Task {
        /// The task name.
        name: String,
    },
    /// An INTEGRATION task (a webhook call).
    Webhook {
        /// Full URL.
        url: Option<String>,
        /// n8n workflow id.
        workflow_id: Option<String>,
        /// The external system.
        source: Option<String>,
    },
    /// Waits.
    Timer(Duration),
    /// Waits for a named signal.
    Signal {
        /// The signal name.
        name: String,
    },
}

impl StepKind {
    /// `task`, `webhook`, `timer` or `signal`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Task { .. } => "task",
            StepKind::Webhook { .. } => "webhook",
            StepKind::Timer(_) => "timer",
            StepKind::Signal { .. } => "signal",
        }
    }
}

/// A checked compensation.
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation {
    /// The task name.
    pub task: String,
    /// Its input template.
    pub input: Option<Value>,
    /// Attempts in all.
    pub attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Attempt time limit.
    pub timeout: Option<Duration>,
}

/// Parses a definition's text (`format`: `json` or `toml`) into its raw form.
/// Errors name the step when they concern one.
pub fn parse(text: &str, format: &str) -> Result<RawDefinition, Vec<DefinitionError>> {
    let err = |location: &str, message: String| {
        vec![DefinitionError {
            location: location.to_string(),
            message,
        }]
    };
    let doc: Value = match format {
        "toml" => {
            let t: toml::Table = toml::from_str(text)
                .map_err(|e| err("", format!("not valid TOML: {}", short(e))))?;
            serde_json::to_value(t)
                .map_err(|e| err("", format!("not representable as JSON: {e}")))?
        }
        "json" => serde_json::from_str(text)
            .map_err(|e| err("", format!("not valid JSON: {}", short(e))))?,
        other => {
            return Err(err(
                "format",
                format!("must be json or toml, got {other:?}"),
            ))
        }
    };
    let Value::Object(mut top) = doc else {
        return Err(err("", "must be an object (a table)".into()));
    };
    // Steps one by one, so an error names its step. Too many is refused
    // before any per-step work: the checks below are not linear in the
    // step count (ancestor sets), and a definition of 120,000 steps once
    // took the server's memory with them.
    let steps = match top.remove("steps") {
        Some(Value::Array(steps)) if steps.len() > MAX_STEPS => {
            return Err(err(
                "steps",
                format!("at most {MAX_STEPS} steps, got {}", steps.len()),
            ))
        }
        Some(Value::Array(steps)) => steps,
        Some(_) => {
            return Err(err(
                "steps",
                "must be a list of steps ([[steps]] in TOML)".into(),
            ))
        }
        None => {
            return Err(err(
                "steps",
                "is required: a workflow has at least one step".into(),
            ))
        }
    };
    top.insert("steps".into(), Value::Array(Vec::new()));
    let mut raw: RawDefinition =
        serde_json::from_value(Value::Object(top)).map_err(|e| err("", e.to_string()))?;
    let mut errors = Vec::new();
    for (i, s) in steps.into_iter().enumerate() {
        let label = match s.get("id").and_then(Value::as_str) {
            Some(id) => format!("step {}", crate::domain::text::quote(id)),
            None => format!("step #{}", i + 1),
        };
        match serde_json::from_value::<RawStep>(s) {
            Ok(step) => raw.steps.push(step),
            Err(e) if errors.len() < MAX_ERRORS => errors.push(DefinitionError {
                location: label,
                message: crate::domain::text::cut(&e.to_string(), 256),
            }),
            Err(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(raw)
    } else {
        Err(errors)
    }
}

/// Parses and checks a definition; returns the compiled form (version 0).
pub fn compile_text(text: &str, format: &str) -> Result<Workflow, Vec<DefinitionError>> {
    compile(parse(text, format)?)
}

/// Normalises and checks a raw definition.
pub fn compile(mut raw: RawDefinition) -> Result<Workflow, Vec<DefinitionError>> {
    let mut errs = Errors::default();
    // A definition that sets depends_on nowhere is a sequence.
    if raw.steps.iter().all(|s| s.depends_on.is_none()) {
        let mut prev: Option<String> = None;
        for s in raw.steps.iter_mut() {
            s.depends_on = Some(prev.iter().cloned().collect());
            prev = Some(s.id.clone());
        }
    }
    for s in raw.steps.iter_mut() {
        s.depends_on.get_or_insert_with(Vec::new);
    }

    if let Err(e) = crate::domain::rules::check_name(&raw.name) {
        errs.add("name", e);
    } else if raw.name.len() > MAX_NAME {
        errs.add("name", format!("must be at most {MAX_NAME} bytes"));
    }
    let timeout = raw
        .timeout
        .as_deref()
        .and_then(|t| errs.duration("timeout", t, MAX_WAIT));
    if raw.steps.is_empty() {
        errs.add("steps", "a workflow has at least one step");
    }
    if raw.steps.len() > MAX_STEPS {
        errs.add("steps", format!("at most {MAX_STEPS} steps"));
        return Err(errs.0);
    }

    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in raw.steps.iter().enumerate() {
        let loc = step_loc(&s.id, i);
        if let Err(e) = check_step_id(&s.id) {
            errs.add(&loc, format!("id {e}"));
        } else if index.insert(s.id.as_str(), i).is_some() {
            errs.add(&loc, "duplicate step id");
        }
    }

    // Dependencies: known, not itself, no repeats.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); raw.steps.len()];
    for (i, s) in raw.steps.iter().enumerate() {
        let loc = step_loc(&s.id, i);
        let mut seen = BTreeSet::new();
        for d in s.depends_on.iter().flatten() {
            match index.get(d.as_str()) {
                _ if d == &s.id => errs.add(&loc, "depends on itself"),
                None => errs.add(&loc, format!("depends on unknown step {d:?}")),
                Some(&j) => {
                    if seen.insert(j) {
                        deps[i].push(j);
                    } else {
                        errs.add(&loc, format!("lists dependency {d:?} twice"));
                    }
                }
            }
        }
    }
    let cycle = find_cycle(&deps);
    if let Some(cycle) = &cycle {
        let names: Vec<&str> = cycle.iter().map(|&i| raw.steps[i].id.as_str()).collect();
        errs.add(
            &step_loc(names[0], cycle[0]),
            format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
        );
    }
    // Ancestors, for checking `steps.<id>` references (only without a cycle).
    let ancestors: Vec<BTreeSet<usize>> = if cycle.is_none() {
        ancestors(&deps)
    } else {
        vec![BTreeSet::new(); deps.len()]
    };

    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, s) in raw.steps.iter().enumerate() {
        let loc = step_loc(&s.id, i);
        let refs_ok = |allow_self: bool| {
            let anc = &ancestors[i];
            let index = &index;
            let own = s.id.clone();
            move |id: &str| -> Result<(), String> {
                match index.get(id) {
                    None => Err(format!("no step {id:?}")),
                    Some(_) if allow_self && id == own => Ok(()),
                    Some(j) if anc.contains(j) => Ok(()),
                    Some(_) => Err(format!(
                        "step {id:?} is not among the steps {own:?} depends on (directly or not)"
                    )),
                }
            }
        };
        let kinds = [
            s.task.is_some(),
            s.webhook.is_some(),
            s.timer.is_some(),
            s.signal.is_some(),
        ];
        let n_kinds = kinds.iter().filter(|k| **k).count();
        if n_kinds != 1 {
            errs.add(
                &loc,
                format!("needs exactly one of task, webhook, timer or signal (found {n_kinds})"),
            );
            continue;
        }
        let kind = if let Some(t) = &s.task {
            if let Err(e) = crate::domain::rules::check_name(t) {
                errs.add(&loc, format!("task name {t:?} {e}"));
            }
            StepKind::Task { name: t.clone() }
        } else if let Some(w) = &s.webhook {
            check_webhook(&mut errs, &loc, w);
            StepKind::Webhook {
                url: w.url.clone(),
                workflow_id: w.workflow_id.clone(),
                source: w.source.clone(),
            }
        } else if let Some(t) = &s.timer {
            let d = errs
                .duration(&format!("{loc}: timer"), t, MAX_WAIT)
                .unwrap_or_default();
            StepKind::Timer(d)
        } else {
            let name = s.signal.clone().unwrap_or_default();
            if let Err(e) = crate::domain::rules::check_name(&name) {
                errs.add(&loc, format!("signal name {name:?} {e}"));
            }
            StepKind::Signal { name }
        };
        let runs_task = matches!(kind, StepKind::Task { .. } | StepKind::Webhook { .. });
        if !runs_task {
            if s.input.is_some() {
                errs.add(&loc, format!("a {} step takes no input", kind.as_str()));
            }
            if s.retry.is_some() {
                errs.add(
                    &loc,
                    format!("a {} step takes no retry policy", kind.as_str()),
                );
            }
        }
        if let Some(input) = &s.input {
            if let Err(e) = template::check(input, &refs_ok(false)) {
                errs.add(&format!("{loc}: input"), e);
            }
        }
        let timeout = match (&kind, s.timeout.as_deref()) {
            (_, None) => None,
            (StepKind::Timer(_), Some(_)) => {
                errs.add(
                    &loc,
                    "a timer step takes no timeout (the timer is its duration)",
                );
                None
            }
            (StepKind::Signal { .. }, Some(t)) => {
                errs.duration(&format!("{loc}: timeout"), t, MAX_WAIT)
            }
            (_, Some(t)) => errs.duration(&format!("{loc}: timeout"), t, MAX_ATTEMPT_TIMEOUT),
        };
        let continue_on_timeout = match s.on_timeout.as_deref() {
            None | Some("fail") => false,
            Some("continue") if matches!(kind, StepKind::Signal { .. }) => true,
            Some("continue") => {
                errs.add(&loc, "on_timeout applies to signal steps only");
                false
            }
            Some(other) => {
                errs.add(
                    &loc,
                    format!("on_timeout must be fail or continue, got {other:?}"),
                );
                false
            }
        };
        let default_attempts = if matches!(kind, StepKind::Webhook { .. }) {
            WEBHOOK_ATTEMPTS
        } else {
            TASK_ATTEMPTS
        };
        let (attempts, backoff) =
            errs.retry(&format!("{loc}: retry"), s.retry.as_ref(), default_attempts);
        let compensate = s.compensate.as_ref().map(|c| {
            let cloc = format!("{loc}: compensate");
            if let Err(e) = crate::domain::rules::check_name(&c.task) {
                errs.add(&cloc, format!("task name {:?} {e}", c.task));
            }
            if let Some(input) = &c.input {
                if let Err(e) = template::check(input, &refs_ok(true)) {
                    errs.add(&format!("{cloc}: input"), e);
                }
            }
            let (attempts, backoff) = errs.retry(
                &format!("{cloc}: retry"),
                c.retry.as_ref(),
                COMPENSATION_ATTEMPTS,
            );
            let timeout = c
                .timeout
                .as_deref()
                .and_then(|t| errs.duration(&format!("{cloc}: timeout"), t, MAX_ATTEMPT_TIMEOUT));
            Compensation {
                task: c.task.clone(),
                input: c.input.clone(),
                attempts,
                backoff,
                timeout,
            }
        });
        steps.push(Step {
            id: s.id.clone(),
            kind,
            input: s.input.clone(),
            attempts,
            backoff,
            timeout,
            continue_on_timeout,
            compensate,
            depends_on: s.depends_on.clone().unwrap_or_default(),
            deps: deps[i].clone(),
        });
    }
    if let Some(out) = &raw.output {
        let index = &index;
        let any_step = |id: &str| -> Result<(), String> {
            index
                .get(id)
                .map(|_| ())
                .ok_or_else(|| format!("no step {id:?}"))
        };
        if let Err(e) = template::check(out, &any_step) {
            errs.add("output", e);
        }
    }
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    let json = serde_json::to_string(&raw).map_err(|e| {
        vec![DefinitionError {
            location: String::new(),
            message: format!("cannot serialise: {e}"),
        }]
    })?;
    Ok(Workflow {
        name: raw.name,
        version: 0,
        timeout,
        output: raw.output,
        steps,
        json,
    })
}

fn step_loc(id: &str, i: usize) -> String {
    if id.is_empty() {
        format!("step #{}", i + 1)
    } else {
        format!("step {id:?}")
    }
}

fn check_step_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_STEP_ID {
        return Err(format!("must be at most {MAX_STEP_ID} bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(format!(
            "may hold only letters, digits, _ and - (found {c:?})"
        ));
    }
    Ok(())
}

fn check_webhook(errs: &mut Errors, loc: &str, w: &RawWebhook) {
    let loc = format!("{loc}: webhook");
    match (&w.url, &w.workflow_id) {
        (None, None) => errs.add(&loc, "needs url or workflow_id"),
        (Some(url), _) => {
            let lower = url.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            match rest {
                None => errs.add(
                    &loc,
                    format!("url {url:?} must be an http:// or https:// URL"),
                ),
                Some(r) if r.is_empty() || r.starts_with('/') => {
                    errs.add(&loc, format!("url {url:?} has no host"))
                }
                Some(_) if url.len() > 2048 => errs.add(&loc, "url must be at most 2048 bytes"),
                Some(_) => {}
            }
        }
        (None, Some(id)) => {
            if let Err(e) = crate::domain::rules::check_name(id) {
                errs.add(&loc, format!("workflow_id {id:?} {e}"));
            }
        }
    }
    if let Some(s) = &w.source {
        if let Err(e) = crate::domain::rules::check_name(s) {
            errs.add(&loc, format!("source {s:?} {e}"));
        }
    }
}

/// A cycle in the dependency graph, as step indexes in order, if any.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark = vec![0u8; deps.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            if mark[d] == 1 {
                let from = stack.iter().position(|&x| x == d).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[from..].to_vec();
                // Present it in the direction of the flow: d runs before i.
                cycle.reverse();
                return Some(cycle);
            }
            if mark[d] == 0 {
                if let Some(c) = visit(d, deps, mark, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    for i in 0..deps.len() {
        if mark[i] == 0 {
            if let Some(c) = visit(i, deps, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Every step's transitive dependencies (the graph has no cycle).
fn ancestors(deps: &[Vec<usize>]) -> Vec<BTreeSet<usize>> {
    fn walk(
        i: usize,
        deps: &[Vec<usize>],
        memo: &mut Vec<Option<BTreeSet<usize>>>,
    ) -> BTreeSet<usize> {
        if let Some(a) = &memo[i] {
            return a.clone();
        }
        let mut out = BTreeSet::new();
        for &d in &deps[i] {
            out.insert(d);
            out.extend(walk(d, deps, memo));
        }
        memo[i] = Some(out.clone());
        out
    }
    let mut memo = vec![None; deps.len()];
    (0..deps.len()).map(|i| walk(i, deps, &mut memo)).collect()
}

#[derive(Default)]
struct Errors(Vec<DefinitionError>);

impl Errors {
    /// Records an error; past [`MAX_ERRORS`] they are dropped (the first
    /// ones say enough), and each is cut short, so the answer to a hostile
    /// definition stays small.
    fn add(&mut self, location: &str, message: impl Into<String>) {
        if self.0.len() >= MAX_ERRORS {
            return;
        }
        self.0.push(DefinitionError {
            location: crate::domain::text::cut(location, 128),
            message: crate::domain::text::cut(&message.into(), 256),
        });
    }

    fn duration(&mut self, loc: &str, text: &str, max: Duration) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Err(e) => {
                self.add(
                    loc,
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h 30m\""
                    ),
                );
                None
            }
            Ok(d) if d.is_zero() => {
                self.add(loc, "must be more than 0");
                None
            }
            Ok(d) if d > max => {
                self.add(
                    loc,
                    format!("must be at most {}", humantime::format_duration(max)),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn retry(&mut self, loc: &str, r: Option<&RawRetry>, default_attempts: u32) -> (u32, Backoff) {
        let mut backoff = Backoff::default();
        let Some(r) = r else {
            return (default_attempts, backoff);
        };
        let attempts = match r.attempts {
            None => default_attempts,
            Some(n) if (1..=100).contains(&n) => n,
            Some(n) => {
                self.add(loc, format!("attempts must be between 1 and 100, got {n}"));
                default_attempts
            }
        };
        match r.backoff.as_deref() {
            None | Some("exponential") => backoff.kind = BackoffKind::Exponential,
            Some("fixed") => backoff.kind = BackoffKind::Fixed,
            Some(other) => self.add(
                loc,
                format!("backoff must be exponential or fixed, got {other:?}"),
            ),
        }
        if let Some(b) = r
            .base
            .as_deref()
            .and_then(|b| self.duration(&format!("{loc}.base"), b, Duration::from_secs(DAY)))
        {
            backoff.base = b;
        }
        if let Some(m) = r
            .max
            .as_deref()
            .and_then(|m| self.duration(&format!("{loc}.max"), m, Duration::from_secs(7 * DAY)))
        {
            backoff.max = m;
        }
        (attempts, backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"
name = "order"
timeout = "1h"
[[steps]]
id = "reserve"
task = "reserve-stock"
input = { sku = "{{args.0.sku}}", order = "{{args.0}}" }
retry = { attempts = 3, backoff = "exponential", base = "1s", max = "1m" }
timeout = "30s"
compensate = { task = "release-stock", input = { sku = "{{args.0.sku}}", reservation = "{{steps.reserve.output.id}}" } }
[[steps]]
id = "approve"
signal = "approval"
timeout = "1h"
[[steps]]
id = "cool-off"
timer = "10s"
[[steps]]
id = "notify"
webhook = { url = "https://hooks.example.com/x", source = "github" }
input = { reservation = "{{steps.reserve.output.id}}" }
"#;

    fn messages(r: Result<Workflow, Vec<DefinitionError>>) -> String {
        match r {
            Ok(w) => panic!("expected errors, got {w:?}"),
            Err(e) => e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn the_documented_example_compiles_as_a_sequence() {
        let w = compile_text(ORDER, "toml").expect("valid");
        assert_eq!(w.name, "order");
        assert_eq!(w.timeout, Some(Duration::from_secs(3600)));
        let ids: Vec<_> = w.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["reserve", "approve", "cool-off", "notify"]);
        assert_eq!(w.steps[0].depends_on, Vec::<String>::new());
        assert_eq!(w.steps[2].depends_on, vec!["approve".to_string()]);
        assert_eq!(w.steps[3].deps, vec![2]);
        assert_eq!(w.steps[0].attempts, 3);
        assert_eq!(w.steps[0].backoff.max, Duration::from_secs(60));
        assert_eq!(w.steps[0].timeout, Some(Duration::from_secs(30)));
        assert_eq!(w.steps[3].attempts, 5, "webhooks default to 5 attempts");
        assert_eq!(w.steps[2].kind, StepKind::Timer(Duration::from_secs(10)));
        let c = w.steps[0].compensate.as_ref().expect("a compensation");
        assert_eq!((c.task.as_str(), c.attempts), ("release-stock", 3));
    }

    #[test]
    fn toml_and_json_of_the_same_definition_are_identical() {
        let a = compile_text(ORDER, "toml").expect("valid");
        let raw = parse(ORDER, "toml").expect("parses");
        let json = serde_json::to_string_pretty(&raw).expect("serialise");
        let b = compile_text(&json, "json").expect("valid");
        assert_eq!(a.json, b.json);
        // And the canonical form compiles to itself.
        assert_eq!(compile_text(&a.json, "json").expect("valid").json, a.json);
    }

    #[test]
    fn explicit_dependencies_make_a_dag() {
        let w = compile_text(
            r#"{"name":"fan","steps":[
                {"id":"a","task":"t"},
                {"id":"b","task":"t","depends_on":["a"]},
                {"id":"c","task":"t","depends_on":["a"]},
                {"id":"d","task":"t","depends_on":["b","c"],"input":{"x":"{{steps.a.output}}"}}]}"#,
            "json",
        )
        .expect("valid");
        assert_eq!(w.steps[1].deps, vec![0]);
        assert_eq!(w.steps[3].deps, vec![1, 2]);
    }

    #[test]
    fn errors_name_the_step() {
        let cases = [
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","depends_on":["b"]},{"id":"b","task":"t","depends_on":["a"]}]}"#,
                "dependency cycle",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","depends_on":["zz"]}]}"#,
                "step \"a\": depends on unknown step \"zz\"",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t"},{"id":"a","task":"u"}]}"#,
                "step \"a\": duplicate step id",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","timeout":"soon"}]}"#,
                "step \"a\": timeout: \"soon\" is not a duration",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","timer":"0s"}]}"#,
                "step \"a\": timer: must be more than 0",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","timer":"1s"}]}"#,
                "step \"a\": needs exactly one of",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a"}]}"#,
                "step \"a\": needs exactly one of",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"bad name"}]}"#,
                "step \"a\": task name",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a:b","task":"t"}]}"#,
                "id may hold only",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","tsk":"x"}]}"#,
                "step \"a\": unknown field `tsk`",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","signal":"s","on_timeout":"shrug"}]}"#,
                "on_timeout must be",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t","retry":{"attempts":0}}]}"#,
                "attempts must be between 1 and 100",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","task":"t"},{"id":"b","task":"t","depends_on":[],"input":{"x":"{{steps.a.output}}"}}]}"#,
                "step \"b\": input",
            ),
            (
                r#"{"name":"w","steps":[{"id":"a","webhook":{"url":"ftp://x"}}]}"#,
                "step \"a\": webhook",
            ),
            (
                r#"{"name":"bad name","steps":[{"id":"a","task":"t"}]}"#,
                "name: may hold only",
            ),
            (r#"{"name":"w","steps":[]}"#, "at least one step"),
            (
                r#"{"name":"w","timeout":"-1s","steps":[{"id":"a","task":"t"}]}"#,
                "timeout:",
            ),
        ];
        for (text, want) in cases {
            let got = messages(compile_text(text, "json"));
            assert!(got.contains(want), "{text}\nwanted {want:?} in:\n{got}");
        }
    }

    #[test]
    fn parse_errors_are_reported() {
        assert!(messages(compile_text("name = ", "toml")).contains("not valid TOML"));
        assert!(messages(compile_text("{", "json")).contains("not valid JSON"));
        assert!(messages(compile_text("{}", "yaml")).contains("must be json or toml"));
    }
}
