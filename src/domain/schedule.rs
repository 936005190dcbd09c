//! Schedules as the domain sees them: when a schedule's ticks fall (a cron
//! expression in a time zone, or a fixed interval, between an optional start
//! and end), where each tick's fire lands once jitter is added, which ticks a
//! pass must fire after downtime (catch-up), and what to do with a tick
//! while the previous fire still runs (overlap). All of it pure: the current
//! time is passed in, so the rules are tested without a clock.
//!
//! Must not: know about gRPC, SQL, the core or any engine; the schedules
//! runner (`crate::schedules`) carries out what these rules decide.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Micros;

/// The label every fire of a schedule carries: the schedule's id. The
/// stores keep it in a column of its own, so lists filter on it by index.
pub const LABEL: &str = "switchyard.schedule";

/// The longest cron expression accepted, in bytes.
pub const MAX_CRON_BYTES: usize = 256;
/// The longest time zone name accepted, in bytes.
pub const MAX_TIME_ZONE_BYTES: usize = 64;
/// The shortest interval: one second (the finest a cron expression reaches).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval, jitter or catch-up window: 366 days.
pub const MAX_SPAN: Duration = Duration::from_secs(366 * 86_400);
/// The most ticks one pass of the runner fires for one schedule; the rest
/// wait for the next pass (a long catch-up does not hold the others up).
pub const MAX_FIRES_PER_PASS: usize = 100;
/// The catch-up window when a schedule gives none.
pub const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(60);
/// The longest note on a pause, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

/// When a schedule's ticks fall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// A cron expression (5 fields, or 6 with seconds first) read in an
    /// IANA time zone.
    Cron {
        /// The expression, as given.
        expression: String,
        /// The IANA zone name (`Europe/Paris`); `UTC` when none was given.
        time_zone: String,
    },
    /// Every `interval`, counted from the schedule's start (or from the
    /// Unix epoch when it has none).
    Every {
        /// The interval, at least one second.
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
}

/// What a tick does while the schedule's previous fire is still active
/// (Temporal's overlap policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick is skipped.
    #[default]
    Skip,
    /// The tick waits until the previous fire ends; at most one waits, and
    /// a later tick while one waits is skipped.
    BufferOne,
    /// The tick fires anyway.
    AllowAll,
    /// The previous fire is cancelled and the tick fires at once.
    CancelOther,
}

/// Which missed ticks (ticks whose fire time passed while the server was
/// down or the runner behind) still fire, within the catch-up window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Every missed tick in the window fires, oldest first.
    #[default]
    All,
    /// Only the latest missed tick in the window fires.
    One,
}

/// What a schedule does, apart from its task template (which the runner
/// keeps as the edge gave it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// When ticks fall.
    pub timing: Timing,
    /// No tick before this time.
    pub start_at: Option<Micros>,
    /// No tick after this time.
    pub end_at: Option<Micros>,
    /// Each tick fires up to this much later, by an amount fixed per
    /// (schedule, tick), so a restart never moves a fire.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// While the previous fire is active.
    pub overlap: Overlap,
    /// A tick whose fire time is older than this when the runner reaches
    /// it is dropped.
    #[serde(with = "humantime_serde")]
    pub catchup_window: Duration,
    /// Which missed ticks in the window fire.
    pub catchup: CatchUp,
}

/// Parses a cron expression (5 fields, or 6 with seconds first). The error
/// says what is wrong.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    if expression.len() > MAX_CRON_BYTES {
        return Err(format!("at most {MAX_CRON_BYTES} bytes"));
    }
    if expression.trim().is_empty() {
        return Err("must not be empty".into());
    }
    croner::Cron::new(expression)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("not a cron expression: {e}"))
}

/// Parses an IANA time zone name; empty is UTC.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    if name.is_empty() {
        return Ok(chrono_tz::UTC);
    }
    if name.len() > MAX_TIME_ZONE_BYTES {
        return Err(format!("at most {MAX_TIME_ZONE_BYTES} bytes"));
    }
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| "not a known IANA time zone (such as UTC or Europe/Paris)".into())
}

/// Checks a spec: every violation as (field, what is wrong), with the field
/// named as in the API (`cron`, `time_zone`, `interval`, …).
pub fn check(spec: &ScheduleSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match &spec.timing {
        Timing::Cron {
            expression,
            time_zone,
        } => {
            let cron = parse_cron(expression).map_err(|e| out.push(("cron", e)));
            let tz = parse_time_zone(time_zone).map_err(|e| out.push(("time_zone", e)));
            if let (Ok(cron), Ok(tz)) = (cron, tz) {
                // Within four years of any time every date that exists
                // comes round (29 February included).
                if next_cron(&cron, tz, 0).is_none() {
                    out.push(("cron", "never matches a date that exists".into()));
                }
            }
        }
        Timing::Every { interval } => {
            if *interval < MIN_INTERVAL {
                out.push(("interval", "must be at least 1s".into()));
            } else if *interval > MAX_SPAN {
                out.push(("interval", "must be at most 366 days".into()));
            }
        }
    }
    if let (Some(s), Some(e)) = (spec.start_at, spec.end_at) {
        if e < s {
            out.push(("end_at", "must not be before start_at".into()));
        }
    }
    if spec.jitter > MAX_SPAN {
        out.push(("jitter", "must be at most 366 days".into()));
    }
    if spec.catchup_window > MAX_SPAN {
        out.push(("catchup_window", "must be at most 366 days".into()));
    }
    out
}

