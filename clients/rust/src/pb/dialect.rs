//! Switchyard's one JSON dialect: how the admin HTTP API, its server-sent
//! events and the CLI's `--json` write a protobuf message, and the JSON
//! Schema of what they write (for the admin API's OpenAPI document). One
//! encoder, driven by the same file descriptor set reflection serves, so the
//! three speak the same words and the schema cannot drift from the encoder.
//!
//! The rules:
//! - **Field names** are the proto3 JSON names (lowerCamelCase: `userId`,
//!   `createdAt`, `nextPageToken`), as the TypeScript client names them. A
//!   `google.protobuf.Duration` field `x` is written `xMs`: milliseconds.
//! - **Every field is written**, at its default value too (`0`, `""`,
//!   `false`, `[]`, `{}`), so a reader sees a stable shape. An unset message
//!   field (a timestamp, a duration, a result, a nested message) is `null`.
//!   Of a `oneof`, only the member that is set is written.
//! - **Enum values** are lower-case words: the value's proto name without
//!   its type's prefix (`TASK_STATE_COMPLETED` → `completed`,
//!   `TASK_SOURCE_BULLMQ` → `bullmq`, `WAITING_REASON_NO_WORKER` →
//!   `no_worker`); the zero value is `unspecified`. A number this build does
//!   not know (a newer peer) is `unknown(<n>)`.
//! - **Numbers are JSON numbers**, 64-bit integers included (sequence
//!   numbers, counts, terms); a NaN or infinite float is `null`.
//! - **Timestamps** are RFC 3339 strings in UTC (`2025-01-02T03:04:05.123Z`).
//! - `google.protobuf.Struct`, `Value` and `ListValue` are plain JSON (a
//!   NaN or infinite number in them is `null`); maps are JSON objects;
//!   bytes are base64.
//!
//! Owns nothing else: it knows messages, not tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, Value as Dyn,
};
use serde_json::{json, Map, Value as Json};

const TIMESTAMP: &str = "google.protobuf.Timestamp";
const DURATION: &str = "google.protobuf.Duration";
const STRUCT: &str = "google.protobuf.Struct";
const VALUE: &str = "google.protobuf.Value";
const LIST_VALUE: &str = "google.protobuf.ListValue";

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(super::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The descriptor of a `switchyard.v1` message (or a well-known type).
pub fn descriptor(full_name: &str) -> Option<MessageDescriptor> {
    pool()?.get_message_by_name(full_name)
}

/// `msg` in the dialect. A message the descriptor set does not know (a
/// build error) is `null`.
pub fn to_json<M: Message + Name>(msg: &M) -> Json {
    let Some(desc) = descriptor(&M::full_name()) else {
        return Json::Null;
    };
    match DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) {
        Ok(d) => message(&d),
        Err(_) => Json::Null,
    }
}

/// The JSON name of `field` in the dialect (`createdAt`, `sinceRenewalMs`).
pub fn field_name(field: &FieldDescriptor) -> String {
    match field.kind() {
        Kind::Message(m) if m.full_name() == DURATION && !field.is_list() => {
            format!("{}Ms", field.json_name())
        }
        _ => field.json_name().to_string(),
    }
}

