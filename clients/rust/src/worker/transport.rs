//! The TCP connector behind the worker's channel, with a kill switch.
//!
//! [`WorkerHandle::abort`](super::WorkerHandle::abort) must look to the server
//! like a killed process: the connection drops, with no `END_STREAM` and no
//! goodbye. Dropping the client's objects is not enough for that (hyper ends
//! the request body cleanly, and keeps the connection while anything holds a
//! stream), so every socket the worker opens fails all reads and writes once
//! the kill token is cancelled; hyper then drops the connection and the socket
//! closes.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;

/// Opens plain TCP connections that die when `kill` is cancelled.
#[derive(Debug, Clone)]
pub(crate) struct KillableConnector {
    kill: CancellationToken,
}

impl KillableConnector {
    pub(crate) fn new(kill: CancellationToken) -> Self {
        Self { kill }
    }
}

impl Service<Uri> for KillableConnector {
    type Response = TokioIo<KillableStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let kill = self.kill.clone();
        Box::pin(async move {
            if kill.is_cancelled() {
                return Err(killed());
            }
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"))?;
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(KillableStream::new(tcp, kill)))
        })
    }
}

/// A TCP stream whose every operation fails once its token is cancelled.
pub(crate) struct KillableStream {
    tcp: TcpStream,
    token: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    fn new(tcp: TcpStream, token: CancellationToken) -> Self {
        let killed = Box::pin(token.clone().cancelled_owned());
        Self { tcp, token, killed }
    }

    /// Whether the stream is killed; otherwise registers `cx` to be woken when
    /// it is, so a pending read notices at once.
    fn is_killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.token.is_cancelled() || self.killed.as_mut().poll(cx).is_ready()
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "worker aborted")
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// How long to wait for the TCP connection (and HTTP/2 handshake).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_killed_stream_fails_pending_reads_and_closes_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kill = CancellationToken::new();
        let mut connector = KillableConnector::new(kill.clone());
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let (client, accepted) = tokio::join!(connector.call(uri), listener.accept());
        let mut client = client.unwrap().into_inner();
        let (mut server, _) = accepted.unwrap();

        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();

        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let res = client.read(&mut buf).await;
            drop(client);
            res
        });
        kill.cancel();
        let res = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        // The peer sees the connection end.
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
    }
}
