//! Bearer tokens: one check shared by both transports. The gRPC
//! `OrchestratorService` and `WorkerService` get it as a tonic interceptor
//! (health and reflection stay open); every admin route except `/healthz`
//! gets it as an axum middleware (`admin::guard`). No token configured
//! means open (the local default). It knows neither transport's routes.
//!
//! Tokens are compared in constant time: each candidate and each configured
//! token are hashed (SHA-256) and the digests compared with `subtle`, so
//! neither the content nor the length of a token leaks through timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `[auth]`: who may call the API.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted bearer tokens. Empty (with no `tokens_file`): no check.
    /// From the environment as a comma-separated list
    /// (`SWITCHYARD_AUTH__TOKENS=t1,t2`). Never printed.
    #[serde(
        deserialize_with = "string_or_list",
        serialize_with = "redacted",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tokens: Vec<String>,
    /// A file with more tokens, one a line (`#` starts a comment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// `[auth.jwt]`: JWTs accepted beside the tokens and keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// `[auth.jwt]`: a bearer that is a JWT signed by this issuer is verified
/// and its claims give the caller's role, user and task names, as a key's
/// would. Exactly one of `hs256_secret` and `jwks_file`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The HS256 shared secret (at least 32 bytes). Never printed.
    #[serde(
        serialize_with = "redacted_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub hs256_secret: Option<String>,
    /// A JWKS file (`{"keys": [...]}`, 1 to 100 keys, at most 1 MiB) of
    /// RS256 and ES256 (P-256) public keys; a token's `kid` picks its key.
    /// Read at start (a mistake stops it), then again when the file changes
    /// (looked at once a second at most, when a JWT arrives); a version
    /// that cannot be used keeps the last good keys and logs a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry (required).
    pub issuer: String,
    /// The `aud` every token must carry; unset: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The claim that holds the role (`admin`, `operator`, `scheduler`,
    /// `reader`, `worker`).
    pub role_claim: String,
    /// The claim that binds the caller to a user (a string); absent from
    /// a token: not bound. Default `user_id`, not `sub`: `sub` is in nearly
    /// every token and would bind even an admin's.
    pub user_claim: String,
    /// The claim that lists a worker's task names (an array of strings, or
    /// one comma-separated string).
    pub names_claim: String,
    /// The claim that names the namespace the caller acts in (`default`
    /// when the token has none).
    pub namespace_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: std::time::Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            jwks_file: None,
            issuer: String::new(),
            audience: None,
            role_claim: "role".into(),
            user_claim: "user_id".into(),
            names_claim: "names".into(),
            namespace_claim: "namespace".into(),
            leeway: std::time::Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
            .field("user_claim", &self.user_claim)
            .field("names_claim", &self.names_claim)
            .field("namespace_claim", &self.namespace_claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

fn redacted_one<S: Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("tokens_file", &self.tokens_file)
            .field("jwt", &self.jwt)
            .finish()
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let tokens: Vec<String> = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => split_tokens(&s),
        OneOrMany::Many(v) => v
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    };
    // Set but empty (`SWITCHYARD_AUTH__TOKENS=","`, `tokens = [""]`) is a
    // mistake, never a wish for an open server: refuse it (fail closed).
    if tokens.is_empty() {
        return Err(serde::de::Error::custom(
            "auth.tokens is set but holds no token; unset it to run without authentication",
        ));
    }
    Ok(tokens)
}

fn redacted<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "<redacted>"))
}

