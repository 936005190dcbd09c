//! Templating of step inputs: `{{ path }}` placeholders inside the JSON
//! values of a definition.
//!
//! A string that is exactly one placeholder (`"{{args.0}}"`) becomes the JSON
//! value the path names (an object stays an object). A placeholder inside
//! other text is replaced by the value's text: a string as is, `null` as
//! nothing, anything else as compact JSON. Paths are dot-separated; a number
//! indexes an array. Roots:
//!
//! - `args` — the workflow args (`ComplexTarget.workflow_args`, a list);
//! - `payload` — the payload the workflow task was scheduled with;
//! - `steps.<id>.output` — the output of an earlier step;
//! - `workflow.id`, `workflow.task_id`, `workflow.type`, `workflow.version`.
//!
//! A path that leads nowhere yields `null`. This module is pure: it parses
//! and renders, and knows nothing of runs or the core.

use serde_json::Value;

use crate::domain::StepRun;

/// The roots a path may start with.
pub const ROOTS: [&str; 4] = ["args", "payload", "steps", "workflow"];

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    /// Literal text.
    Text(&'a str),
    /// A placeholder's path, trimmed.
    Path(&'a str),
}

/// Splits a string into text and placeholders.
pub fn parse(s: &str) -> Result<Vec<Part<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed `{{{{` in {s:?}"));
        };
        let path = after[..end].trim();
        if path.is_empty() {
            return Err(format!("empty placeholder in {s:?}"));
        }
        out.push(Part::Path(path));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest));
    }
    Ok(out)
}

/// Checks every placeholder of a value: syntax, root, and (through
/// `step_ok`) that a `steps.<id>` reference is allowed here. `step_ok` gets
/// the step id and returns why it is not allowed, if it is not.
pub fn check(value: &Value, step_ok: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
    match value {
        Value::String(s) => {
            for part in parse(s)? {
                if let Part::Path(p) = part {
                    check_path(p, step_ok)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| check(v, step_ok)),
        Value::Object(map) => map.values().try_for_each(|v| check(v, step_ok)),
        _ => Ok(()),
    }
}

fn check_path(path: &str, step_ok: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
    let mut segs = path.split('.');
    let root = segs.next().unwrap_or_default();
    if segs.clone().any(str::is_empty) {
        return Err(format!("`{{{{{path}}}}}` has an empty path segment"));
    }
    match root {
        "args" | "payload" => Ok(()),
        "workflow" => match segs.next() {
            Some("id" | "task_id" | "type" | "version") if segs.next().is_none() => Ok(()),
            _ => Err(format!(
                "`{{{{{path}}}}}`: workflow has only id, task_id, type and version"
            )),
        },
        "steps" => {
            let (Some(id), Some("output")) = (segs.next(), segs.next()) else {
                return Err(format!(
                    "`{{{{{path}}}}}`: write steps.<step id>.output[.…]"
                ));
            };
            step_ok(id).map_err(|why| format!("`{{{{{path}}}}}`: {why}"))
        }
        other => Err(format!(
            "`{{{{{path}}}}}`: unknown root {other:?} (use args, payload, steps or workflow)"
        )),
    }
}

/// What placeholders resolve against.
pub struct Scope<'a> {
    /// The workflow args, as a JSON list.
    pub args: &'a Value,
    /// The workflow task's payload.
    pub payload: &'a Value,
    /// `{id, task_id, type, version}`.
    pub workflow: &'a Value,
    /// The run's steps (their outputs).
    pub steps: &'a [StepRun],
}

impl Scope<'_> {
    fn lookup(&self, path: &str) -> Option<Value> {
        let mut segs = path.split('.');
        let base = match segs.next()? {
            "args" => self.args,
            "payload" => self.payload,
            "workflow" => self.workflow,
            "steps" => {
                let id = segs.next()?;
                if segs.next()? != "output" {
                    return None;
                }
                self.steps.iter().find(|s| s.id == id)?.output.as_ref()?
            }
            _ => return None,
        };
        let mut v = base;
        for seg in segs {
            v = match v {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v.clone())
    }
}

/// Renders every placeholder of a value.
pub fn render(value: &Value, scope: &Scope<'_>) -> Value {
    match value {
        Value::String(s) if s.contains("{{") => {
            let Ok(parts) = parse(s) else {
                return value.clone();
            };
            if let [Part::Path(p)] = parts.as_slice() {
                return scope.lookup(p).unwrap_or(Value::Null);
            }
            let mut out = String::with_capacity(s.len());
            for part in parts {
                match part {
                    Part::Text(t) => out.push_str(t),
                    Part::Path(p) => match scope.lookup(p) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(v)) => out.push_str(&v),
                        Some(other) => out.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, scope)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, scope)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_fixture() -> (Value, Value, Value, Vec<StepRun>) {
        let args = json!([{ "sku": "A-1", "qty": 2 }, "second"]);
        let payload = json!({ "customer": "c-9" });
        let workflow = json!({ "id": "wf-1", "task_id": "t", "type": "order", "version": 3 });
        let steps = vec![StepRun {
            id: "reserve".into(),
            output: Some(json!({ "reservation": "r-7", "lines": [10, 20] })),
            ..Default::default()
        }];
        (args, payload, workflow, steps)
    }

    #[test]
    fn whole_string_placeholders_keep_the_json_type() {
        let (args, payload, workflow, steps) = scope_fixture();
        let scope = Scope {
            args: &args,
            payload: &payload,
            workflow: &workflow,
            steps: &steps,
        };
        let input = json!({
            "order": "{{args.0}}",
            "qty": "{{ args.0.qty }}",
            "line": "{{steps.reserve.output.lines.1}}",
            "version": "{{workflow.version}}",
            "missing": "{{steps.reserve.output.nope}}",
        });
        assert_eq!(
            render(&input, &scope),
            json!({
                "order": { "sku": "A-1", "qty": 2 },
                "qty": 2,
                "line": 20,
                "version": 3,
                "missing": null,
            })
        );
    }

    #[test]
    fn placeholders_inside_text_are_stringified() {
        let (args, payload, workflow, steps) = scope_fixture();
        let scope = Scope {
            args: &args,
            payload: &payload,
            workflow: &workflow,
            steps: &steps,
        };
        let input = json!([
            "sku {{args.0.sku}} x{{args.0.qty}} for {{payload.customer}}{{payload.none}}",
            "{{args.0}}!"
        ]);
        assert_eq!(
            render(&input, &scope),
            json!(["sku A-1 x2 for c-9", "{\"qty\":2,\"sku\":\"A-1\"}!"])
        );
    }

    #[test]
    fn check_reports_bad_placeholders() {
        let ok = |id: &str| {
            if id == "a" {
                Ok(())
            } else {
                Err(format!("{id} is not a dependency"))
            }
        };
        assert!(check(
            &json!({ "x": ["{{args.0}}", "{{steps.a.output.k}}", 1] }),
            &ok
        )
        .is_ok());
        for (bad, want) in [
            ("{{args.0", "unclosed"),
            ("{{ }}", "empty placeholder"),
            ("{{env.HOME}}", "unknown root"),
            ("{{steps.b.output}}", "b is not a dependency"),
            ("{{steps.a}}", "steps.<step id>.output"),
            ("{{workflow.secret}}", "workflow has only"),
            ("{{args..x}}", "empty path segment"),
        ] {
            let err = check(&json!({ "k": bad }), &ok).expect_err(bad);
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