/// The first tick strictly after `after`, within the start and end; `None`
/// when there is none (past the end, or a cron that never matches again).
///
/// Cron in a time zone: a wall-clock time that a spring-forward skips fires
/// at the first instant after the gap; one that a fall-back repeats fires
/// once, at its first occurrence.
pub fn next_tick(spec: &ScheduleSpec, after: Micros) -> Option<Micros> {
    let after = match spec.start_at {
        Some(s) if s > after => s - 1,
        _ => after,
    };
    let t = match &spec.timing {
        Timing::Every { interval } => {
            let step = i64::try_from(interval.as_micros()).ok()?.max(1);
            let anchor = spec.start_at.unwrap_or(0);
            let k = (after - anchor).div_euclid(step) + 1;
            anchor.checked_add(k.checked_mul(step)?)?
        }
        Timing::Cron {
            expression,
            time_zone,
        } => next_cron(
            &parse_cron(expression).ok()?,
            parse_time_zone(time_zone).ok()?,
            after,
        )?,
    };
    match spec.end_at {
        Some(e) if t > e => None,
        _ => Some(t),
    }
}

/// The first cron match strictly after `after` (µs), in `tz`.
fn next_cron(cron: &croner::Cron, tz: chrono_tz::Tz, after: Micros) -> Option<Micros> {
    // Whole seconds: a match is a whole second, and the first one after
    // `after` is the first one after the second `after` falls in.
    let secs = after.div_euclid(1_000_000);
    let utc: DateTime<Utc> = Utc.timestamp_opt(secs, 0).single()?;
    let mut from = utc.with_timezone(&tz);
    // croner walks local wall-clock time: in a repeated hour it may answer
    // a time before `after` (its first occurrence); walk on from there.
    for _ in 0..10_000 {
        let next = cron.find_next_occurrence(&from, false).ok()?;
        let us = next.timestamp().checked_mul(1_000_000)?;
        if us > after {
            return Some(us);
        }
        from = next;
    }
    None
}

/// When tick `tick` of schedule `id` fires: the tick plus its jitter, an
/// amount in `[0, jitter]` fixed by a hash of (id, tick).
pub fn fire_at(id: &str, spec: &ScheduleSpec, tick: Micros) -> Micros {
    let span = i64::try_from(spec.jitter.as_micros()).unwrap_or(i64::MAX);
    if span == 0 {
        return tick;
    }
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(tick.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let r = u64::from_be_bytes(b) % (span as u64).saturating_add(1);
    tick.saturating_add(r as i64)
}

/// The ticks a pass at `now` must consider, after `from` (the last tick
/// already considered, or when the schedule was created, updated or
/// resumed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Ticks to fire (subject to the overlap policy), oldest first.
    pub fire: Vec<Micros>,
    /// Ticks passed over: outside the catch-up window, or collapsed by
    /// `CatchUp::One`.
    pub missed: u64,
    /// The last tick this pass considered (fired or missed); the next pass
    /// starts after it. `None`: nothing was due.
    pub through: Option<Micros>,
}

/// The ticks due at `now`: every tick after `from` whose fire time has come,
/// at most [`MAX_FIRES_PER_PASS`] of them. Ticks whose fire time is older
/// than the catch-up window are missed; with `CatchUp::One` only the latest
/// of the others fires.
pub fn due(id: &str, spec: &ScheduleSpec, from: Micros, now: Micros) -> Due {
    let window = i64::try_from(spec.catchup_window.as_micros()).unwrap_or(i64::MAX);
    let oldest = now.saturating_sub(window);
    let mut out = Due::default();
    let mut cursor = from;
    // Ticks far behind the window are skipped without walking them one by
    // one: start the walk just before the window (less the jitter, which
    // can only make a fire later).
    let jitter = i64::try_from(spec.jitter.as_micros()).unwrap_or(i64::MAX);
    let skip_to = oldest.saturating_sub(jitter).saturating_sub(1);
    if skip_to > cursor {
        if next_tick(spec, cursor).is_some_and(|t| t <= skip_to) {
            out.missed += 1;
            out.through = Some(skip_to);
        }
        cursor = skip_to;
    }
    let mut considered = 0;
    while considered < MAX_FIRES_PER_PASS * 4 {
        let Some(t) = next_tick(spec, cursor) else {
            break;
        };
        if fire_at(id, spec, t) > now {
            break;
        }
        considered += 1;
        cursor = t;
        out.through = Some(t);
        if fire_at(id, spec, t) < oldest {
            out.missed += 1;
            continue;
        }
        out.fire.push(t);
        if out.fire.len() >= MAX_FIRES_PER_PASS {
            break;
        }
    }
    if spec.catchup == CatchUp::One && out.fire.len() > 1 {
        let last = out.fire.len() - 1;
        out.missed += last as u64;
        out.fire.drain(..last);
    }
    out
}

