//! A key's limits: its rate (a token bucket per key, in this replica's
//! memory) and the largest payload it may send.
//!
//! Owns: the bucket's arithmetic and the [`Limited`] refusal. Must not:
//! know gRPC or HTTP (the edges map [`Limited`] to RESOURCE_EXHAUSTED, or
//! to 429, with the retry delay).
//!
//! The bucket holds one second's worth of calls (at least one), the
//! classic token bucket of a rate in calls per second with a burst of the
//! same size (as Envoy's and nginx's `limit_req` defaults are a second's
//! worth): a key that was idle may make that many calls at once, then
//! `rate` a second.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The lowest rate a key may have, in calls per second (one call per 100 s).
pub const MIN_RPS: f64 = 0.01;
/// The highest rate a key may have, in calls per second.
pub const MAX_RPS: f64 = 100_000.0;
/// The largest payload limit a key may have (1 GiB).
pub const MAX_PAYLOAD_BYTES: i64 = 1 << 30;

/// Why a call is over a key's limit (RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Limited {
    /// Over the rate: retry after the delay.
    #[error(
        "key {key}: over its limit max_requests_per_second = {rps}; retry in {} ms",
        .retry_after.as_millis().max(1)
    )]
    Rate {
        /// The key's id.
        key: String,
        /// Its rate.
        rps: f64,
        /// When the next call fits.
        retry_after: Duration,
    },
    /// A payload over the key's limit: retrying the same call never helps.
    #[error("key {key}: a payload of {got} bytes is over its limit max_payload_bytes = {limit}")]
    Payload {
        /// The key's id.
        key: String,
        /// Its limit.
        limit: u64,
        /// The payload's size.
        got: u64,
    },
}

impl Limited {
    /// The limit's name, as in the proto.
    pub fn limit(&self) -> &'static str {
        match self {
            Limited::Rate { .. } => "max_requests_per_second",
            Limited::Payload { .. } => "max_payload_bytes",
        }
    }

    /// The key's id.
    pub fn key(&self) -> &str {
        match self {
            Limited::Rate { key, .. } | Limited::Payload { key, .. } => key,
        }
    }

    /// When a retry may succeed (`None`: it never will).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Limited::Rate { retry_after, .. } => Some(*retry_after),
            Limited::Payload { .. } => None,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket for `rate` calls a second (burst: one second's worth,
    /// at least one call).
    pub fn new(rate: f64) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes one token at `now`: `Err` is the wait until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        let tokens = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now.max(s.1);
        if tokens >= 1.0 {
            s.0 = tokens - 1.0;
            Ok(())
        } else {
            s.0 = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_a_second_then_keeps_the_rate() {
        let b = Bucket::new(10.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // A tenth of a second later one more call fits, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(t1).is_ok());
        assert!(b.take(t1).is_err());
        // Idle for long, it holds no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(b.take(t2).is_ok());
        }
        assert!(b.take(t2).is_err());
    }

    #[test]
    fn a_slow_rate_bursts_one_call() {
        let b = Bucket::new(0.5);
        let t0 = Instant::now();
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2));
        assert!(b.take(t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn refusals_name_the_limit() {
        let r = Limited::Rate {
            key: "key_1".into(),
            rps: 2.0,
            retry_after: Duration::from_millis(400),
        };
        assert_eq!(r.limit(), "max_requests_per_second");
        assert!(r.to_string().contains("max_requests_per_second = 2"));
        assert!(r.to_string().contains("retry in 400 ms"));
        let p = Limited::Payload {
            key: "key_1".into(),
            limit: 10,
            got: 11,
        };
        assert_eq!(p.retry_after(), None);
        assert!(p.to_string().contains("max_payload_bytes = 10"));
    }
}
