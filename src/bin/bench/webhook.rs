//! A fast local HTTP/1.1 server (hyper, keep-alive) on loopback that the
//! INTEGRATION scenario calls: it answers every POST with a small JSON body
//! and counts the calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The running hook server.
pub struct Hook {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub calls: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Hook {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> Result<Hook> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (c, s) = (calls.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = s.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let _ = tcp.set_nodelay(true);
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            // Read the whole body, as a real endpoint would.
                            let _ = req.into_body().collect().await;
                            c.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                    .expect("static response"),
                            )
                        }
                    });
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Ok(Hook { addr, calls, stop })
    }

    /// The URL tasks call.
    pub fn url(&self) -> String {
        format!("http://{}/webhook/bench", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
