//! The reader of a queue's events stream (`<prefix>:<queue>:events`): one
//! dedicated connection, `XREAD BLOCK` from the last id it read, each entry
//! parsed once into an [`Entry`] and handed to the queue's follower in
//! stream order.
//!
//! After a reconnect it tells the follower whether the stream is intact
//! from its position (the same Redis server, its last id still there) or
//! where it starts again (the newest entry) after a gap. It owns only its
//! connection and position; it must not apply events or touch jobs (the
//! follower does).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn::Conn;
use super::event::read_reply;
use super::follower::Msg;
use super::Shared;

/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// Most events read at once.
const READ_COUNT: usize = 512;

/// Where the reader stands: its position and the server it read it from.
#[derive(Default)]
struct Position {
    pos: Option<String>,
    run_id: Option<String>,
}

/// Reads a queue's events stream and hands the events to its follower.
pub(super) async fn reader(shared: Arc<Shared>, queue: Arc<str>, tx: mpsc::UnboundedSender<Msg>) {
    let key = shared.conn.key(&queue, "events");
    let mut at = Position::default();
    let mut pause = Duration::from_millis(100);
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let stop = shared.stop.clone();
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect(&shared, &key, &at) => r,
        };
        let (mut c, id, continuous, start) = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Msg::Lost(e));
                let stop = shared.stop.clone();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        at.run_id = Some(id);
        at.pos = Some(start.clone());
        if tx
            .send(Msg::Ready {
                continuous,
                pos: start,
            })
            .is_err()
        {
            return;
        }
        if read(&shared, &key, &mut at, &mut c, &tx).await.is_err() {
            return;
        }
    }
}

/// A connection, the server's run id, whether the stream is intact from
/// the reader's position, and where to read from.
async fn connect(
    shared: &Shared,
    key: &str,
    at: &Position,
) -> Result<(redis::aio::MultiplexedConnection, String, bool, String), String> {
    let mut c = shared.conn.dedicated(BLOCK).await?;
    let id = Conn::run_id(&mut c).await?;
    let same_server = at.run_id.as_deref() == Some(id.as_str());
    let continuous = match (&at.pos, same_server) {
        (Some(p), true) if p == "0-0" => true,
        (Some(p), true) => {
            let v: Vec<redis::Value> = redis::cmd("XRANGE")
                .arg(key)
                .arg(p)
                .arg(p)
                .query_async(&mut c)
                .await
                .map_err(|e| format!("xrange: {e}"))?;
            !v.is_empty()
        }
        _ => false,
    };
    let start = if continuous {
        at.pos.clone().unwrap_or_else(|| "0-0".into())
    } else {
        let v: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(|e| format!("xrevrange: {e}"))?;
        v.ids
            .first()
            .map(|e| e.id.clone())
            .unwrap_or_else(|| "0-0".into())
    };
    Ok((c, id, continuous, start))
}

/// Reads the stream on `c` until Redis is lost (`Ok`: connect again) or the
/// backend stops or the follower is gone (`Err`: stop).
async fn read(
    shared: &Shared,
    key: &str,
    at: &mut Position,
    c: &mut redis::aio::MultiplexedConnection,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(), ()> {
    loop {
        let cur = at.pos.clone().unwrap_or_else(|| "0-0".into());
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(key)
            .arg(&cur);
        let read = cmd.query_async::<redis::Value>(c);
        let stop = shared.stop.clone();
        let r = tokio::select! {
            _ = stop.cancelled() => return Err(()),
            r = read => r,
        };
        match r.map_err(|e| e.to_string()).and_then(read_reply) {
            Ok(batch) => {
                if let Some(last) = batch.last() {
                    at.pos = Some(last.id.clone());
                }
                if !batch.is_empty() && tx.send(Msg::Events(batch)).is_err() {
                    return Err(());
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Lost(format!("xread: {e}")));
                return Ok(());
            }
        }
    }
}