/// The prefix every value of `e` starts with (`TASK_STATE_`): its zero
/// value's name without `UNSPECIFIED`, else the enum's name in upper snake
/// case.
fn enum_prefix(e: &EnumDescriptor) -> String {
    if let Some(zero) = e.get_value(0) {
        if let Some(p) = zero.name().strip_suffix("UNSPECIFIED") {
            return p.to_string();
        }
    }
    let mut out = String::new();
    for (i, c) in e.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

/// The dialect's word for value `number` of `e` (`completed`).
pub fn enum_word(e: &EnumDescriptor, number: i32) -> String {
    match e.get_value(number) {
        Some(v) => {
            let prefix = enum_prefix(e);
            v.name()
                .strip_prefix(prefix.as_str())
                .unwrap_or(v.name())
                .to_ascii_lowercase()
        }
        None => format!("unknown({number})"),
    }
}

/// Every word of `e`, in number order.
pub fn enum_words(e: &EnumDescriptor) -> Vec<String> {
    e.values().map(|v| enum_word(e, v.number())).collect()
}

/// The word of value `number` of the enum `full_name`
/// (`switchyard.v1.TaskState`).
pub fn enum_word_of(full_name: &str, number: i32) -> String {
    match pool().and_then(|p| p.get_enum_by_name(full_name)) {
        Some(e) => enum_word(&e, number),
        None => format!("unknown({number})"),
    }
}

fn message(m: &DynamicMessage) -> Json {
    let desc = m.descriptor();
    match desc.full_name() {
        TIMESTAMP | DURATION | STRUCT | VALUE | LIST_VALUE => return well_known(m),
        _ => {}
    }
    let mut out = Map::new();
    for field in desc.fields() {
        let in_oneof = field.containing_oneof().is_some_and(|o| !o.is_synthetic());
        if in_oneof && !m.has_field(&field) {
            continue;
        }
        // A message field, or a proto3 `optional` one, that is not set.
        let unset = !field.is_list()
            && !field.is_map()
            && field.supports_presence()
            && !m.has_field(&field);
        let v = if unset {
            Json::Null
        } else {
            value(&field, &m.get_field(&field))
        };
        out.insert(field_name(&field), v);
    }
    Json::Object(out)
}

fn value(field: &FieldDescriptor, v: &Dyn) -> Json {
    match v {
        Dyn::List(items) => Json::Array(items.iter().map(|x| single(field, x)).collect()),
        Dyn::Map(entries) => {
            let value_field = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field(),
                _ => return Json::Null,
            };
            let sorted: BTreeMap<String, &Dyn> =
                entries.iter().map(|(k, v)| (map_key(k), v)).collect();
            Json::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k, single(&value_field, v)))
                    .collect(),
            )
        }
        other => single(field, other),
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn float(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn single(field: &FieldDescriptor, v: &Dyn) -> Json {
    match v {
        Dyn::Bool(b) => Json::Bool(*b),
        Dyn::I32(n) => json!(n),
        Dyn::I64(n) => json!(n),
        Dyn::U32(n) => json!(n),
        Dyn::U64(n) => json!(n),
        Dyn::F32(f) => float(f64::from(*f)),
        Dyn::F64(f) => float(*f),
        Dyn::String(s) => Json::String(s.clone()),
        Dyn::Bytes(b) => Json::String(base64(b)),
        Dyn::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => Json::String(enum_word(&e, *n)),
            _ => json!(n),
        },
        Dyn::Message(m) => message(m),
        Dyn::List(_) | Dyn::Map(_) => value(field, v),
    }
}

fn well_known(m: &DynamicMessage) -> Json {
    match m.descriptor().full_name() {
        TIMESTAMP => m
            .transcode_to::<prost_types::Timestamp>()
            .map_or(Json::Null, |t| Json::String(t.to_string())),
        DURATION => m
            .transcode_to::<prost_types::Duration>()
            .map_or(Json::Null, |d| float(duration_ms(&d))),
        STRUCT => m
            .transcode_to::<prost_types::Struct>()
            .map_or(Json::Null, |s| super::json::struct_to_display_json(&s)),
        VALUE => m
            .transcode_to::<prost_types::Value>()
            .map_or(Json::Null, |v| super::json::value_to_display_json(&v)),
        LIST_VALUE => m
            .transcode_to::<prost_types::ListValue>()
            .map_or(Json::Null, |l| {
                Json::Array(
                    l.values
                        .iter()
                        .map(super::json::value_to_display_json)
                        .collect(),
                )
            }),
        _ => Json::Null,
    }
}

/// A protobuf duration in milliseconds (a negative one stays negative).
pub fn duration_ms(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1_000_000.0
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The schema of what the encoder writes.
// ---------------------------------------------------------------------------

/// The name a message's schema has among an OpenAPI document's components
/// (`TaskStatus`, `WatchTasksResponse_Item`…).
pub fn schema_name(desc: &MessageDescriptor) -> String {
    let full = desc.full_name();
    full.strip_prefix(&format!("{}.", desc.package_name()))
        .unwrap_or(full)
        .replace('.', "_")
}

/// JSON Schemas (OpenAPI 3.1) of the messages `roots` (full names) and of
/// every message they contain, keyed by [`schema_name`], each referring to
/// the others as `#/components/schemas/<name>`. They say exactly what
/// [`to_json`] writes: every field required (but a oneof's), no other
/// property, `null` where a message may be unset.
pub fn schemas(roots: &[&str]) -> BTreeMap<String, Json> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<MessageDescriptor> = roots.iter().filter_map(|r| descriptor(r)).collect();
    let mut seen = BTreeSet::new();
    while let Some(desc) = todo.pop() {
        if !seen.insert(desc.full_name().to_string()) {
            continue;
        }
        let mut props = Map::new();
        let mut required = Vec::new();
        for field in desc.fields() {
            let name = field_name(&field);
            let in_oneof = field.containing_oneof().is_some_and(|o| !o.is_synthetic());
            let s = if field.is_map() {
                let value_field = match field.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field(),
                    _ => continue,
                };
                json!({"type": "object", "additionalProperties": item_schema(&value_field, &mut todo, false)})
            } else if field.is_list() {
                json!({"type": "array", "items": item_schema(&field, &mut todo, false)})
            } else {
                let nullable = matches!(field.kind(), Kind::Message(_))
                    || (field.supports_presence() && !in_oneof);
                item_schema(&field, &mut todo, nullable && !in_oneof)
            };
            props.insert(name.clone(), s);
            if !in_oneof {
                required.push(Json::String(name));
            }
        }
        out.insert(
            schema_name(&desc),
            json!({
                "type": "object",
                "description": format!("`{}` in the JSON dialect", desc.full_name()),
                "properties": props,
                "required": required,
                "additionalProperties": false,
            }),
        );
    }
    out
}

