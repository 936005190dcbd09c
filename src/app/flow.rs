//! Flow rules ⇄ protobuf (`FlowService`): the rules in force as a listing,
//! and the checks of a request's fields the flow component does not make.

use crate::core::CoreError;
use crate::domain::flow::FlowRules;
use crate::pb;

/// The policy of a `SetConcurrencyPolicy` request: its pattern and limit.
pub fn policy(p: Option<pb::ConcurrencyPolicy>) -> Result<(String, i64), CoreError> {
    let p = p.ok_or_else(|| CoreError::field("policy", "is required"))?;
    Ok((p.pattern, i64::from(p.limit)))
}

/// The rules in force, as `ListFlowRules` answers them.
pub fn rules(r: &FlowRules) -> pb::ListFlowRulesResponse {
    pb::ListFlowRulesResponse {
        policies: r
            .policies
            .iter()
            .map(|p| pb::ConcurrencyPolicy {
                pattern: p.pattern.clone(),
                limit: p.limit.min(i32::MAX as u32) as i32,
                from_config: p.from_config,
            })
            .collect(),
        default_limit: r.default_limit.unwrap_or(0),
        paused: r.paused.iter().cloned().collect(),
    }
}
