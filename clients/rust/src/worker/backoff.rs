//! The delay between reconnect attempts: exponential from a floor to a cap,
//! with jitter so that workers cut off together do not come back together.
use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th delay (from 0) is drawn
/// from `[d/2, d]` where `d = min(floor * 2^n, cap)`, and never below `floor`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    floor: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose delays stay within `floor ..= cap`.
    pub(crate) fn new(floor: Duration, cap: Duration) -> Self {
        Self {
            floor,
            cap: cap.max(floor),
            failures: 0,
        }
    }

    /// The delay before the next attempt, counting one more failure.
    /// `jitter` is a random number in `[0, 1]`; values outside are clamped.
    pub(crate) fn next_delay(&mut self, jitter: f64) -> Duration {
        let delay = self.delay(self.failures, jitter);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Starts over from the floor (after a successful registration).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let jitter = if jitter.is_nan() {
            1.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let factor = 1u32 << failures.min(20);
        let ceiling = self.floor.saturating_mul(factor).min(self.cap);
        let half = ceiling / 2;
        (half + half.mul_f64(jitter)).max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(FLOOR, CAP);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(1.0)).collect();
        let ms: Vec<_> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
    }

    #[test]
    fn jitter_stays_within_floor_and_cap() {
        for failures in [0, 1, 2, 5, 6, 7, 30, u32::MAX] {
            for jitter in [0.0, 0.25, 0.5, 0.99, 1.0, -3.0, 7.0, f64::NAN] {
                let b = Backoff {
                    floor: FLOOR,
                    cap: CAP,
                    failures,
                };
                let d = b.delay(failures, jitter);
                assert!(d >= FLOOR && d <= CAP, "{failures} {jitter} -> {d:?}");
            }
        }
    }

    #[test]
    fn lowest_jitter_is_half_the_ceiling() {
        let b = Backoff::new(FLOOR, CAP);
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.0), Duration::from_millis(2500));
        // Never below the floor, even for the first delay.
        assert_eq!(b.delay(0, 0.0), FLOOR);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(FLOOR, CAP);
        for _ in 0..8 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), FLOOR);
    }
}