fn split_tokens(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

fn digest(t: &[u8]) -> [u8; 32] {
    Sha256::digest(t).into()
}

impl Tokens {
    /// The tokens of `cfg`: its list plus its file's lines. A named file
    /// that cannot be read is an error naming it.
    pub fn load(cfg: &AuthConfig) -> Result<Tokens, String> {
        let mut all = cfg.tokens.clone();
        if let Some(path) = &cfg.tokens_file {
            let from_file = read_file(path)?;
            if from_file.is_empty() {
                return Err(format!(
                    "auth.tokens_file {} holds no token (only blank lines or comments); \
                     refusing to start without authentication",
                    path.display()
                ));
            }
            all.extend(from_file);
        }
        Ok(Tokens::new(all))
    }

    /// Tokens from a list.
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Tokens {
        Tokens {
            digests: Arc::new(
                tokens
                    .into_iter()
                    .filter(|t| !t.as_ref().is_empty())
                    .map(|t| digest(t.as_ref().as_bytes()))
                    .collect(),
            ),
        }
    }

    /// Whether no token is required.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `candidate` is one of the tokens (constant time per token).
    pub fn accepts(&self, candidate: &str) -> bool {
        let d = digest(candidate.as_bytes());
        // Every token is compared, whichever matches.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&d))
            .into()
    }

    /// Whether a request with this `authorization` value (and, where the
    /// route allows it, this `access_token` query value) may pass.
    pub fn allows(&self, authorization: Option<&str>, access_token: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        if let Some(t) = authorization.and_then(bearer) {
            return self.accepts(t);
        }
        access_token.is_some_and(|t| self.accepts(t))
    }
}

fn read_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The gRPC check: `authorization: Bearer <token>` metadata, else
/// UNAUTHENTICATED.
#[derive(Clone, Debug)]
pub struct GrpcAuth(pub Tokens);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if self.0.is_open() {
            return Ok(req);
        }
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.0.allows(header, None) {
            Ok(req)
        } else if header.is_none() {
            Err(tonic::Status::unauthenticated(
                "this server requires `authorization: Bearer <token>`",
            ))
        } else {
            Err(tonic::Status::unauthenticated(
                "the bearer token is not valid",
            ))
        }
    }
}

/// The `access_token` query parameter, if any.
pub fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_tokens_and_strict_with() {
        let open = Tokens::new(Vec::<String>::new());
        assert!(open.allows(None, None));
        let t = Tokens::new(["alpha", "beta"]);
        assert!(!t.allows(None, None));
        assert!(t.allows(Some("Bearer beta"), None));
        assert!(t.allows(Some("bearer  alpha "), None));
        assert!(!t.allows(Some("Bearer alph"), None));
        assert!(!t.allows(Some("Basic alpha"), None));
        assert!(t.allows(None, Some("alpha")));
        // A wrong header is not rescued by a query token.
        assert!(!t.allows(Some("Bearer nope"), Some("alpha")));
    }

    #[test]
    fn tokens_come_from_a_list_a_string_and_a_file() {
        let c: AuthConfig = toml::from_str("tokens = \"a, b,,\"").unwrap();
        assert_eq!(c.tokens, vec!["a", "b"]);
        let c: AuthConfig = toml::from_str("tokens = [\"x\", \" y \"]").unwrap();
        assert_eq!(c.tokens, vec!["x", "y"]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# ops\nfrom-file\n\n").unwrap();
        let t = Tokens::load(&AuthConfig {
            tokens: vec!["x".into()],
            tokens_file: Some(f),
            jwt: None,
        })
        .unwrap();
        assert!(t.accepts("from-file") && t.accepts("x") && !t.accepts("# ops"));
        let missing = Tokens::load(&AuthConfig {
            tokens: vec![],
            tokens_file: Some(dir.path().join("nope")),
            jwt: None,
        });
        assert!(missing.unwrap_err().contains("auth.tokens_file"));
    }

    #[test]
    fn a_token_set_that_is_configured_but_empty_refuses_to_start() {
        for bad in [
            "tokens = \",\"",
            "tokens = \" \"",
            "tokens = \"\"",
            "tokens = [\"\"]",
        ] {
            let e = toml::from_str::<AuthConfig>(bad).unwrap_err().to_string();
            assert!(e.contains("holds no token"), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# only a comment\n\n").unwrap();
        let e = Tokens::load(&AuthConfig {
            tokens: vec![],
            tokens_file: Some(f),
            jwt: None,
        })
        .unwrap_err();
        assert!(e.contains("holds no token"), "{e}");
        // Nothing configured at all stays open (the local default).
        assert!(Tokens::load(&AuthConfig::default()).unwrap().is_open());
    }

    #[test]
    fn tokens_are_never_printed() {
        let c = AuthConfig {
            tokens: vec!["s3cret".into()],
            tokens_file: None,
            jwt: Some(JwtConfig {
                hs256_secret: Some("jwt-s3cret".into()),
                issuer: "i".into(),
                ..JwtConfig::default()
            }),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!toml::to_string(&c).unwrap().contains("s3cret"));
        assert!(toml::to_string(&c).unwrap().contains("<redacted>"));
    }
}
