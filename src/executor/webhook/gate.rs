//! The per-host gate: at most `webhook.per_host_concurrency` calls to one
//! `host:port` at a time, and as many waiting; a call beyond that fails at
//! once (`host_busy`), so the core offers the task again later without
//! using an attempt. And the per-host pace ([`Pacer`]): a host entry's
//! `rate_limit`, a token bucket per entry; a call reserves its token and
//! waits for it, or fails (`host_busy`) if it is due after the call's
//! timeout.
//!
//! It owns the gates (one semaphore and a waiting count per host, pruned
//! when idle past [`MAX_GATES`]) and the pacer's buckets (one per host
//! entry with a rate limit, so bounded by the configuration); it must not
//! send anything nor decide a task's outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::call::Failure;
use crate::domain::flow::{Bucket, RateLimit};
use crate::domain::{now_micros, FailureKind};

/// Host gates kept before idle ones are pruned.
const MAX_GATES: usize = 4096;

/// The calls to one host: a semaphore, and how many wait for it.
struct HostGate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Every host's gate.
pub(super) struct Gates {
    per_host: usize,
    gates: Mutex<HashMap<String, Arc<HostGate>>>,
}

impl Gates {
    pub(super) fn new(per_host: usize) -> Gates {
        Gates {
            per_host,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for one call to `host`; fails at once (`host_busy`) when the
    /// host has `per_host_concurrency` calls in flight and as many waiting.
    pub(super) async fn permit(&self, host: String) -> Result<OwnedSemaphorePermit, Failure> {
        let gate = self.gate(&host);
        if let Ok(p) = gate.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if gate.waiting.fetch_add(1, Ordering::AcqRel) >= self.per_host {
            gate.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Failure::new(
                FailureKind::HostBusy,
                true,
                format!(
                    "{host} already has {} calls in flight and {} waiting (webhook.per_host_concurrency)",
                    self.per_host, self.per_host
                ),
            ));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&gate.waiting);
        gate.sem.clone().acquire_owned().await.map_err(|_| {
            Failure::new(
                FailureKind::HostBusy,
                true,
                "the webhook executor is closing",
            )
        })
    }

    /// The host's gate, made if it has none (idle gates are pruned first
    /// when there are too many).
    fn gate(&self, host: &str) -> Arc<HostGate> {
        let mut gates = self.gates.lock();
        if let Some(g) = gates.get(host) {
            return g.clone();
        }
        if gates.len() >= MAX_GATES {
            let max = self.per_host;
            gates.retain(|_, g| Arc::strong_count(g) > 1 || g.sem.available_permits() < max);
        }
        let g = Arc::new(HostGate {
            sem: Arc::new(Semaphore::new(self.per_host)),
            waiting: AtomicUsize::new(0),
        });
        gates.insert(host.to_string(), g.clone());
        g
    }
}

/// The host entries' token buckets (`webhook.hosts.*.rate_limit`).
#[derive(Default)]
pub(super) struct Pacer {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Pacer {
    /// Waits for the next token of host entry `host` under `rule`; fails
    /// at once (`host_busy`, retryable) if it is due more than `max_wait`
    /// from now.
    pub(super) async fn wait(
        &self,
        host: &str,
        rule: &RateLimit,
        max_wait: std::time::Duration,
    ) -> Result<(), Failure> {
        let now = now_micros();
        let max = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX);
        let at = {
            let mut buckets = self.buckets.lock();
            match buckets.get_mut(host) {
                Some(b) => b.reserve(rule, now, max),
                None => buckets
                    .entry(host.to_string())
                    .or_default()
                    .reserve(rule, now, max),
            }
        };
        let at = match at {
            Ok(at) => at,
            Err(due) => {
                // Nothing was sent: the core offers the task again when
                // the token is due.
                let mut f = Failure::new(
                    FailureKind::HostBusy,
                    true,
                    format!(
                        "{host} has no token of its rate limit ({} per {}, webhook.hosts) within the call's timeout",
                        rule.rate,
                        humantime::format_duration(rule.interval)
                    ),
                );
                f.retry_after = Some(std::time::Duration::from_micros(
                    due.saturating_sub(now).max(0) as u64,
                ));
                return Err(f);
            }
        };
        if at > now {
            tokio::time::sleep(std::time::Duration::from_micros((at - now) as u64)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_host_s_calls_are_paced_and_one_past_the_timeout_is_busy() {
        // 2 a second, 2 at once: the third call waits 500 ms.
        let rule = RateLimit::new("*", 2, Duration::from_secs(1), 2, false, true).unwrap();
        let pacer = Pacer::default();
        let start = std::time::Instant::now();
        for _ in 0..3 {
            pacer
                .wait("h:80", &rule, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
        // Another host has its own bucket.
        let t = std::time::Instant::now();
        pacer.wait("other:80", &rule, Duration::ZERO).await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(400));
        // The next token of h:80 is 500 ms away: not within 10 ms.
        let e = pacer
            .wait("h:80", &rule, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("rate limit"), "{e:?}");
        assert!(e.retry_after.is_some_and(|d| d > Duration::from_millis(10)));
    }
}
