//! The event hub: committed task events, fanned out live and kept in a
//! bounded history so a watcher that reconnects can resume.
//!
//! Events arrive here only after the store has committed them, in commit
//! order, so a watcher never sees a state that could be lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::domain::TaskEvent;

/// Fan-out and history of committed events.
pub struct EventHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<TaskEvent>>,
    last_seq: AtomicU64,
}

struct Ring {
    events: VecDeque<Arc<TaskEvent>>,
    cap: usize,
    /// Every event with a sequence at or below this is no longer in `events`.
    forgotten_up_to: u64,
}

/// A new subscription: what to replay, then the live receiver.
pub struct Subscription {
    /// Events to send first, in order.
    pub replay: Vec<Arc<TaskEvent>>,
    /// Set when the history no longer covers the client's position: the
    /// caller must read tasks changed in `(after, up_to]` from the store.
    pub gap: Option<Gap>,
    /// Live events; those at or below the replayed position must be skipped.
    pub rx: broadcast::Receiver<Arc<TaskEvent>>,
    /// The last sequence covered by `replay` (or the gap).
    pub position: u64,
}

/// A hole in the history.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// The oldest sequence still kept one by one (0 if none).
    pub oldest_kept: u64,
    /// Replay tasks changed up to this sequence from the store.
    pub up_to: u64,
}

impl EventHub {
    /// A hub keeping `history` events; `start_seq` is the last sequence
    /// committed before this process started (history before it is gone).
    pub fn new(history: usize, start_seq: u64) -> Self {
        let (tx, _) = broadcast::channel(history.clamp(1024, 65536));
        EventHub {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(history.min(1 << 16)),
                cap: history.max(1),
                forgotten_up_to: start_seq,
            }),
            tx,
            last_seq: AtomicU64::new(start_seq),
        }
    }

    /// The last sequence published.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Publishes committed events, in order.
    pub fn publish(&self, events: Vec<Arc<TaskEvent>>) {
        let mut ring = self.ring.lock();
        for e in events {
            if ring.events.len() >= ring.cap {
                if let Some(old) = ring.events.pop_front() {
                    ring.forgotten_up_to = old.seq;
                }
            }
            self.last_seq.store(e.seq, Ordering::Release);
            ring.events.push_back(e.clone());
            let _ = self.tx.send(e);
        }
    }

    /// Subscribes, resuming after `after` (0: live only).
    pub fn subscribe(&self, after: u64) -> Subscription {
        let ring = self.ring.lock();
        let rx = self.tx.subscribe();
        let last = self.last_seq();
        if after == 0 || after >= last {
            return Subscription {
                replay: Vec::new(),
                gap: None,
                rx,
                position: after.max(if after == 0 { last } else { after }),
            };
        }
        if after >= ring.forgotten_up_to {
            let start = ring.events.partition_point(|e| e.seq <= after);
            let replay: Vec<_> = ring.events.iter().skip(start).cloned().collect();
            return Subscription {
                replay,
                gap: None,
                rx,
                position: last,
            };
        }
        Subscription {
            replay: Vec::new(),
            gap: Some(Gap {
                oldest_kept: ring.events.front().map(|e| e.seq).unwrap_or(0),
                up_to: last,
            }),
            rx,
            position: last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn ev(seq: u64) -> Arc<TaskEvent> {
        Arc::new(TaskEvent {
            seq,
            kind: EventKind::Updated,
            time: 0,
            task: Task {
                id: TaskId::nil(),
                created_at: 0,
                spec: Arc::new(TaskSpec::new(
                    "n",
                    TaskType::Simple,
                    Target::Simple { queue: None },
                )),
                rt: TaskRuntime::new_pending(0, Source::Embedded, WaitingReason::Queued),
            },
        })
    }

    #[test]
    fn replays_from_history_and_reports_gaps() {
        let hub = EventHub::new(3, 10);
        hub.publish(vec![ev(12), ev(13), ev(15), ev(16)]);
        // 12 fell out of the ring of 3.
        let s = hub.subscribe(13);
        assert!(s.gap.is_none());
        assert_eq!(
            s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![15, 16]
        );
        let s = hub.subscribe(11);
        let gap = s.gap.expect("gap");
        assert_eq!(gap.oldest_kept, 13);
        assert_eq!(gap.up_to, 16);
        let s = hub.subscribe(16);
        assert!(s.replay.is_empty() && s.gap.is_none());
        // Events before this process started are not in the history: a gap,
        // but none for a client that had seen everything.
        let hub = EventHub::new(3, 10);
        assert!(hub.subscribe(5).gap.is_some());
        assert!(hub.subscribe(10).gap.is_none());
        hub.publish(vec![ev(11)]);
        let s = hub.subscribe(10);
        assert_eq!(s.replay.len(), 1);
    }
}
