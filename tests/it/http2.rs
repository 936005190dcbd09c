//! HTTP/2 limits on the gRPC port, spoken frame by frame over a raw TCP
//! connection: a client whose calls are cancelled in a burst keeps its
//! connection (the calls of a NestJS backend share one), and a flood of
//! cancelled calls beyond the limit is still answered with GOAWAY
//! (`ENHANCE_YOUR_CALM`, the "rapid reset" guard). A worker's stream keeps
//! its connection when thousands of its small messages arrive at once (what
//! a paused server reads when it resumes), within a bound that still holds.
//! And a Rust client connected as the client library connects keeps its
//! connection while a few thousand answers wait on it unread behind a stall.

use std::time::Duration;

use prost::Message;
use switchyard::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const DATA: u8 = 0x0;
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
/// (`http2::MAX_PENDING_ACCEPT_RESETS`).
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
pub(crate) enum Answer {
    Pong,
    GoAway(u32),
}

pub(crate) async fn send_burst(addr: std::net::SocketAddr, calls: usize) -> Answer {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&burst(calls)).await.expect("write the burst");
    match read_until(&mut tcp, &mut Vec::new(), pong).await {
        Ok(()) => Answer::Pong,
        Err(code) => Answer::GoAway(code),
    }
}

/// Whether a frame is the answer to the bursts' PING.
fn pong(kind: u8, flags: u8, _stream: u32, payload: &[u8]) -> bool {
    kind == PING && flags & ACK != 0 && payload == b"switchyd"
}

/// Reads the server's frames (`buf` holds what was read past the last
/// whole frame) until `want` takes one: `Ok`; or until GOAWAY: its code.
/// At most 10 s.
pub(crate) async fn read_until(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut want: impl FnMut(u8, u8, u32, &[u8]) -> bool,
) -> Result<(), u32> {
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Whole frames from the front of `buf`.
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == GOAWAY {
                    return Err(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                if want(kind, flags, stream, &payload) {
                    return Ok(());
                }
            }
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection without GOAWAY");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s")
}

/// One gRPC message in a DATA frame of stream 1.
fn grpc_data(out: &mut Vec<u8>, msg: &pb::WorkerMessage) {
    let msg = msg.encode_to_vec();
    let mut body = vec![0];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    frame(out, DATA, 0, 1, &body);
}

/// A header field, HPACK "literal without indexing, new name" (short
/// strings, no Huffman).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The preface, empty SETTINGS and a `WorkerService.Work` call on stream 1
/// that registers for `name`.
fn worker_call(name: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    // `:method POST`, `:scheme http` (static table), `:path` (its name
    // from the static table), then the gRPC headers.
    let path = "/switchyard.v1.WorkerService/Work";
    let mut h = vec![0x83, 0x86, 0x04, path.len() as u8];
    h.extend_from_slice(path.as_bytes());
    literal(&mut h, "content-type", "application/grpc");
    literal(&mut h, "te", "trailers");
    frame(&mut out, HEADERS, END_HEADERS, 1, &h);
    let register = pb::worker_message::Msg::Register(pb::Register {
        worker_name: "h2-burst".into(),
        task_names: vec![name.to_string()],
        slots: 1,
        immediate_slots: 0,
    });
    grpc_data(&mut out, &wmsg(register));
    out
}

/// Opens a worker's call for `name` and, once the server has opened its
/// windows (its SETTINGS, acknowledged, and the connection's
/// WINDOW_UPDATE), sends `heartbeats` heartbeats, each a DATA frame of its
/// own (16 bytes), then a PING, in one write: as a paused server reads a
/// worker's messages that piled up meanwhile. The connection, what was
/// read past the last frame, and the answer to the PING (or the GOAWAY).
pub(crate) async fn worker_burst(
    addr: std::net::SocketAddr,
    name: &str,
    heartbeats: usize,
) -> (TcpStream, Vec<u8>, Result<(), u32>) {
    let heartbeat = wmsg(pb::worker_message::Msg::Heartbeat(pb::Heartbeat {}));
    worker_burst_of(addr, name, &heartbeat, heartbeats).await
}

