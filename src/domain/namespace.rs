//! Namespaces: the walls between tenants of one server.
//!
//! Every task, schedule, flow rule, key and worker belongs to one namespace
//! (`default` unless a key or the caller says otherwise). Nothing crosses
//! them: a task of another namespace is NOT_FOUND, lists and watches show
//! the caller's namespace only, and a worker takes its namespace's tasks.
//!
//! How the server keeps them apart, in one rule: a task carries its
//! namespace in the [`LABEL`] label (none for `default`; the stores keep it
//! in a column of its own, indexed), and every key the server matches
//! tasks by (the embedded queue's task names, idempotency and debounce
//! keys, schedule ids, flow rule patterns) is *qualified* inside the
//! server: `NAME@NAMESPACE` ([`qualify`]) for any namespace but `default`,
//! the bare name for `default`. A name may not hold `@`, so no qualified
//! key meets another namespace's. The edges show the bare name
//! ([`unqualify`]).
//!
//! Must not: know who calls (that is `crate::keys::Principal`).

use std::borrow::Cow;

use super::TaskSpec;

/// The namespace of everything that names none.
pub const DEFAULT: &str = "default";
/// The label a task of a namespace other than `default` carries.
pub const LABEL: &str = "switchyard.namespace";
/// The longest namespace name.
pub const MAX_BYTES: usize = 64;
/// The request header (gRPC metadata) in which a static token's or an
/// open server's call names the namespace it acts in.
pub const HEADER: &str = "switchyard-namespace";
/// What separates a name from its namespace inside the server.
pub const SEP: char = '@';

/// Checks a namespace name: 1 to [`MAX_BYTES`] bytes of lowercase letters,
/// digits, `-` and `_`, starting with a letter or a digit.
pub fn check(ns: &str) -> Result<(), String> {
    if ns.is_empty() {
        return Err("must not be empty".into());
    }
    if ns.len() > MAX_BYTES {
        return Err(format!(
            "must be at most {MAX_BYTES} bytes, got {}",
            ns.len()
        ));
    }
    if let Some(c) = ns
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        return Err(format!(
            "may hold only lowercase letters, digits, - and _ (found {c:?})"
        ));
    }
    if !ns.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or a digit".into());
    }
    Ok(())
}

/// `name` as the server keys it in namespace `ns`: the bare name in
/// `default`, `name@ns` elsewhere.
pub fn qualify<'a>(name: &'a str, ns: &str) -> Cow<'a, str> {
    if ns == DEFAULT {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{name}{SEP}{ns}"))
    }
}

/// A qualified key's bare name and namespace (`default` when it has none).
pub fn split(key: &str) -> (&str, &str) {
    match key.rsplit_once(SEP) {
        Some((name, ns)) if check(ns).is_ok() => (name, ns),
        _ => (key, DEFAULT),
    }
}

/// A qualified key's bare name, when it is of namespace `ns`.
pub fn unqualify<'a>(key: &'a str, ns: &str) -> Option<&'a str> {
    let (name, of) = split(key);
    (of == ns).then_some(name)
}

/// The prefix of a free-form key (an idempotency or debounce key) kept
/// for a namespace other than `default`: U+0001, which no caller's key may
/// start with (see `debounce::RESERVED`), `ns:`, the namespace and U+001F.
fn key_prefix(ns: &str) -> String {
    format!("\u{1}ns:{ns}\u{1f}")
}

/// A free-form key (idempotency, debounce; any bytes, `@` included) as the
/// server keeps it in namespace `ns`: as it is in `default`, behind a
/// reserved prefix elsewhere. Qualifying twice changes nothing.
pub fn qualify_key<'a>(key: &'a str, ns: &str) -> Cow<'a, str> {
    if ns == DEFAULT || key.starts_with(&key_prefix(ns)) {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{}{key}", key_prefix(ns)))
    }
}

/// A kept free-form key as its caller gave it (the namespace's prefix
/// taken off).
pub fn unqualify_key(key: &str) -> &str {
    match key.strip_prefix("\u{1}ns:") {
        Some(rest) => rest.split_once('\u{1f}').map_or(key, |(_, k)| k),
        None => key,
    }
}

/// Puts a new task in namespace `ns`: its [`LABEL`]
/// (none for `default`; a caller's own is replaced), and its idempotency,
/// debounce and concurrency keys qualified, so no key matches another
/// namespace's task (nor counts against another namespace's limit).
pub fn stamp(spec: &mut TaskSpec, ns: &str) {
    if ns == DEFAULT {
        spec.labels.remove(LABEL);
        return;
    }
    spec.labels.insert(LABEL.into(), ns.into());
    if let Some(k) = spec.idempotency_key.take() {
        spec.idempotency_key = Some(qualify_key(&k, ns).into());
    }
    if let Some(d) = spec.dedup.as_deref_mut() {
        if let Some(db) = d.debounce.as_mut() {
            db.key = qualify_key(&db.key, ns).into();
        }
    }
    if let Some(k) = spec.concurrency_key.as_deref_mut() {
        k.0 = qualify_key(&k.0, ns).into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_outside_default_only() {
        assert_eq!(qualify("email", DEFAULT), "email");
        assert_eq!(qualify("email", "acme"), "email@acme");
        assert_eq!(split("email@acme"), ("email", "acme"));
        assert_eq!(split("email"), ("email", DEFAULT));
        assert_eq!(unqualify("email@acme", "acme"), Some("email"));
        assert_eq!(unqualify("email@acme", DEFAULT), None);
        assert_eq!(unqualify("email", DEFAULT), Some("email"));
        assert_eq!(unqualify("email", "acme"), None);
        // A key whose tail is no namespace name (a caller's idempotency
        // key may hold `@`) belongs to `default`.
        assert_eq!(split("a@B C"), ("a@B C", DEFAULT));
    }

    #[test]
    fn free_keys_are_qualified_behind_a_reserved_prefix() {
        assert_eq!(qualify_key("k@acme", DEFAULT), "k@acme");
        let q = qualify_key("k", "acme");
        assert_ne!(q, "k@acme", "no default key meets a qualified one");
        assert!(q.starts_with('\u{1}'));
        assert_eq!(qualify_key(&q, "acme"), q, "idempotent");
        assert_eq!(unqualify_key(&q), "k");
        assert_eq!(unqualify_key("k"), "k");
        let throttle = qualify_key("\u{1}throttle:k", "acme");
        assert_eq!(unqualify_key(&throttle), "\u{1}throttle:k");
    }

    #[test]
    fn namespace_names_are_checked() {
        assert!(check("acme").is_ok());
        assert!(check("team-1_x").is_ok());
        assert!(check("").is_err());
        assert!(check("Acme").is_err());
        assert!(check("a@b").is_err());
        assert!(check("-a").is_err());
        assert!(check(&"a".repeat(65)).is_err());
    }
}
