//! JWTs as an alternative to API keys (issue 23, item 3, `[auth.jwt]`):
//! tokens made here, HS256 with a shared secret, ES256 with a P-256 key
//! generated here and RS256 with the test-only RSA keys of
//! `tests/fixtures/jwt/`, both served in a JWKS file. A valid token acts as
//! the key its claims describe (role, user, names; audited as `jwt:<sub>`);
//! an expired, forged, wrongly issued or wrongly keyed token is
//! UNAUTHENTICATED, one whose role is unknown PERMISSION_DENIED; a server
//! with only `[auth.jwt]` is closed; the CLI sends one with `--token`; a
//! JWKS file rewritten on disk is used without a restart, and one that
//! cannot be used keeps the last good keys.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs1KeyDer;
use serde_json::{json, Value};
use tonic::{Code, Request};

use switchyard::auth::JwtConfig;
use switchyard::pb;
use switchyard::pb::keys_service_client::KeysServiceClient;

use crate::common::*;

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://issuer.test";

fn with<T>(msg: T, bearer: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    r
}

fn exp(secs: i64) -> i64 {
    chrono::Utc::now().timestamp() + secs
}

/// An HS256 token of `claims` over the standard ones (`iss`, `aud`, an
/// `exp` a minute away).
fn hs(claims: Value) -> String {
    let mut c = json!({"iss": ISSUER, "aud": "switchyard", "exp": exp(60)});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn an_hs256_token_acts_as_the_key_its_claims_describe() {
    let server = TestServer::start_with(|c| {
        c.auth.jwt = Some(JwtConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: ISSUER.into(),
            audience: Some("switchyard".into()),
            ..JwtConfig::default()
        })
    })
    .await;
    let mut c = server.client().await;
    // Only [auth.jwt]: the server is closed.
    let err = c.get_metrics(pb::GetMetricsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let admin = hs(json!({"sub": "ops", "role": "admin"}));
    let reader = hs(json!({"sub": "dash", "role": "reader"}));
    let alice = hs(json!({"sub": "alice-app", "role": "operator", "user_id": "alice"}));
    c.get_metrics(with(pb::GetMetricsRequest {}, &reader))
        .await
        .expect("a reader token reads");
    let mine = c
        .schedule_task(with(simple("jwt-alice", json!({})), &alice))
        .await
        .expect("an operator token schedules")
        .into_inner()
        .task_id;
    let theirs = c
        .schedule_task(with(
            simple_with(
                "jwt-bob",
                json!({}),
                pb::TaskOptions {
                    user_id: "bob".into(),
                    ..Default::default()
                },
            ),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let cancel = |id: &str, bearer: &str| {
        with(
            pb::CancelTaskRequest {
                task_id: id.into(),
                reason: "jwt test".into(),
                ..Default::default()
            },
            bearer,
        )
    };
    let err = c.cancel_task(cancel(&mine, &reader)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a reader cancels nothing"
    );
    let err = c.cancel_task(cancel(&theirs, &alice)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a user-bound token: another's task"
    );
    c.cancel_task(cancel(&mine, &alice))
        .await
        .expect("its own user's task");
    // The audit log names the token's subject, never the token.
    let events = KeysServiceClient::new(channel(&server.url).await)
        .list_audit_events(with(pb::ListAuditEventsRequest::default(), &admin))
        .await
        .expect("an admin token reads the audit log")
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.action == "cancel" && e.target == mine && e.key_id == "jwt:alice-app"),
        "{events:?}"
    );

    // Refusals: as for keys.
    let metrics = |bearer: String| with(pb::GetMetricsRequest {}, &bearer);
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": ISSUER, "aud": "switchyard", "exp": exp(60), "role": "admin"}),
        &EncodingKey::from_secret(b"not-the-secret-but-just-as-long-!!!!"),
    )
    .unwrap();
    for (case, bearer, code, words) in [
        (
            "expired",
            hs(json!({"role": "admin", "exp": exp(-3600)})),
            Code::Unauthenticated,
            "expired",
        ),
        ("forged", forged, Code::Unauthenticated, "not valid"),
        (
            "another issuer",
            hs(json!({"role": "admin", "iss": "https://evil.test"})),
            Code::Unauthenticated,
            "not valid",
        ),
        (
            "another audience",
            hs(json!({"role": "admin", "aud": "other"})),
            Code::Unauthenticated,
            "not valid",
        ),
        (
            "an unknown role",
            hs(json!({"role": "root"})),
            Code::PermissionDenied,
            "role",
        ),
        (
            "no role",
            hs(json!({"sub": "x"})),
            Code::PermissionDenied,
            "role",
        ),
    ] {
        let err = c.get_metrics(metrics(bearer)).await.unwrap_err();
        assert_eq!(err.code(), code, "{case}: {err:?}");
        assert!(err.message().contains(words), "{case}: {err:?}");
    }
    // The admin HTTP API takes it too.
    let http = reqwest::Client::new();
    let tasks = format!("{}/internal/execution-manager/tasks", server.admin_url());
    let code = |b: &str| {
        let r = http.get(&tasks).bearer_auth(b).send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(code(&reader).await, 200);
    assert_eq!(code(&hs(json!({"role": "root"}))).await, 403);
    assert_eq!(
        code(&hs(json!({"role": "reader", "exp": exp(-3600)}))).await,
        401
    );

    // The CLI sends it with --token.
    let out = within(
        "the CLI",
        LONG,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "metrics",
                "--json",
                "--server",
                &server.url,
                "--token",
                &reader,
            ])
            .env_remove("SWITCHYARD_SERVER")
            .env_remove("SWITCHYARD_TOKEN")
            .output(),
    )
    .await
    .expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_es256_token_is_checked_against_a_jwks_file() {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let point = key.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    let other = rcgen::KeyPair::generate().unwrap();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let server = TestServer::start_with(|c| {
        c.auth.tokens = vec!["root".into()];
        c.auth.jwt = Some(JwtConfig {
            jwks_file: Some(file.clone()),
            issuer: ISSUER.into(),
            ..JwtConfig::default()
        })
    })
    .await;
    let es = |kp: &rcgen::KeyPair, kid: Option<&str>, claims: Value| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims, &EncodingKey::from_ec_der(&kp.serialize_der())).unwrap()
    };
    let claims = json!({"iss": ISSUER, "exp": exp(60), "sub": "svc", "role": "scheduler"});
    let mut c = server.client().await;
    let id = c
        .schedule_task(with(
            simple("jwt-es", json!({})),
            &es(&key, Some("k1"), claims.clone()),
        ))
        .await
        .expect("an ES256 token with its kid")
        .into_inner()
        .task_id;
    // A scheduler token sees what its subject scheduled.
    let status = c
        .get_task_status(with(
            pb::GetTaskStatusRequest {
                task_id: id.clone(),
            },
            &es(&key, None, claims.clone()),
        ))
        .await
        .expect("without a kid: the key of its algorithm")
        .into_inner();
    assert_eq!(
        status
            .status
            .unwrap()
            .labels
            .get("switchyard.key")
            .map(String::as_str),
        Some("jwt:svc")
    );
    for (case, bearer) in [
        ("another key", es(&other, Some("k1"), claims.clone())),
        ("an unknown kid", es(&key, Some("k2"), claims.clone())),
        // An HS256 token "signed" with the public key's bytes: no
        // algorithm confusion.
        (
            "HS256 over the public key",
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(jwks.to_string().as_bytes()),
            )
            .unwrap(),
        ),
    ] {
        let err = c
            .get_task_status(with(
                pb::GetTaskStatusRequest {
                    task_id: id.clone(),
                },
                &bearer,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
    }
    // The static token still works beside it.
    c.get_metrics(with(pb::GetMetricsRequest {}, "root"))
        .await
        .expect("the static token");
}

/// A test-only RSA key of `tests/fixtures/jwt/`.
struct Rsa {
    /// Its private key, PKCS#1 DER: what signs.
    pkcs1: Vec<u8>,
    /// Its public key, PKCS#1 DER (`RSAPublicKey`).
    public_der: Vec<u8>,
    /// Its modulus and exponent, big-endian.
    n: Vec<u8>,
    e: Vec<u8>,
}

impl Rsa {
    fn fixture(name: &str) -> Rsa {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name);
        let pkcs1 = PrivatePkcs1KeyDer::from_pem_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .secret_pkcs1_der()
            .to_vec();
        let pair = ring::rsa::KeyPair::from_der(&pkcs1).expect("an RSA key");
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        Rsa {
            public_der: pair.public().as_ref().to_vec(),
            n: public.n,
            e: public.e,
            pkcs1,
        }
    }

    /// Its JWK: `kty` RSA, `n` and `e`, under `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&self.n), "e": b64(&self.e)})
    }

    /// A token of `claims` signed with `alg` (RS256, RS512…) under `kid`.
    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, claims, &EncodingKey::from_rsa_der(&self.pkcs1)).unwrap()
    }
}

