//! The accept loop of a TLS port: accepts TCP connections, runs each
//! handshake on its own task (a slow client holds up no one), and hands the
//! finished streams on: to tonic as a stream ([`incoming`]), to axum as a
//! listener ([`TlsListener`]). A failed handshake is logged and dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// How long a client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished and not yet taken, per port.
const BACKLOG: usize = 64;

type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Spawns the accept loop. Policy on shutdown: it ends (closing the
/// listener) when the receiver is dropped, i.e. when the server that reads
/// it stops.
fn spawn_accept_loop(listener: TcpListener, acceptor: TlsAcceptor) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel::<Accepted>(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: pause, then go on.
                        tracing::warn!(cause = %e, "accepting a TLS connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small frames must not wait for a delayed ACK (40 ms).
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The TLS connections of `listener`, for tonic's `serve_with_incoming`
/// (peer certificates reach requests as `TlsConnectInfo`).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    ReceiverStream::new(spawn_accept_loop(listener, acceptor)).map(|(tls, _)| Ok(tls))
}

/// The TLS connections of a listener, as an axum listener.
pub struct TlsListener {
    rx: mpsc::Receiver<Accepted>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        Ok(TlsListener {
            rx: spawn_accept_loop(listener, acceptor),
            addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(a) => a,
            // The loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
