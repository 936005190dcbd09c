//! One watch, for both edges (`WatchTasks` on gRPC, the admin API's event
//! stream): the snapshot or the replay after a gap (paged by the core), then
//! live events, resubscribing from its position when it falls behind. It
//! owns the order and deduplication of what a watcher receives; the core
//! owns the events and their history.

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::Status;

use crate::app::convert;
use crate::core::Core;
use crate::domain::TaskFilter;
use crate::pb;
use crate::pb::watch_tasks_response::Item;

/// Where a watch sends what it produces; it ends when the receiver is gone.
pub type Tx = mpsc::Sender<Result<pb::WatchTasksResponse, Status>>;

async fn send(tx: &Tx, item: Item) -> bool {
    tx.send(Ok(pb::WatchTasksResponse { item: Some(item) }))
        .await
        .is_ok()
}

/// Drives one watch: snapshot or replay, then live events; resubscribes from
/// its position when it falls behind. Returns when the client goes away.
pub async fn watch(core: Core, filter: TaskFilter, after: u64, snapshot: bool, tx: Tx) {
    let mut pos = after;
    let mut first = true;
    loop {
        let mut sub = core.events().subscribe(pos);
        if first && snapshot && after == 0 {
            for t in core.active_tasks(&filter) {
                if !send(&tx, Item::Event(convert::snapshot_event(&t))).await {
                    return;
                }
            }
        }
        if let Some(gap) = sub.gap {
            if !send(
                &tx,
                Item::Gap(pb::WatchGap {
                    oldest_kept: gap.oldest_kept,
                }),
            )
            .await
            {
                return;
            }
            let mut from = pos;
            loop {
                let page = match core.changed_since(from, gap.up_to, &filter).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("replay failed: {e}"))))
                            .await;
                        return;
                    }
                };
                let Some(last) = page.last().map(|t| t.rt.seq) else {
                    break;
                };
                for t in &page {
                    if !send(&tx, Item::Event(convert::snapshot_event(t))).await {
                        return;
                    }
                }
                from = last;
            }
            pos = gap.up_to;
        }
        for e in sub.replay.drain(..) {
            if filter.matches(&e.task) && !send(&tx, Item::Event(convert::event(&e))).await {
                return;
            }
            pos = e.seq;
        }
        pos = pos.max(sub.position);
        if first {
            if !send(&tx, Item::Live(pb::WatchLive { sequence: pos })).await {
                return;
            }
            first = false;
        }
        loop {
            match sub.rx.recv().await {
                Ok(e) => {
                    if e.seq <= pos {
                        continue;
                    }
                    pos = e.seq;
                    if filter.matches(&e.task) && !send(&tx, Item::Event(convert::event(&e))).await
                    {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        pos,
                        "watcher fell behind; resuming from history"
                    );
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
