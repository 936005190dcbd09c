//! JWTs as an alternative to keys (`[auth.jwt]`): a bearer that parses as a
//! JWT is verified (HS256 with a shared secret, or RS256/ES256 against a
//! JWKS file; `exp` and `iss` required, `aud` when configured, `nbf` when
//! present) and its claims are mapped to the role, user and task names a
//! key carries, so the same checks apply to it.
//!
//! Owns: reading the JWKS file (again when it changes, through
//! [`crate::reload`]: a file that cannot be used keeps the last good key
//! set), picking the key (`kid`, else the header's algorithm), the claim
//! mapping. Must not: know gRPC or HTTP (a refusal is
//! [`Unknown`] or [`Denied`], mapped by the edges).

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Denied, Refusal, Role, Unknown, MAX_NAMES, MAX_USER_BYTES};
use crate::auth::JwtConfig;
use crate::reload::{Reloading, RECHECK_EVERY};

/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's
/// size).
const MIN_SECRET_BYTES: usize = 32;
/// The longest bearer that is tried as a JWT.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The most keys a JWKS file holds.
const MAX_KEYS: usize = 100;
/// The largest JWKS file read (it is read again, on a request's path, when
/// it changes).
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// The longest `sub` kept in the caller's id (`jwt:<sub>`).
const MAX_SUB_BYTES: usize = 128;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `jwt:<sub>` (`jwt` without a `sub`): what the audit log records.
    pub id: String,
    /// The role.
    pub role: Role,
    /// The user it is bound to.
    pub user_id: Option<String>,
    /// A worker's task names.
    pub names: Vec<String>,
    /// The namespace it acts in.
    pub namespace: Option<String>,
    /// `exp`, µs.
    pub expires_at: i64,
}

struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The verifying keys: the HS256 secret, or a JWKS file's keys, read again
/// when the file changes.
enum KeySet {
    Fixed(Arc<[VerifyingKey]>),
    File(Reloading<Arc<[VerifyingKey]>>),
}

impl KeySet {
    fn current(&self) -> Arc<[VerifyingKey]> {
        match self {
            KeySet::Fixed(k) => k.clone(),
            KeySet::File(r) => r.current(),
        }
    }
}

/// The verifier of `[auth.jwt]`.
pub struct Jwt {
    keys: KeySet,
    issuer: String,
    audience: Option<String>,
    role_claim: String,
    user_claim: String,
    names_claim: String,
    namespace_claim: String,
    leeway: u64,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.keys {
            KeySet::Fixed(_) => write!(f, "Jwt(HS256, issuer {})", self.issuer),
            KeySet::File(r) => write!(f, "Jwt({r:?}, issuer {})", self.issuer),
        }
    }
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return Err("only RSA (RS256) and P-256 (ES256) keys are accepted".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(from_type),
        Some(KeyAlgorithm::RS256) if from_type == Algorithm::RS256 => Ok(from_type),
        Some(KeyAlgorithm::ES256) if from_type == Algorithm::ES256 => Ok(from_type),
        Some(other) => Err(format!(
            "its alg {other:?} is not RS256 or ES256, or does not fit the key"
        )),
    }
}