/// The schema of one value of `field` (an element, for a list).
fn item_schema(field: &FieldDescriptor, todo: &mut Vec<MessageDescriptor>, nullable: bool) -> Json {
    let or_null = |mut s: Json| -> Json {
        if !nullable {
            return s;
        }
        if let Some(t) = s.get("type").cloned() {
            s["type"] = json!([t, "null"]);
            s
        } else {
            json!({"anyOf": [s, {"type": "null"}]})
        }
    };
    match field.kind() {
        Kind::Double | Kind::Float => json!({"type": ["number", "null"]}),
        // An `optional` scalar the message leaves unset is written as null.
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            or_null(json!({"type": "integer", "format": "int32"}))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            or_null(json!({"type": "integer", "format": "int64"}))
        }
        Kind::Uint32 | Kind::Fixed32 => {
            or_null(json!({"type": "integer", "format": "int32", "minimum": 0}))
        }
        Kind::Uint64 | Kind::Fixed64 => {
            or_null(json!({"type": "integer", "format": "int64", "minimum": 0}))
        }
        Kind::Bool => or_null(json!({"type": "boolean"})),
        Kind::String => or_null(json!({"type": "string"})),
        Kind::Bytes => or_null(json!({"type": "string", "contentEncoding": "base64"})),
        Kind::Enum(e) => {
            let words = json!({"type": "string", "enum": enum_words(&e)});
            // `enum` lists the words only: null is another branch.
            if nullable {
                json!({"anyOf": [words, {"type": "null"}]})
            } else {
                words
            }
        }
        Kind::Message(m) => match m.full_name() {
            TIMESTAMP => or_null(json!({"type": "string", "format": "date-time"})),
            DURATION => json!({"type": ["number", "null"], "description": "milliseconds"}),
            STRUCT => or_null(json!({"type": "object"})),
            LIST_VALUE => or_null(json!({"type": "array"})),
            VALUE => json!({"description": "any JSON value"}),
            _ => {
                let r = json!({"$ref": format!("#/components/schemas/{}", schema_name(&m))});
                todo.push(m);
                or_null(r)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn writes_the_dialect() {
        let s = pb::TaskStatus {
            id: "x".into(),
            state: pb::TaskState::Completed as i32,
            source: pb::TaskSource::Bullmq as i32,
            waiting_reason: pb::WaitingReason::NoWorker as i32,
            sequence: 7,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            labels: [("team".to_string(), "mail".to_string())].into(),
            result: Some(pb::json::json_to_value(&json!({"ok": 1}))),
            ..Default::default()
        };
        let v = to_json(&s);
        assert_eq!(v["id"], "x");
        assert_eq!(v["state"], "completed");
        assert_eq!(v["source"], "bullmq");
        assert_eq!(v["waitingReason"], "no_worker");
        assert_eq!(v["taskType"], "unspecified");
        assert_eq!(v["sequence"], 7, "a 64-bit number is a number");
        assert_eq!(v["createdAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["startedAt"], Json::Null, "unset timestamps are null");
        assert_eq!(v["lastError"], Json::Null);
        assert_eq!(v["attempt"], 0, "defaults are written");
        assert_eq!(v["userId"], "", "camelCase names");
        assert_eq!(v["labels"], json!({"team": "mail"}));
        assert_eq!(v["result"], json!({"ok": 1}));
        assert_eq!(v["steps"], json!([]));
    }

    #[test]
    fn durations_are_milliseconds_and_oneofs_write_their_member() {
        let r = pb::WatchTasksResponse {
            item: Some(pb::watch_tasks_response::Item::Gap(pb::WatchGap {
                oldest_kept: 42,
            })),
        };
        assert_eq!(to_json(&r), json!({"gap": {"oldestKept": 42}}));
        let l = pb::PartitionLease {
            since_renewal: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        let v = to_json(&l);
        assert_eq!(v["sinceRenewalMs"], 1500.0);
        assert_eq!(v["expiresInMs"], Json::Null);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn schemas_name_every_field_the_encoder_writes() {
        let all = schemas(&["switchyard.v1.TaskStatus"]);
        let status = &all["TaskStatus"];
        let written = to_json(&pb::TaskStatus::default());
        let props = status["properties"].as_object().expect("properties");
        let keys: BTreeSet<&String> = written.as_object().expect("an object").keys().collect();
        assert_eq!(keys, props.keys().collect::<BTreeSet<_>>());
        assert_eq!(
            status["properties"]["state"]["enum"][3],
            json!("completed"),
            "{status}"
        );
        assert!(all.contains_key("StepStatus") && all.contains_key("TaskError"));
    }
}