/// A server whose `[auth.jwt]` reads `file`, beside the static token `root`.
async fn jwks_server(file: &Path) -> TestServer {
    let file = file.to_path_buf();
    TestServer::start_with(move |c| {
        c.auth.tokens = vec!["root".into()];
        c.auth.jwt = Some(JwtConfig {
            jwks_file: Some(file),
            issuer: ISSUER.into(),
            ..JwtConfig::default()
        })
    })
    .await
}

/// The code of `GetMetrics` with `bearer`: OK or the refusal's.
async fn metrics_code(c: &mut Client, bearer: &str) -> Code {
    match c.get_metrics(with(pb::GetMetricsRequest {}, bearer)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn an_rs256_token_is_checked_against_a_jwks_file() {
    let (key, other) = (
        Rsa::fixture("test-only-rsa-a.pem"),
        Rsa::fixture("test-only-rsa-b.pem"),
    );
    let jwks = json!({"keys": [key.jwk("r1")]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let server = jwks_server(&file).await;
    let mut c = server.client().await;
    let claims = json!({"iss": ISSUER, "exp": exp(60), "sub": "rsa-svc", "role": "reader"});
    assert_eq!(
        metrics_code(&mut c, &key.sign(Algorithm::RS256, Some("r1"), &claims)).await,
        Code::Ok,
        "an RS256 token with its kid"
    );
    assert_eq!(
        metrics_code(&mut c, &key.sign(Algorithm::RS256, None, &claims)).await,
        Code::Ok,
        "without a kid: the key of its algorithm"
    );
    // Algorithm confusion: an HS256 token whose "secret" is the public key,
    // in each form an attacker could take it from.
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&key.public_der)
    );
    let hs_over = |secret: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    for (case, bearer) in [
        (
            "another RSA key",
            other.sign(Algorithm::RS256, Some("r1"), &claims),
        ),
        (
            "another RSA key, no kid",
            other.sign(Algorithm::RS256, None, &claims),
        ),
        (
            "an unknown kid",
            key.sign(Algorithm::RS256, Some("r2"), &claims),
        ),
        (
            "RS512 with the key",
            key.sign(Algorithm::RS512, Some("r1"), &claims),
        ),
        (
            "HS256 over the JWKS file",
            hs_over(jwks.to_string().as_bytes()),
        ),
        ("HS256 over the public key's DER", hs_over(&key.public_der)),
        ("HS256 over the public key's PEM", hs_over(pem.as_bytes())),
        ("HS256 over n", hs_over(&key.n)),
        ("HS256 over n in base64url", hs_over(b64(&key.n).as_bytes())),
    ] {
        assert_eq!(
            metrics_code(&mut c, &bearer).await,
            Code::Unauthenticated,
            "{case}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_jwks_file_rewritten_on_disk_is_used_without_a_restart() {
    let (a, b) = (
        Rsa::fixture("test-only-rsa-a.pem"),
        Rsa::fixture("test-only-rsa-b.pem"),
    );
    let logs = server_logs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    // As a deployment replaces it: a new file renamed over the old.
    let replace = |jwks: &Value| {
        let tmp = dir.path().join("jwks.json.tmp");
        std::fs::write(&tmp, jwks.to_string()).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    replace(&json!({"keys": [a.jwk("a")]}));
    let server = jwks_server(&file).await;
    let mut c = server.client().await;
    let claims = json!({"iss": ISSUER, "exp": exp(300), "sub": "rotating", "role": "reader"});
    let (token_a, token_b) = (
        a.sign(Algorithm::RS256, Some("a"), &claims),
        b.sign(Algorithm::RS256, Some("b"), &claims),
    );
    assert_eq!(metrics_code(&mut c, &token_a).await, Code::Ok);
    assert_eq!(metrics_code(&mut c, &token_b).await, Code::Unauthenticated);

    // Replaced by a rename: B's key in, A's out. The file is looked at
    // once a second at most, so this takes a second or so; the bound
    // leaves room for a loaded CI machine.
    replace(&json!({"keys": [b.jwk("b")]}));
    let bound = SHORT;
    wait_until("a token of the new key to be accepted", bound, || {
        let mut c = c.clone();
        let t = token_b.clone();
        async move { metrics_code(&mut c, &t).await == Code::Ok }
    })
    .await;
    assert_eq!(
        metrics_code(&mut c, &token_a).await,
        Code::Unauthenticated,
        "the removed key"
    );

    // Garbage written in place: the last good keys stay, with a warning
    // that names the file.
    std::fs::write(&file, "{not json").unwrap();
    let warned = |logs: &[u8]| {
        String::from_utf8_lossy(logs).lines().any(|l| {
            l.contains("WARN")
                && l.contains("JWKS file changed but cannot be used")
                && l.contains(&*file.to_string_lossy())
        })
    };
    wait_until("the warning about the unusable file", bound, || {
        let mut c = c.clone();
        let t = token_b.clone();
        let seen = warned(&logs.lock());
        async move {
            assert_eq!(metrics_code(&mut c, &t).await, Code::Ok, "B still works");
            seen
        }
    })
    .await;
    assert_eq!(metrics_code(&mut c, &token_b).await, Code::Ok);
    assert_eq!(metrics_code(&mut c, &token_a).await, Code::Unauthenticated);

    // Written in place again: A back.
    std::fs::write(&file, json!({"keys": [a.jwk("a")]}).to_string()).unwrap();
    wait_until("A's key to be back", bound, || {
        let mut c = c.clone();
        let t = token_a.clone();
        async move { metrics_code(&mut c, &t).await == Code::Ok }
    })
    .await;
    assert_eq!(metrics_code(&mut c, &token_b).await, Code::Unauthenticated);
    server.stop().await;
}