/// [`worker_burst`] with `n` copies of `msg`.
async fn worker_burst_of(
    addr: std::net::SocketAddr,
    name: &str,
    msg: &pb::WorkerMessage,
    n: usize,
) -> (TcpStream, Vec<u8>, Result<(), u32>) {
    const WINDOW_UPDATE: u8 = 0x8;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&worker_call(name))
        .await
        .expect("write the call");
    let mut buf = Vec::new();
    let mut settings = 0;
    let opened = read_until(&mut tcp, &mut buf, |kind, flags, stream, _| {
        settings += usize::from(kind == SETTINGS && flags & ACK == 0);
        kind == WINDOW_UPDATE && stream == 0
    })
    .await;
    assert_eq!(opened, Ok(()), "the server opens the connection's window");
    let mut out = Vec::new();
    for _ in 0..settings {
        frame(&mut out, SETTINGS, ACK, 0, &[]);
    }
    for _ in 0..n {
        grpc_data(&mut out, msg);
    }
    frame(&mut out, PING, 0, 0, b"switchyd");
    tcp.write_all(&out).await.expect("write the burst");
    let answer = read_until(&mut tcp, &mut buf, pong).await;
    (tcp, buf, answer)
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

/// A server that pauses (a CPU-throttled container, a stalled machine)
/// finds its workers' messages piled up when it resumes, and reads them in
/// one go: each a DATA frame of its own, under 256 bytes. h2 bounds such
/// frames waiting unread on a connection by half its window, and sends the
/// connection away past it: with hyper's 1 MiB window, about 2,100
/// heartbeats (or 2,700 completions) closed a worker's connection and
/// every task it ran. 10,000 heartbeats keep the connection, and the stream
/// still receives its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_streams_burst_of_small_messages_keeps_its_connection() {
    let server = TestServer::start().await;
    let (mut tcp, mut buf, answer) = worker_burst(server.addr, "h2.burst", 10_000).await;
    assert_eq!(answer, Ok(()));
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("h2.burst", serde_json::json!({}))).await;
    assert_eq!(
        assigned(&mut tcp, &mut buf, &id).await,
        Ok(()),
        "the task reaches the worker's stream"
    );
}

/// Reads the worker's stream (1) until a message that holds `id` (its
/// assignment): `Ok`, or the GOAWAY's code.
pub(crate) async fn assigned(tcp: &mut TcpStream, buf: &mut Vec<u8>, id: &str) -> Result<(), u32> {
    read_until(tcp, buf, |kind, _, stream, payload| {
        kind == DATA && stream == 1 && payload.windows(id.len()).any(|w| w == id.as_bytes())
    })
    .await
}

/// The bound still holds: a connection whose small frames pile up far past
/// it is sent away with ENHANCE_YOUR_CALM, and the server serves the
/// others. To pile them up whatever the machine's speed, the stream's
/// reader is held: each message is refused (a progress report for a task
/// id that does not parse), the refusals wait unread (this client never
/// opens its receive window beyond 64 KiB), so the stream's loop soon waits
/// to send one and reads nothing more. 40,000 such frames of 10 bytes are
/// more than twice what the window allows (about 17,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_small_messages_beyond_the_bound_is_sent_away() {
    let server = TestServer::start().await;
    let refused = wmsg(pb::worker_message::Msg::Progress(pb::Progress {
        task_id: "x".into(),
        ..Default::default()
    }));
    let (_, _, answer) = worker_burst_of(server.addr, "h2.flood", &refused, 40_000).await;
    assert_eq!(answer, Err(ENHANCE_YOUR_CALM));
    let mut client = server.client().await;
    client
        .get_metrics(switchyard::pb::GetMetricsRequest {})
        .await
        .expect("the server still serves other connections");
}
