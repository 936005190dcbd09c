//! The JSON of gRPC messages: the proto3 JSON mapping (camelCase field
//! names, enum value names, RFC 3339 timestamps, 64-bit integers as
//! strings), read from the same file descriptor set that reflection serves,
//! so the admin API's JSON is what `grpcurl` shows for the same message.
//! Fields at their default value are included, so clients need not know the
//! defaults.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::pb;

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| match DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(cause = %e, "the embedded descriptor set does not decode");
            None
        }
    })
    .as_ref()
}

/// `msg` (a `switchyard.v1.<name>`) as JSON. A message the descriptor set
/// does not know (a build error) is `null`, logged.
pub fn to_json<M: Message>(name: &str, msg: &M) -> serde_json::Value {
    let full = format!("switchyard.v1.{name}");
    let Some(desc) = pool().and_then(|p| p.get_message_by_name(&full)) else {
        tracing::error!(message = %full, "no descriptor for message");
        return serde_json::Value::Null;
    };
    let dynamic = match DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(message = %full, cause = %e, "cannot re-read message");
            return serde_json::Value::Null;
        }
    };
    let opts = SerializeOptions::new().skip_default_fields(false);
    match dynamic.serialize_with_options(serde_json::value::Serializer, &opts) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(message = %full, cause = %e, "cannot write JSON");
            serde_json::Value::Null
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_proto3_json_mapping() {
        let s = pb::TaskStatus {
            id: "x".into(),
            state: pb::TaskState::Running as i32,
            sequence: 7,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = to_json("TaskStatus", &s);
        assert_eq!(v["id"], "x");
        assert_eq!(v["state"], "TASK_STATE_RUNNING");
        assert_eq!(v["sequence"], "7");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00Z");
        assert_eq!(v["attempt"], 0, "defaults are written");
        assert!(v.get("userId").is_some(), "camelCase names");
    }
}
