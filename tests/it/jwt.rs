//! JWTs as an alternative to API keys (issue 23, item 3, `[auth.jwt]`):
//! tokens made here, HS256 with a shared secret and ES256 with a P-256 key
//! generated here and served in a JWKS file. A valid token acts as the key
//! its claims describe (role, user, names; audited as `jwt:<sub>`); an
//! expired, forged, wrongly issued or wrongly keyed token is
//! UNAUTHENTICATED, one whose role is unknown PERMISSION_DENIED; a server
//! with only `[auth.jwt]` is closed; the CLI sends one with `--token`.

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
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
