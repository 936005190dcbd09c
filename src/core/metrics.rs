//! Counters and latency windows kept by the core for `GetMetrics`.

use std::collections::{HashMap, VecDeque};

use hdrhistogram::Histogram;

use crate::domain::{TaskState, TaskType};

/// Counts per state.
pub type StateArray = [u64; 7];

fn idx(s: TaskState) -> usize {
    (s.code() - 1) as usize
}

/// Task counts by type and by name.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// By type.
    pub by_type: HashMap<TaskType, StateArray>,
    /// By name.
    pub by_name: HashMap<String, StateArray>,
}

impl Counts {
    /// Adds `n` tasks in `state`.
    pub fn add(&mut self, t: TaskType, name: &str, state: TaskState, n: u64) {
        self.by_type.entry(t).or_default()[idx(state)] += n;
        match self.by_name.get_mut(name) {
            Some(a) => a[idx(state)] += n,
            None => {
                let mut a = StateArray::default();
                a[idx(state)] = n;
                self.by_name.insert(name.to_string(), a);
            }
        }
    }

    /// Takes one task in `state` out of the counts.
    pub fn remove(&mut self, t: TaskType, name: &str, state: TaskState) {
        if let Some(a) = self.by_type.get_mut(&t) {
            a[idx(state)] = a[idx(state)].saturating_sub(1);
        }
        if let Some(a) = self.by_name.get_mut(name) {
            a[idx(state)] = a[idx(state)].saturating_sub(1);
        }
    }

    /// Tasks of `name` in `state`.
    pub fn of_name(&self, name: &str, state: TaskState) -> u64 {
        self.by_name.get(name).map_or(0, |a| a[idx(state)])
    }

    /// Moves one task from one state to another.
    pub fn moved(&mut self, t: TaskType, name: &str, from: TaskState, to: TaskState) {
        if from == to {
            return;
        }
        let a = self.by_type.entry(t).or_default();
        a[idx(from)] = a[idx(from)].saturating_sub(1);
        a[idx(to)] += 1;
        if let Some(a) = self.by_name.get_mut(name) {
            a[idx(from)] = a[idx(from)].saturating_sub(1);
            a[idx(to)] += 1;
        }
    }

    /// Totals over all types.
    pub fn total(&self) -> StateArray {
        let mut out = StateArray::default();
        for a in self.by_type.values() {
            for (o, v) in out.iter_mut().zip(a) {
                *o += v;
            }
        }
        out
    }
}

/// Percentiles of a window, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// p50.
    pub p50: f64,
    /// p90.
    pub p90: f64,
    /// p99.
    pub p99: f64,
    /// p99.9.
    pub p999: f64,
    /// max.
    pub max: f64,
}

/// A latency histogram over the last few minutes (one histogram a minute).
pub struct Window {
    minutes: VecDeque<(i64, Histogram<u64>)>,
    keep: usize,
}

impl Window {
    /// Keeps `keep` minutes.
    pub fn new(keep: usize) -> Self {
        Window {
            minutes: VecDeque::new(),
            keep: keep.max(1),
        }
    }

    /// Records a latency in microseconds at wall time `now_us`.
    pub fn record(&mut self, now_us: i64, micros: i64) {
        let minute = now_us / 60_000_000;
        if self.minutes.back().map(|(m, _)| *m) != Some(minute) {
            let Ok(h) = Histogram::new_with_bounds(1, 3_600_000_000, 3) else {
                return;
            };
            self.minutes.push_back((minute, h));
            while self.minutes.len() > self.keep {
                self.minutes.pop_front();
            }
        }
        if let Some((_, h)) = self.minutes.back_mut() {
            let _ = h.record(micros.clamp(1, 3_600_000_000) as u64);
        }
    }

    /// The summary over the kept minutes up to `now_us`.
    pub fn summary(&self, now_us: i64) -> Summary {
        let minute = now_us / 60_000_000;
        let Ok(mut all) = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
            return Summary::default();
        };
        for (m, h) in &self.minutes {
            if minute - m < self.keep as i64 {
                let _ = all.add(h);
            }
        }
        if all.is_empty() {
            return Summary::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Summary {
            count: all.len(),
            p50: ms(all.value_at_quantile(0.5)),
            p90: ms(all.value_at_quantile(0.9)),
            p99: ms(all.value_at_quantile(0.99)),
            p999: ms(all.value_at_quantile(0.999)),
            max: ms(all.max()),
        }
    }
}

/// Finished tasks per second over the last minute.
#[derive(Default)]
pub struct Throughput {
    secs: VecDeque<(i64, u64)>,
}

impl Throughput {
    /// Counts one finished task.
    pub fn tick(&mut self, now_us: i64) {
        let s = now_us / 1_000_000;
        match self.secs.back_mut() {
            Some((sec, n)) if *sec == s => *n += 1,
            _ => {
                self.secs.push_back((s, 1));
                while self.secs.len() > 61 {
                    self.secs.pop_front();
                }
            }
        }
    }

    /// Average per second over the last 60 full seconds.
    pub fn per_sec(&self, now_us: i64) -> f64 {
        let s = now_us / 1_000_000;
        let n: u64 = self
            .secs
            .iter()
            .filter(|(sec, _)| *sec < s && s - *sec <= 60)
            .map(|(_, n)| n)
            .sum();
        n as f64 / 60.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_move_between_states() {
        let mut c = Counts::default();
        c.add(TaskType::Simple, "a", TaskState::Pending, 2);
        c.moved(
            TaskType::Simple,
            "a",
            TaskState::Pending,
            TaskState::Running,
        );
        let t = c.total();
        assert_eq!(t[0], 1);
        assert_eq!(t[1], 1);
        assert_eq!(c.by_name["a"][1], 1);
    }

    #[test]
    fn window_summarises_recent_minutes() {
        let mut w = Window::new(5);
        for i in 1..=1000 {
            w.record(0, i * 1000);
        }
        let s = w.summary(0);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 2.0, "{}", s.p50);
        assert!(w.summary(10 * 60_000_000).count == 0);
    }
}
