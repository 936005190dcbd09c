//! Conversions between `google.protobuf.Struct` / `Value` (as `prost_types`)
//! and `serde_json::Value`.
//!
//! Shared by the worker (task payloads in, results out) and the server
//! (payloads and results at the gRPC edge). Owns nothing else; it must not know
//! about tasks.
//!
//! Rules, following the proto3 JSON mapping:
//! - Every protobuf number is an `f64`. An integral value that fits in ±2^53
//!   becomes a JSON integer (`5.0` → `5`), so `as_u64()` / `as_i64()` work on
//!   it; any other finite value stays a JSON float. NaN and ±infinity have no
//!   JSON form and are an error naming the offending path.
//! - A JSON integer beyond ±2^53 loses precision on the way to protobuf, as
//!   every `google.protobuf.Value` number does.
//! - A `Value` whose `kind` is unset is read as `null`.
//! - For display only, [`value_to_display_json`] and
//!   [`struct_to_display_json`] write a NaN or infinite number as `null`
//!   instead of failing (the CLI prints what the server sent, whatever it
//!   is); a value that is stored or sent on must use the strict functions.
//!
//! ```
//! use switchyard_client::worker::convert::{json_to_struct, struct_to_json};
//!
//! let json = serde_json::json!({"ms": 250, "tags": ["a", null], "ratio": 0.5});
//! let pb = json_to_struct(&json).unwrap();
//! assert_eq!(struct_to_json(&pb).unwrap(), json);
//! ```
use std::collections::BTreeMap;

use prost_types::{value::Kind, ListValue, Struct, Value};

/// The largest integer an `f64` holds exactly (2^53).
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Why a conversion failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A protobuf number is NaN or infinite, which JSON cannot represent.
    /// `path` locates it (`a.b[2]`; empty for the top-level value).
    #[error("the number at {path:?} is not finite (NaN or infinity has no JSON form)")]
    NonFiniteNumber {
        /// Where the number is, as `key.key[index]`.
        path: String,
    },
    /// A `Struct` was asked for, but the JSON value is not an object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found instead (`array`, `string`, ...).
        found: &'static str,
    },
}

/// Converts a protobuf `Struct` to a JSON object.
///
/// Fails only on a NaN or infinite number (see the module docs).
pub fn struct_to_json(s: &Struct) -> Result<serde_json::Value, ConvertError> {
    let mut path = String::new();
    fields_to_json(&s.fields, &mut path, NonFinite::Refuse).map(serde_json::Value::Object)
}

/// Converts a JSON object to a protobuf `Struct`.
///
/// Fails with [`ConvertError::NotAnObject`] for any other JSON value.
pub fn json_to_struct(v: &serde_json::Value) -> Result<Struct, ConvertError> {
    match v {
        serde_json::Value::Object(map) => Ok(map_to_struct(map)),
        other => Err(ConvertError::NotAnObject {
            found: json_type(other),
        }),
    }
}

/// Converts a protobuf `Value` (any JSON value) to a `serde_json::Value`.
///
/// Fails only on a NaN or infinite number (see the module docs).
pub fn value_to_json(v: &Value) -> Result<serde_json::Value, ConvertError> {
    let mut path = String::new();
    value_to_json_at(v, &mut path, NonFinite::Refuse)
}

/// [`struct_to_json`] for display: a NaN or infinite number becomes `null`,
/// so it never fails.
pub fn struct_to_display_json(s: &Struct) -> serde_json::Value {
    let mut path = String::new();
    // With `NonFinite::Null` nothing fails; the default (null) is never used.
    fields_to_json(&s.fields, &mut path, NonFinite::Null)
        .map(serde_json::Value::Object)
        .unwrap_or_default()
}

/// [`value_to_json`] for display: a NaN or infinite number becomes `null`,
/// so it never fails.
pub fn value_to_display_json(v: &Value) -> serde_json::Value {
    let mut path = String::new();
    // With `NonFinite::Null` nothing fails; the default (null) is never used.
    value_to_json_at(v, &mut path, NonFinite::Null).unwrap_or_default()
}

/// What a NaN or infinite number becomes.
#[derive(Clone, Copy)]
enum NonFinite {
    /// An error naming its path.
    Refuse,
    /// `null`.
    Null,
}

/// Converts any JSON value to a protobuf `Value`. Never fails: every JSON
/// number is finite.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(number_to_f64(n)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object's map to a protobuf `Struct`. Never fails.
pub fn map_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn number_to_f64(n: &serde_json::Number) -> f64 {
    // Without serde_json's `arbitrary_precision`, `as_f64` is always `Some`;
    // with it, fall back to parsing the literal.
    n.as_f64()
        .or_else(|| n.to_string().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn fields_to_json(
    fields: &BTreeMap<String, Value>,
    path: &mut String,
    non_finite: NonFinite,
) -> Result<serde_json::Map<String, serde_json::Value>, ConvertError> {
    let mut out = serde_json::Map::with_capacity(fields.len());
    for (key, value) in fields {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        let converted = value_to_json_at(value, path, non_finite)?;
        path.truncate(len);
        out.insert(key.clone(), converted);
    }
    Ok(out)
}

fn value_to_json_at(
    v: &Value,
    path: &mut String,
    non_finite: NonFinite,
) -> Result<serde_json::Value, ConvertError> {
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => match (f64_to_json(*n), non_finite) {
            (Some(json), _) => json,
            (None, NonFinite::Null) => serde_json::Value::Null,
            (None, NonFinite::Refuse) => {
                return Err(ConvertError::NonFiniteNumber { path: path.clone() })
            }
        },
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            let mut items = Vec::with_capacity(list.values.len());
            for (i, item) in list.values.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                items.push(value_to_json_at(item, path, non_finite)?);
                path.truncate(len);
            }
            serde_json::Value::Array(items)
        }
        Some(Kind::StructValue(s)) => {
            serde_json::Value::Object(fields_to_json(&s.fields, path, non_finite)?)
        }
    })
}

