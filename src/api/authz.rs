//! The gRPC edge's access check: a tower service around each of
//! Switchyard's gRPC services that resolves the caller from its
//! `authorization` metadata ([`Keys::authenticate`], from memory), looks
//! up what the method needs in the one table ([`crate::keys::table`]) and
//! refuses with UNAUTHENTICATED or PERMISSION_DENIED before the handler
//! runs, then counts the call against the key's rate (RESOURCE_EXHAUSTED
//! with a retry delay when it is over). The caller ([`Principal`]) rides in the request's extensions for
//! the handlers that narrow a call to its scope.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::keys::{table, Denied, Keys, Limited, Principal, Refusal};

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        Status::permission_denied(d.to_string())
    }
}

/// RESOURCE_EXHAUSTED naming the limit, with `google.rpc.QuotaFailure`
/// (subject `key:<id>`, the limit's name) and, when a retry can succeed
/// (the rate), `google.rpc.RetryInfo` with the delay.
impl From<Limited> for Status {
    fn from(l: Limited) -> Status {
        let mut details = ErrorDetails::new();
        details.add_quota_failure_violation(format!("key:{}", l.key()), l.limit());
        if let Some(d) = l.retry_after() {
            details.set_retry_info(Some(d));
        }
        Status::with_error_details(Code::ResourceExhausted, l.to_string(), details)
    }
}

/// The caller of a request that passed [`Authorized`].
pub fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the caller is not known"))
}

/// A service behind the access check.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    keys: Keys,
}

impl<S> Authorized<S> {
    /// `inner`, checked against `keys`.
    pub fn new(inner: S, keys: Keys) -> Self {
        Authorized { inner, keys }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let (need, scoping) = table::grpc(req.uri().path());
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let asked = req
            .headers()
            .get(crate::keys::NAMESPACE_HEADER)
            .map(|v| v.to_str().unwrap_or("?"));
        let refused = match self
            .keys
            .authenticate(header, None)
            .and_then(|p| p.in_namespace(asked).map_err(Refusal::from))
        {
            Err(Refusal::Unknown(u)) => Some(Status::unauthenticated(u.to_string())),
            Err(Refusal::Denied(d)) => Some(d.into()),
            Ok(p) => match p
                .may(need, scoping)
                .map_err(Status::from)
                .and_then(|()| p.admit().map_err(Status::from))
            {
                Err(s) => Some(s),
                Ok(()) => {
                    req.extensions_mut().insert(p);
                    None
                }
            },
        };
        if let Some(status) = refused {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The service that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}