/// What to do with one due tick, given whether the previous fire is active
/// and whether a tick is already buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Fire it now.
    Fire,
    /// Skip it.
    Skip,
    /// Keep it until the previous fire ends.
    Buffer,
    /// Cancel the previous fire, then fire it.
    CancelPreviousAndFire,
}

/// The overlap policy applied to one tick.
pub fn decide(overlap: Overlap, previous_active: bool, buffered: bool) -> Decision {
    if !previous_active {
        return Decision::Fire;
    }
    match overlap {
        Overlap::Skip => Decision::Skip,
        Overlap::BufferOne if buffered => Decision::Skip,
        Overlap::BufferOne => Decision::Buffer,
        Overlap::AllowAll => Decision::Fire,
        Overlap::CancelOther => Decision::CancelPreviousAndFire,
    }
}

/// The next `n` fire times after `now` (with jitter), for display.
pub fn upcoming(id: &str, spec: &ScheduleSpec, now: Micros, n: usize) -> Vec<Micros> {
    let mut out = Vec::with_capacity(n);
    let mut cursor = now;
    while out.len() < n {
        let Some(t) = next_tick(spec, cursor) else {
            break;
        };
        out.push(fire_at(id, spec, t));
        cursor = t;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn spec(timing: Timing) -> ScheduleSpec {
        ScheduleSpec {
            timing,
            start_at: None,
            end_at: None,
            jitter: Duration::ZERO,
            overlap: Overlap::Skip,
            catchup_window: DEFAULT_CATCHUP_WINDOW,
            catchup: CatchUp::All,
        }
    }

    fn cron(e: &str, tz: &str) -> ScheduleSpec {
        spec(Timing::Cron {
            expression: e.into(),
            time_zone: tz.into(),
        })
    }

    fn at(rfc3339: &str) -> Micros {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("a time")
            .timestamp_micros()
    }

    fn utc(us: Micros) -> String {
        Utc.timestamp_micros(us)
            .single()
            .expect("a time")
            .to_rfc3339()
    }

    #[test]
    fn bad_input_names_the_field() {
        let bad = check(&cron("61 * * * *", "Mars/Olympus"));
        let fields: Vec<_> = bad.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["cron", "time_zone"]);
        let bad = check(&spec(Timing::Every {
            interval: Duration::ZERO,
        }));
        assert_eq!(bad[0].0, "interval");
        assert!(check(&cron("*/5 * * * * *", "Europe/Paris")).is_empty());
        let started = std::time::Instant::now();
        let never = check(&cron("0 0 30 2 *", "UTC"));
        assert_eq!(never[0].0, "cron", "30 February never comes");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            check(&cron("0 0 29 2 *", "UTC")).is_empty(),
            "29 February does"
        );
        assert!(check(&cron("0 9 * * MON-FRI", "")).is_empty());
    }

    #[test]
    fn seconds_are_optional() {
        let five = cron("*/10 * * * *", "UTC");
        assert_eq!(
            next_tick(&five, at("2026-01-01T00:00:05Z")),
            Some(at("2026-01-01T00:10:00Z"))
        );
        let six = cron("*/10 * * * * *", "UTC");
        assert_eq!(
            next_tick(&six, at("2026-01-01T00:00:05Z")),
            Some(at("2026-01-01T00:00:10Z"))
        );
        // Strictly after, even on a match.
        assert_eq!(
            next_tick(&six, at("2026-01-01T00:00:10Z")),
            Some(at("2026-01-01T00:00:20Z"))
        );
    }

    #[test]
    fn a_daily_cron_follows_the_zone_across_dst() {
        // Europe/Paris springs forward on 2026-03-29 (02:00 → 03:00) and
        // falls back on 2026-10-25 (03:00 → 02:00).
        let nine = cron("0 9 * * *", "Europe/Paris");
        let before = next_tick(&nine, at("2026-03-28T12:00:00Z")).expect("a tick");
        assert_eq!(utc(before), "2026-03-29T07:00:00+00:00", "09:00 CEST");
        assert_eq!(
            utc(next_tick(&nine, at("2026-03-27T12:00:00Z")).expect("a tick")),
            "2026-03-28T08:00:00+00:00",
            "09:00 CET the day before"
        );
        assert_eq!(
            utc(next_tick(&nine, at("2026-10-25T00:00:00Z")).expect("a tick")),
            "2026-10-25T08:00:00+00:00",
            "09:00 CET after the fall-back"
        );
    }

    #[test]
    fn a_skipped_hour_fires_after_the_gap_and_a_repeated_one_once() {
        // 02:30 does not exist in Paris on 2026-03-29: it fires at 03:00 CEST.
        let half_past_two = cron("30 2 * * *", "Europe/Paris");
        assert_eq!(
            utc(next_tick(&half_past_two, at("2026-03-28T12:00:00Z")).expect("a tick")),
            "2026-03-29T01:00:00+00:00"
        );
        // 02:30 happens twice on 2026-10-25: it fires once, at 02:30 CEST
        // (00:30 UTC), then next on the 26th.
        let first = next_tick(&half_past_two, at("2026-10-24T12:00:00Z")).expect("a tick");
        assert_eq!(utc(first), "2026-10-25T00:30:00+00:00");
        let second = next_tick(&half_past_two, first).expect("a tick");
        assert_eq!(utc(second), "2026-10-26T01:30:00+00:00");
        // From inside the repeated hour (02:10 CET), never a time before it.
        let inside = at("2026-10-25T01:10:00Z");
        let next = next_tick(&cron("*/20 * * * *", "Europe/Paris"), inside).expect("a tick");
        assert!(next > inside, "{}", utc(next));
    }

    #[test]
    fn an_interval_counts_from_the_start_and_stops_at_the_end() {
        let mut every = spec(Timing::Every {
            interval: Duration::from_secs(10),
        });
        every.start_at = Some(3 * S);
        every.end_at = Some(33 * S);
        assert_eq!(next_tick(&every, 0), Some(3 * S), "the start is a tick");
        assert_eq!(next_tick(&every, 3 * S), Some(13 * S));
        assert_eq!(next_tick(&every, 23 * S), Some(33 * S), "the end is a tick");
        assert_eq!(next_tick(&every, 33 * S), None);
    }

    #[test]
    fn jitter_is_fixed_per_tick_and_bounded() {
        let mut s = cron("* * * * * *", "UTC");
        s.jitter = Duration::from_millis(500);
        for tick in (0..100).map(|i| i * S) {
            let f = fire_at("a", &s, tick);
            assert!((tick..=tick + S / 2).contains(&f));
            assert_eq!(f, fire_at("a", &s, tick), "the same every time");
        }
        let spread: std::collections::BTreeSet<_> =
            (0..100).map(|i| fire_at("a", &s, i * S) - i * S).collect();
        assert!(spread.len() > 50, "spread out");
    }

    #[test]
    fn catch_up_fires_all_or_the_latest_within_the_window() {
        let mut s = cron("* * * * * *", "UTC");
        s.catchup_window = Duration::from_secs(3);
        // Down from t=10 (last tick considered) to t=20.5: 10 ticks missed,
        // of which 18, 19, 20 are in the window.
        let d = due("a", &s, 10 * S, 20 * S + S / 2);
        assert_eq!(d.fire, vec![18 * S, 19 * S, 20 * S]);
        assert_eq!(d.through, Some(20 * S));
        assert!(d.missed >= 1);
        s.catchup = CatchUp::One;
        let d = due("a", &s, 10 * S, 20 * S + S / 2);
        assert_eq!(d.fire, vec![20 * S]);
        // On time: the one tick due.
        let d = due("a", &s, 20 * S, 21 * S);
        assert_eq!((d.fire, d.missed), (vec![21 * S], 0));
        // Nothing due yet.
        assert_eq!(due("a", &s, 21 * S, 21 * S + 10).through, None);
    }

    #[test]
    fn a_long_outage_is_not_walked_tick_by_tick() {
        let s = cron("* * * * * *", "UTC");
        let now = 400 * 86_400 * S;
        let started = std::time::Instant::now();
        let d = due("a", &s, 0, now);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            (59..=61).contains(&d.fire.len()),
            "the window's ticks only: {}",
            d.fire.len()
        );
    }

    #[test]
    fn overlap_policies() {
        use Decision::*;
        for o in [
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::AllowAll,
            Overlap::CancelOther,
        ] {
            assert_eq!(decide(o, false, false), Fire);
        }
        assert_eq!(decide(Overlap::Skip, true, false), Skip);
        assert_eq!(decide(Overlap::BufferOne, true, false), Buffer);
        assert_eq!(decide(Overlap::BufferOne, true, true), Skip);
        assert_eq!(decide(Overlap::AllowAll, true, false), Fire);
        assert_eq!(
            decide(Overlap::CancelOther, true, false),
            CancelPreviousAndFire
        );
    }
}