/// The keys of a JWKS file; an error names the setting and the file.
fn jwks(path: &Path) -> Result<Arc<[VerifyingKey]>, String> {
    let what = |e: String| format!("auth.jwt.jwks_file {}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_JWKS_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| what(e.to_string()))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(what(format!(
            "is larger than {} KiB",
            MAX_JWKS_BYTES / 1024
        )));
    }
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| what(e.to_string()))?;
    if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
        return Err(what(format!("must hold 1 to {MAX_KEYS} keys")));
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let alg = jwk_algorithm(jwk).map_err(|e| what(format!("key {i}: {e}")))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| what(format!("key {i}: {e}")))?;
            Ok(VerifyingKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

impl Jwt {
    /// The verifier `cfg` describes; a mistake is an error naming the
    /// setting (the server refuses to start). A JWKS file is read again
    /// when it changes (looked at once a second at most, when a JWT
    /// arrives).
    pub fn load(cfg: &JwtConfig) -> Result<Jwt, String> {
        Jwt::load_every(cfg, RECHECK_EVERY)
    }

    /// [`Jwt::load`], the JWKS file looked at once per `every` at most.
    fn load_every(cfg: &JwtConfig, every: Duration) -> Result<Jwt, String> {
        if cfg.issuer.trim().is_empty() {
            return Err("auth.jwt.issuer is required".into());
        }
        for (name, claim) in [
            ("role_claim", &cfg.role_claim),
            ("user_claim", &cfg.user_claim),
            ("names_claim", &cfg.names_claim),
            ("namespace_claim", &cfg.namespace_claim),
        ] {
            if claim.is_empty() || claim.len() > 128 {
                return Err(format!("auth.jwt.{name} must be 1 to 128 bytes"));
            }
        }
        let keys = match (&cfg.hs256_secret, &cfg.jwks_file) {
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "auth.jwt.hs256_secret must be at least {MIN_SECRET_BYTES} bytes"
                    ));
                }
                KeySet::Fixed(Arc::new([VerifyingKey {
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                }]))
            }
            (None, Some(path)) => {
                let file = path.clone();
                KeySet::File(Reloading::load(
                    "JWKS file",
                    vec![path.clone()],
                    every,
                    move || jwks(&file),
                )?)
            }
            _ => return Err("auth.jwt needs exactly one of hs256_secret and jwks_file".to_string()),
        };
        Ok(Jwt {
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            role_claim: cfg.role_claim.clone(),
            user_claim: cfg.user_claim.clone(),
            names_claim: cfg.names_claim.clone(),
            namespace_claim: cfg.namespace_claim.clone(),
            leeway: cfg.leeway.as_secs(),
        })
    }

    /// Whether `bearer` has a JWT's shape (three base64url parts whose
    /// first is a JOSE header): only such a bearer is verified as one.
    pub fn looks_like(bearer: &str) -> bool {
        bearer.len() <= MAX_TOKEN_BYTES
            && bearer.split('.').count() == 3
            && jsonwebtoken::decode_header(bearer).is_ok()
    }

    /// Verifies `token` and maps its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let invalid = Refusal::Unknown(Unknown::Invalid);
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid.clone())?;
        // The token's `kid` picks its key; without one, every key of its
        // algorithm is tried. A key is only ever used with its own
        // algorithm (no algorithm confusion).
        let keys = self.keys.current();
        let candidates = keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => keys.len() == 1,
                    (None, _) => true,
                }
        });
        let mut last = invalid.clone();
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.set_issuer(&[&self.issuer]);
            v.leeway = self.leeway;
            v.validate_nbf = true;
            let mut required: HashSet<String> = ["exp", "iss"].map(String::from).into();
            match &self.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            v.required_spec_claims = required;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v) {
                Ok(data) => return self.claims(&data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            Refusal::Unknown(Unknown::Expired)
                        }
                        _ => invalid.clone(),
                    };
                    if matches!(last, Refusal::Unknown(Unknown::Expired)) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn claims(&self, c: &Map<String, Value>) -> Result<Claims, Refusal> {
        let denied = |why: String| Refusal::Denied(Denied::Claim(why));
        let role = match c.get(&self.role_claim) {
            Some(Value::String(r)) => Role::parse(r).ok_or_else(|| {
                denied(format!(
                    "the token's {} claim is not a role (admin, operator, scheduler, reader, worker)",
                    self.role_claim
                ))
            })?,
            _ => {
                return Err(denied(format!(
                    "the token has no {} claim naming a role",
                    self.role_claim
                )))
            }
        };
        let user_id = match c.get(&self.user_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(u))
                if !u.is_empty()
                    && u.len() <= MAX_USER_BYTES
                    && !u.chars().any(char::is_control) =>
            {
                Some(u.clone())
            }
            Some(_) => {
                return Err(denied(format!(
                    "the token's {} claim is not a user (1 to {MAX_USER_BYTES} bytes)",
                    self.user_claim
                )))
            }
        };
        let names: Vec<String> = match c.get(&self.names_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(_) => {
                return Err(denied(format!(
                    "the token's {} claim is not a list of task names",
                    self.names_claim
                )))
            }
        };
        if names.len() > MAX_NAMES {
            return Err(denied(format!(
                "the token's {} claim lists more than {MAX_NAMES} names",
                self.names_claim
            )));
        }
        let namespace = match c.get(&self.namespace_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(ns)) if crate::domain::namespace::check(ns).is_ok() => {
                Some(ns.clone())
            }
            Some(_) => {
                return Err(denied(format!(
                    "the token's {} claim is not a namespace name (1 to 64 bytes of \
                     lowercase letters, digits, - and _)",
                    self.namespace_claim
                )))
            }
        };
        let id = match c.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => {
                format!("jwt:{}", crate::domain::text::cut(sub, MAX_SUB_BYTES))
            }
            _ => "jwt".to_string(),
        };
        let expires_at = c
            .get("exp")
            .and_then(Value::as_i64)
            .map_or(0, |s| s.saturating_mul(1_000_000));
        Ok(Claims {
            id,
            role,
            user_id,
            names,
            namespace,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

    fn hs() -> Jwt {
        Jwt::load(&JwtConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: "https://issuer.test".into(),
            audience: Some("switchyard".into()),
            ..JwtConfig::default()
        })
        .unwrap()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn exp(secs: i64) -> i64 {
        chrono::Utc::now().timestamp() + secs
    }

    #[test]
    fn claims_map_to_a_role_a_user_and_names() {
        let j = hs();
        let t = token(
            json!({"iss": "https://issuer.test", "aud": "switchyard", "exp": exp(60),
            "sub": "svc-1", "role": "worker", "names": ["a", "b"]}),
        );
        assert!(Jwt::looks_like(&t));
        let c = j.verify(&t).unwrap();
        assert_eq!(c.id, "jwt:svc-1");
        assert_eq!(c.role, Role::Worker);
        assert_eq!(c.names, ["a", "b"]);
        assert_eq!(c.user_id, None);
        let t = token(
            json!({"iss": "https://issuer.test", "aud": "switchyard", "exp": exp(60),
            "role": "reader", "user_id": "alice", "names": "x, y"}),
        );
        let c = j.verify(&t).unwrap();
        assert_eq!(
            (c.id.as_str(), c.user_id.as_deref()),
            ("jwt", Some("alice"))
        );
        assert_eq!(c.names, ["x", "y"]);
        assert_eq!(c.namespace, None, "no claim: `default`");
        let t = token(
            json!({"iss": "https://issuer.test", "aud": "switchyard", "exp": exp(60),
            "role": "operator", "namespace": "acme"}),
        );
        assert_eq!(j.verify(&t).unwrap().namespace.as_deref(), Some("acme"));
    }

    #[test]
    fn bad_tokens_are_refused_as_keys_are() {
        let j = hs();
        let base = json!({"iss": "https://issuer.test", "aud": "switchyard", "exp": exp(60), "role": "admin"});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        let unknown = |u| Err(Refusal::Unknown(u));
        assert_eq!(
            j.verify(&token(with("exp", json!(exp(-3600))))),
            unknown(Unknown::Expired)
        );
        assert_eq!(
            j.verify(&token(with("iss", json!("https://other.test")))),
            unknown(Unknown::Invalid)
        );
        assert_eq!(
            j.verify(&token(with("aud", json!("someone-else")))),
            unknown(Unknown::Invalid)
        );
        let mut no_exp = base.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(j.verify(&token(no_exp)), unknown(Unknown::Invalid));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &base,
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
        )
        .unwrap();
        assert_eq!(j.verify(&forged), unknown(Unknown::Invalid));
        // `alg: none` and another algorithm are refused.
        let parts: Vec<&str> = forged.split('.').collect();
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"alg":"none","typ":"JWT"}"#
            ),
            parts[1]
        );
        assert!(j.verify(&none).is_err());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &base,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(j.verify(&hs384), unknown(Unknown::Invalid));
        for (claim, v) in [
            ("role", json!("root")),
            ("role", json!(1)),
            ("namespace", json!("Not A Namespace")),
            ("namespace", json!(7)),
            ("user_id", json!("")),
        ] {
            assert!(
                matches!(
                    j.verify(&token(with(claim, v.clone()))),
                    Err(Refusal::Denied(Denied::Claim(_)))
                ),
                "{claim} {v}"
            );
        }
        let mut no_role = base.clone();
        no_role.as_object_mut().unwrap().remove("role");
        assert!(matches!(j.verify(&token(no_role)), Err(Refusal::Denied(_))));
        assert!(!Jwt::looks_like("sy_abc"));
        assert!(!Jwt::looks_like("a.b.c"));
    }

    /// A P-256 key's JWK (`kid`) and a signer of ES256 tokens with it.
    fn es256(kid: &str) -> (Value, impl Fn(Value) -> String) {
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let kp = rcgen::KeyPair::generate().unwrap();
        let p = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&p[1..33]), "y": b64(&p[33..65])});
        let key = EncodingKey::from_ec_der(&kp.serialize_der());
        let kid = kid.to_string();
        (jwk, move |claims: Value| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(kid.clone());
            encode(&h, &claims, &key).unwrap()
        })
    }

    #[test]
    fn a_jwks_file_is_read_again_when_it_changes_and_keeps_its_last_good_keys() {
        let (jwk_a, a) = es256("a");
        let (jwk_b, b) = es256("b");
        let claims = json!({"iss": "i", "exp": exp(60), "role": "reader"});
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let write = |v: &str| {
            // Replaced by a rename, as a deployment would.
            let tmp = dir.path().join("jwks.tmp");
            std::fs::write(&tmp, v).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        };
        write(&json!({"keys": [jwk_a]}).to_string());
        let j = Jwt::load_every(
            &JwtConfig {
                jwks_file: Some(file.clone()),
                issuer: "i".into(),
                ..JwtConfig::default()
            },
            Duration::ZERO,
        )
        .unwrap();
        let ok = |t: String| j.verify(&t).is_ok();
        assert!(ok(a(claims.clone())));
        assert!(!ok(b(claims.clone())), "b is not in the file yet");
        // Added, then a removed; written in place.
        std::fs::write(&file, json!({"keys": [jwk_a, jwk_b]}).to_string()).unwrap();
        assert!(ok(b(claims.clone())) && ok(a(claims.clone())));
        write(&json!({"keys": [jwk_b]}).to_string());
        assert!(!ok(a(claims.clone())), "a was removed");
        // Files that cannot be used keep the last good set (b).
        // Past the size bound only: a good set, padded.
        let too_large = json!({"keys": [jwk_a], "pad": "x".repeat(1 << 20)}).to_string();
        for bad in [
            "garbage",
            "",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
            &too_large,
        ] {
            write(bad);
            assert!(ok(b(claims.clone())), "after {:.20}", bad);
            assert!(!ok(a(claims.clone())), "after {:.20}", bad);
        }
        std::fs::remove_file(&file).unwrap();
        assert!(ok(b(claims.clone())), "a removed file keeps them too");
        write(&json!({"keys": [jwk_a]}).to_string());
        assert!(ok(a(claims.clone())) && !ok(b(claims.clone())));
    }

    #[test]
    fn settings_that_cannot_work_refuse_to_start() {
        let cfg = |f: fn(&mut JwtConfig)| {
            let mut c = JwtConfig {
                hs256_secret: Some(SECRET.into()),
                issuer: "i".into(),
                ..JwtConfig::default()
            };
            f(&mut c);
            Jwt::load(&c).err().unwrap_or_default()
        };
        assert!(cfg(|c| c.issuer.clear()).contains("issuer"));
        assert!(cfg(|c| c.hs256_secret = Some("short".into())).contains("hs256_secret"));
        assert!(cfg(|c| c.jwks_file = Some("/x".into())).contains("exactly one"));
        assert!(cfg(|c| c.role_claim.clear()).contains("role_claim"));
        assert!(cfg(|c| {
            c.hs256_secret = None;
            c.jwks_file = Some("/nonexistent/jwks.json".into());
        })
        .contains("jwks_file"));
    }
}