/// A finite `f64` as a JSON number: an integer when it is integral and exact,
/// a float otherwise. `None` for NaN and infinities.
fn f64_to_json(n: f64) -> Option<serde_json::Value> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
        // Exact: |n| <= 2^53 fits both i64 and u64 without rounding.
        let number = if n < 0.0 {
            serde_json::Number::from(n as i64)
        } else {
            serde_json::Number::from(n as u64)
        };
        return Some(serde_json::Value::Number(number));
    }
    serde_json::Number::from_f64(n).map(serde_json::Value::Number)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn nested_values_round_trip() {
        let json = json!({
            "null": null,
            "yes": true,
            "no": false,
            "text": "héllo",
            "int": 42,
            "negative": -7,
            "float": 0.25,
            "big": 1e300,
            "empty_list": [],
            "empty_object": {},
            "list": [1, "two", null, [3.5, {"deep": [false]}]],
            "object": {"a": {"b": {"c": [1, 2, 3]}}},
        });
        let pb = json_to_struct(&json).unwrap();
        assert_eq!(struct_to_json(&pb).unwrap(), json);
        assert_eq!(value_to_json(&json_to_value(&json)).unwrap(), json);
    }

    #[test]
    fn integral_numbers_become_json_integers() {
        assert_eq!(value_to_json(&number(5.0)).unwrap(), json!(5));
        assert_eq!(value_to_json(&number(5.0)).unwrap().as_u64(), Some(5));
        assert_eq!(value_to_json(&number(-3.0)).unwrap().as_i64(), Some(-3));
        assert_eq!(value_to_json(&number(-0.0)).unwrap(), json!(0));
        assert_eq!(
            value_to_json(&number(MAX_EXACT_INT)).unwrap().as_u64(),
            Some(1 << 53)
        );
        assert_eq!(
            value_to_json(&number(-MAX_EXACT_INT)).unwrap().as_i64(),
            Some(-(1 << 53))
        );
    }

    #[test]
    fn other_numbers_stay_floats() {
        assert_eq!(value_to_json(&number(1.5)).unwrap(), json!(1.5));
        let huge = value_to_json(&number(1e20)).unwrap();
        assert_eq!(huge.as_f64(), Some(1e20));
        assert!(huge.as_u64().is_none());
    }

    #[test]
    fn json_numbers_become_f64() {
        assert_eq!(json_to_value(&json!(3)), number(3.0));
        assert_eq!(json_to_value(&json!(-2)), number(-2.0));
        assert_eq!(json_to_value(&json!(0.1)), number(0.1));
        assert_eq!(json_to_value(&json!(u64::MAX)), number(u64::MAX as f64));
    }

    #[test]
    fn null_and_unset_kind_are_null() {
        assert_eq!(
            json_to_value(&json!(null)),
            Value {
                kind: Some(Kind::NullValue(0))
            }
        );
        assert_eq!(value_to_json(&Value { kind: None }).unwrap(), json!(null));
    }

    #[test]
    fn non_finite_numbers_are_errors_with_their_path() {
        let mut inner = Struct::default();
        inner.fields.insert(
            "list".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![number(1.0), number(f64::NAN)],
                })),
            },
        );
        let mut outer = Struct::default();
        outer.fields.insert("ok".into(), number(1.0));
        outer.fields.insert(
            "inner".into(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        assert_eq!(
            struct_to_json(&outer),
            Err(ConvertError::NonFiniteNumber {
                path: "inner.list[1]".into()
            })
        );
        assert_eq!(
            value_to_json(&number(f64::INFINITY)),
            Err(ConvertError::NonFiniteNumber {
                path: String::new()
            })
        );
    }

    #[test]
    fn display_json_writes_non_finite_numbers_as_null() {
        let mut s = Struct::default();
        s.fields.insert("nan".into(), number(f64::NAN));
        s.fields.insert("inf".into(), number(f64::NEG_INFINITY));
        s.fields.insert("n".into(), number(3.0));
        assert_eq!(
            struct_to_display_json(&s),
            json!({"nan": null, "inf": null, "n": 3})
        );
        assert_eq!(value_to_display_json(&number(f64::INFINITY)), json!(null));
        assert_eq!(value_to_display_json(&number(-0.25)), json!(-0.25));
    }

    #[test]
    fn only_objects_become_structs() {
        assert_eq!(
            json_to_struct(&json!([1])),
            Err(ConvertError::NotAnObject { found: "array" })
        );
        assert_eq!(
            json_to_struct(&json!(null)),
            Err(ConvertError::NotAnObject { found: "null" })
        );
        assert_eq!(json_to_struct(&json!({})).unwrap(), Struct::default());
    }
}
