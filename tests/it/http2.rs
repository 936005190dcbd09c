//! HTTP/2 limits on the gRPC port, spoken frame by frame over a raw TCP
//! connection: a client whose calls are cancelled in a burst keeps its
//! connection (the calls of a NestJS backend share one), and a flood of
//! cancelled calls beyond the limit is still answered with GOAWAY
//! (`ENHANCE_YOUR_CALM`, the "rapid reset" guard). And a Rust client
//! connected as the client library connects keeps its connection while a
//! few thousand answers wait on it unread behind a stall.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The server's limit on calls cancelled before it took them
/// (`server::MAX_PENDING_ACCEPT_RESETS`).
const LIMIT: usize = 1024;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The preface, empty SETTINGS, then `calls` calls each opened and cancelled
/// at once (HEADERS with `:method POST`, `:scheme http`, `:path /`, all
/// from HPACK's static table, then RST_STREAM CANCEL), then a PING: one
/// write, so the server reads every call before it can take one.
fn burst(calls: usize) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    for i in 0..calls as u32 {
        let id = 2 * i + 1;
        frame(&mut out, HEADERS, END_HEADERS, id, &[0x83, 0x86, 0x84]);
        frame(&mut out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
    }
    frame(&mut out, PING, 0, 0, b"switchyd");
    out
}

/// How the server answered the burst: its PING came back, or it went away
/// with this error code.
#[derive(Debug, PartialEq)]
enum Answer {
    Pong,
    GoAway(u32),
}

async fn send_burst(addr: std::net::SocketAddr, calls: usize) -> Answer {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&burst(calls)).await.expect("write the burst");
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Whole frames from the front of `buf`.
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match kind {
                    PING if flags & ACK != 0 && payload == b"switchyd" => return Answer::Pong,
                    GOAWAY => {
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        return Answer::GoAway(code);
                    }
                    _ => {}
                }
            }
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection without GOAWAY");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer to the burst within 10 s")
}

#[tokio::test]
async fn a_burst_of_cancelled_calls_keeps_the_connection() {
    let server = TestServer::start().await;
    // 200 calls cancelled before the server took them: hyper's default
    // (20) closed the connection, and every other call on it failed.
    assert_eq!(send_burst(server.addr, 200).await, Answer::Pong);
    assert_eq!(send_burst(server.addr, LIMIT - 24).await, Answer::Pong);
    let mut client = server.client().await;
    client
        .get_metrics(switchyard::pb::GetMetricsRequest {})
        .await
        .expect("the server still serves");
}

#[tokio::test]
async fn a_flood_of_cancelled_calls_beyond_the_limit_is_sent_away() {
    let server = TestServer::start().await;
    assert_eq!(
        send_burst(server.addr, LIMIT + 100).await,
        Answer::GoAway(ENHANCE_YOUR_CALM)
    );
    let mut client = server.client().await;
    client
        .get_metrics(switchyard::pb::GetMetricsRequest {})
        .await
        .expect("the server still serves other connections");
}

/// Starts `calls` calls at once (`call` makes each), then stalls the
/// client's only thread while the answers arrive, as a machine that stalls
/// does: the connection's task then reads them all before any call's task
/// runs, and each answer's message (a small DATA frame) waits unread. How
/// many calls succeeded, or the first error.
async fn stalled_answers<F, Fut>(calls: usize, call: F) -> Result<usize, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let handles: Vec<_> = (0..calls).map(|_| tokio::spawn(call())).collect();
    // Let every call go out, then stall while the answers arrive.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut ok = 0;
    for h in handles {
        match h.await.map_err(|e| e.to_string())? {
            Ok(()) => ok += 1,
            Err(s) => return Err(format!("{s:?}")),
        }
    }
    Ok(ok)
}

/// A client whose tasks fall behind (a stalled machine) leaves answers
/// waiting unread on its connection, and h2 (0.4.16 and later) closes a
/// connection whose small DATA frames waiting unread pass half its window
/// in framing overhead, with ENHANCE_YOUR_CALM: every call on it fails.
/// With hyper's adaptive window, which starts at 64 KiB, that is about 130
/// health answers; with the fixed windows the Rust client library keeps
/// (tonic's defaults, 5 MiB), thousands. The bench used the adaptive window
/// and failed a soak's calls by the tens of thousands this way when the
/// machine stalled.
#[tokio::test]
async fn answers_waiting_unread_behind_a_stall_keep_the_connection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let server = TestServer::start().await;
    // The Rust client library itself: 3,000 statuses of a task.
    let mut client = switchyard_client::Client::connect(server.url.clone())
        .await
        .expect("connect");
    let id = client
        .schedule(simple("h2.stall", serde_json::json!({})))
        .await
        .expect("schedule")
        .task_id;
    let library = stalled_answers(3000, || {
        let (mut c, id) = (client.clone(), id.clone());
        async move { c.status(&id).await.map(|_| ()) }
    })
    .await;
    assert_eq!(library, Ok(3000));
    // The failure this guards against: the adaptive window, with a third
    // as many (health) answers.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .http2_adaptive_window(true)
        .connect()
        .await
        .expect("connect");
    let adaptive = stalled_answers(1000, || {
        let mut c = HealthClient::new(channel.clone());
        async move { c.check(HealthCheckRequest::default()).await.map(|_| ()) }
    })
    .await;
    assert!(
        adaptive
            .as_ref()
            .is_err_and(|e| e.contains("too_many_data_frames")),
        "{adaptive:?}"
    );
}
