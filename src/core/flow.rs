//! Flow control in the core: concurrency keys, fairness between keys,
//! rate limits and paused names. One rule for every engine: a task held
//! here is never handed to a worker, an in-process executor or a backend.
//!
//! Owns: the running count of each concurrency key, each queue's
//! round-robin of keys ([`Fair`]), the lines parked on their key's limit,
//! the tasks held by a pause, the rate limits' token buckets and the tasks
//! they hold, and what a held task's status says.
//!
//! Rate limits. A token is taken when a task is about to be handed out
//! (a worker or an engine has room for it), so starts, not schedules, are
//! counted. A task that finds its bucket empty leaves its queue for a
//! timer at the time its token is due; the tasks a bucket holds wake one
//! token apart (the bucket's `wake`), so a backlog costs one wake-up per
//! token, not one per task. A server without rate limits checks one empty
//! vector per dispatch.
//! Must not: write anything, or change a task's state (a held task stays
//! PENDING and in the core's memory; the rules themselves are kept by the
//! `flow` module above).
//!
//! How a queue's tasks are ordered. Tasks without a key stay in the
//! queue's own ordered set (lane, priority, age), untouched. Tasks with a
//! key wait in their key's *line* (lane, priority, age); each line that
//! may start a task has its head in the queue's `heads`, ordered by lane,
//! priority, then *round*: a line's next head gets the round after the
//! one last dispatched, so keys of one lane and priority take turns
//! (round-robin) whatever their backlog, while the immediate lane and
//! priority still win across keys. A key of weight `w` (a policy's
//! `weights`) keeps the current round for `w` of its heads
//! (`Line::turns`). Tasks without a key take their turn as one more
//! line. A line whose key runs its limit has no head: it is
//! parked, and is given one again when a task of the key releases its
//! slot.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::domain::flow::{Bucket, FlowRules, Hold, RateLimit};
use crate::domain::*;

use super::queries::{KeyPending, QueueFlowInfo, RateTokens};
use super::state::{Active, QKey, State};

/// The most keys per queue in the metrics' top keys.
pub const TOP_KEYS: usize = 5;
/// The most queues in the metrics' flow figures.
pub const MAX_FLOW_QUEUES: usize = 100;
/// The most rate limits per queue in the metrics' flow figures.
pub const MAX_QUEUE_RATE_LIMITS: usize = 10;

/// A line's head in its queue's round-robin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Head {
    pub(super) lane: u8,
    pub(super) prio: Reverse<i32>,
    pub(super) round: u64,
    /// Insertion order, unique: ties of round go to the line that waited
    /// longer.
    pub(super) stamp: u64,
    /// The task's place in its line.
    pub(super) lk: LKey,
    pub(super) ckey: Arc<str>,
}

/// A task's place in its line: first the tasks that keep a slot of the
/// key for themselves (they were running when the server stopped, see
/// `Active::reserved`), then lane, priority and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LKey {
    /// `false` for a task with a reserved slot.
    pub(super) fresh: bool,
    pub(super) qk: QKey,
}

/// The ready tasks of one concurrency key in one queue.
#[derive(Default)]
pub(super) struct Line {
    pub(super) waiting: BTreeSet<LKey>,
    pub(super) head: Option<Head>,
    /// The round of the line's last dispatched head, and how many of its
    /// heads were dispatched in that round (a key of weight `w` has `w`
    /// turns per round).
    pub(super) turns: Option<(u64, u32)>,
}

/// A queue's keyed tasks; made when its first keyed task comes.
#[derive(Default)]
pub(super) struct Fair {
    pub(super) lines: HashMap<Arc<str>, Line>,
    pub(super) heads: BTreeSet<Head>,
    /// The round of the last head dispatched.
    pub(super) round: u64,
    /// The round of the tasks without a key (one more line).
    pub(super) plain_round: u64,
    pub(super) stamp: u64,
}

/// What a queue dispatches next.
pub(super) enum Pick {
    Plain(QKey),
    Keyed(Head),
}

impl Pick {
    pub(super) fn lane(&self) -> u8 {
        match self {
            Pick::Plain(q) => q.lane,
            Pick::Keyed(h) => h.lane,
        }
    }
}

impl Fair {
    /// The next task: the better of the plain head and the keyed heads'
    /// first, by lane, priority, then round (plain first on a tie).
    pub(super) fn pick(&self, plain: Option<QKey>) -> Option<Pick> {
        let keyed = self.heads.first();
        match (plain, keyed) {
            (None, None) => None,
            (Some(p), None) => Some(Pick::Plain(p)),
            (None, Some(h)) => Some(Pick::Keyed(h.clone())),
            (Some(p), Some(h)) => {
                if (p.lane, p.prio, self.plain_round) <= (h.lane, h.prio, h.round) {
                    Some(Pick::Plain(p))
                } else {
                    Some(Pick::Keyed(h.clone()))
                }
            }
        }
    }

    /// A task without a key was dispatched: that line's turn moves on.
    pub(super) fn plain_dispatched(&mut self) {
        self.round = self.round.max(self.plain_round);
        self.plain_round = self.round + 1;
    }

    /// A line's next head: in the next round, or in the current one while
    /// the line (of weight `weight`) has turns left in it.
    fn new_head(&mut self, lk: LKey, ckey: &Arc<str>, weight: u32) -> Head {
        self.stamp += 1;
        let again = self
            .lines
            .get(ckey)
            .and_then(|l| l.turns)
            .is_some_and(|(round, used)| round == self.round && used < weight);
        Head {
            lane: lk.qk.lane,
            prio: lk.qk.prio,
            round: if again { self.round } else { self.round + 1 },
            stamp: self.stamp,
            lk,
            ckey: ckey.clone(),
        }
    }
}

/// The core's flow-control state.
#[derive(Default)]
pub(super) struct Flow {
    pub(super) rules: Arc<FlowRules>,
    /// Tasks of each key holding a slot (running, or handed to a backend).
    pub(super) running: HashMap<Arc<str>, u32>,
    /// The queues whose line of a key is parked on the key's limit.
    pub(super) parked: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Ready tasks held because their name or queue is paused.
    pub(super) held: HashSet<TaskId>,
    /// The buckets of each rate limit, in the order of
    /// `rules.rate_limits`.
    pub(super) rates: Vec<Rates>,
    /// Tasks held on a timer by a rate limit: when they wake, and the
    /// rate limit's place in `rules.rate_limits`.
    pub(super) rate_held: HashMap<TaskId, (Micros, usize)>,
}

/// A token bucket and the wake-up of the last task it held.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Slot {
    pub(super) bucket: Bucket,
    /// The wake-up given to the last task this bucket held; the next one
    /// wakes a token later.
    pub(super) wake: Micros,
}

/// The buckets of one rate limit.
pub(super) struct Rates {
    pub(super) rule: RateLimit,
    /// The bucket of a rate limit without `per_key` (and of tasks without
    /// a key under one with it).
    pub(super) shared: Slot,
    /// One bucket per concurrency key (`per_key`); full ones are dropped
    /// now and then.
    pub(super) keys: HashMap<Arc<str>, Slot>,
    /// The number of keys at which full buckets are dropped next.
    pub(super) prune_at: usize,
}

impl Rates {
    fn new(rule: RateLimit) -> Rates {
        Rates {
            rule,
            shared: Slot::default(),
            keys: HashMap::new(),
            prune_at: 1024,
        }
    }

    /// The tokens left, for metrics: the shared bucket's, or for a rate
    /// limit per key the emptiest key's (a full bucket if none).
    pub(super) fn tokens(&self, now: Micros) -> f64 {
        let shared = self.shared.bucket.tokens(&self.rule, now);
        if !self.rule.per_key {
            return shared;
        }
        self.keys
            .values()
            .map(|s| s.bucket.tokens(&self.rule, now))
            .fold(shared, f64::min)
    }
}

impl Flow {
    pub(super) fn running_of(&self, ckey: &str) -> u32 {
        self.running.get(ckey).copied().unwrap_or(0)
    }

    /// Whether a task of `ckey` with this spec may start now.
    fn has_room(&self, ckey: &str, spec: &TaskSpec) -> bool {
        match self.rules.limit_for(spec) {
            None => true,
            Some(l) => self.running_of(ckey) < l.limit,
        }
    }

    fn park(&mut self, ckey: &Arc<str>, queue: &Arc<str>) {
        let qs = self.parked.entry(ckey.clone()).or_default();
        if !qs.contains(queue) {
            qs.push(queue.clone());
        }
    }
}

impl State {
    /// Takes a token for task `id`, which is about to be handed out and is
    /// out of its queue already: `false` if it may start; `true` if its
    /// rate limit has no token now, and the task is then held on a timer
    /// until its token is due.
    pub(super) fn rate_blocked(&mut self, id: TaskId) -> bool {
        if self.flow.rules.rate_limits.is_empty() {
            return false;
        }
        let now = self.now;
        let Some(a) = self.tasks.get_mut(&id) else {
            return false;
        };
        let Some((i, _)) = self.flow.rules.rate_for(&a.task.spec) else {
            return false;
        };
        let Some(rs) = self.flow.rates.get_mut(i) else {
            return false;
        };
        let slot = match a.task.spec.concurrency_key().filter(|_| rs.rule.per_key) {
            None => &mut rs.shared,
            Some(k) => rs.keys.entry(Arc::from(k)).or_default(),
        };
        let next = match slot.bucket.take(&rs.rule, now) {
            Ok(()) => {
                if rs.keys.len() >= rs.prune_at {
                    rs.keys.retain(|_, s| !s.bucket.full(now) || s.wake > now);
                    rs.prune_at = (rs.keys.len() * 2).max(1024);
                }
                return false;
            }
            Err(next) => next,
        };
        // Held tasks wake one token apart, after the ones held before.
        let step = rs.rule.emission_micros();
        let wake = if slot.wake >= next {
            (slot.wake as f64 + step).ceil() as Micros
        } else {
            next
        };
        slot.wake = wake;
        a.queued = None;
        a.timer = Some(wake);
        let key = a.key.clone();
        self.timers.insert((wake, id));
        self.queue(&key).scheduled += 1;
        self.flow.rate_held.insert(id, (wake, i));
        true
    }

    /// The tokens left per rate limit (see [`Rates::tokens`]), by the
    /// rate limit's pattern qualified by its namespace (`pattern@ns`
    /// outside `default`, see `domain::namespace::qualify`).
    pub(super) fn rate_tokens(&self, now: Micros) -> Vec<(String, f64)> {
        self.flow
            .rates
            .iter()
            .map(|r| (qualified_pattern(&r.rule), r.tokens(now)))
            .collect()
    }

    /// Puts a ready keyed task in its line (the head if it comes first and
    /// the key has room).
    pub(super) fn enter_line(&mut self, queue: &Arc<str>, ckey: &Arc<str>, lk: LKey) {
        let q = self.queue(queue);
        let fair = q.fair.get_or_insert_with(Default::default);
        let ckey = match fair.lines.get_key_value(ckey) {
            Some((k, _)) => k.clone(),
            None => ckey.clone(),
        };
        let line = fair.lines.entry(ckey.clone()).or_default();
        line.waiting.insert(lk);
        match &line.head {
            Some(h) if lk < h.lk => {
                // It comes before the head: it takes the head's place (and
                // turn).
                let old = h.clone();
                fair.heads.remove(&old);
                let head = Head {
                    lane: lk.qk.lane,
                    prio: lk.qk.prio,
                    lk,
                    ..old
                };
                fair.heads.insert(head.clone());
                if let Some(line) = fair.lines.get_mut(&ckey) {
                    line.head = Some(head);
                }
                // A new head (maybe of the immediate lane) may find a slot
                // the old one could not.
                self.dirty_keys.push(queue.clone());
            }
            Some(_) => {}
            None => self.refill_line(queue, &ckey),
        }
    }

    /// Takes a keyed task out of its line (and the heads, if it led).
    pub(super) fn leave_line(&mut self, queue: &Arc<str>, ckey: &str, lk: &LKey) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let Some(fair) = q.fair.as_mut() else {
            return;
        };
        let Some(line) = fair.lines.get_mut(ckey) else {
            return;
        };
        line.waiting.remove(lk);
        let led = line.head.as_ref().is_some_and(|h| h.lk.qk.id == lk.qk.id);
        if led {
            if let Some(h) = line.head.take() {
                fair.heads.remove(&h);
            }
        }
        if line.waiting.is_empty() {
            fair.lines.remove(ckey);
            return;
        }
        if led {
            let ckey: Arc<str> = Arc::from(ckey);
            self.refill_line(queue, &ckey);
        }
    }

    /// Gives a line without a head its next task as head, if its key has
    /// room; else parks it on the key.
    pub(super) fn refill_line(&mut self, queue: &Arc<str>, ckey: &Arc<str>) {
        let Some(first) = self
            .queues
            .get(queue)
            .and_then(|q| q.fair.as_ref())
            .and_then(|f| f.lines.get(ckey))
            .filter(|l| l.head.is_none())
            .and_then(|l| l.waiting.first().copied())
        else {
            return;
        };
        let room = !first.fresh
            || match self.tasks.get(&first.qk.id) {
                Some(a) => self.flow.has_room(ckey, &a.task.spec),
                None => true,
            };
        if !room {
            self.flow.park(ckey, queue);
            return;
        }
        let weight = self
            .tasks
            .get(&first.qk.id)
            .map_or(1, |a| self.flow.rules.weight_for(&a.task.spec, ckey));
        let Some(fair) = self.queues.get_mut(queue).and_then(|q| q.fair.as_mut()) else {
            return;
        };
        let head = fair.new_head(first, ckey, weight);
        fair.heads.insert(head.clone());
        if let Some(line) = fair.lines.get_mut(ckey) {
            line.head = Some(head);
        }
        self.dirty_keys.push(queue.clone());
    }

    /// Takes the head `h` of `queue` for dispatch: `Some` if its key still
    /// has room (the line gets its next head, or is parked), `None` if the
    /// key ran out of room meanwhile (the line is parked).
    pub(super) fn take_head(&mut self, queue: &Arc<str>, h: &Head) -> Option<TaskId> {
        let room = !h.lk.fresh
            || match self.tasks.get(&h.lk.qk.id) {
                Some(a) => self.flow.has_room(&h.ckey, &a.task.spec),
                None => true,
            };
        let fair = self.queues.get_mut(queue)?.fair.as_mut()?;
        fair.heads.remove(h);
        let line = fair.lines.get_mut(&h.ckey)?;
        line.head = None;
        if !room {
            self.flow.park(&h.ckey, queue);
            return None;
        }
        line.waiting.remove(&h.lk);
        line.turns = match line.turns {
            Some((round, used)) if round == h.round => Some((round, used + 1)),
            _ => Some((h.round, 1)),
        };
        fair.round = fair.round.max(h.round);
        if line.waiting.is_empty() {
            fair.lines.remove(&h.ckey);
        }
        Some(h.lk.qk.id)
    }

    /// Keeps a slot of its key for a task that was running when the server
    /// stopped (recovery): it goes first in its line and starts whatever
    /// the count, so the tasks that were running count against the limit
    /// until they are handed out again, and none of the key's waiting
    /// tasks starts in their place.
    pub(super) fn reserve(&mut self, id: TaskId) {
        let Some(ckey) = self
            .tasks
            .get(&id)
            .filter(|a| !a.reserved)
            .and_then(|a| a.task.spec.concurrency_key().map(Box::<str>::from))
        else {
            return;
        };
        self.unplace(id);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.reserved = true;
        }
        match self.flow.running.get_mut(&*ckey) {
            Some(n) => *n += 1,
            None => {
                self.flow.running.insert(Arc::from(&*ckey), 1);
            }
        }
        self.place(id, self.now);
    }

    /// Gives back the reserved slot of a task that ends before it was
    /// handed out again.
    pub(super) fn unreserve(&mut self, id: TaskId) {
        let Some(a) = self.tasks.get_mut(&id).filter(|a| a.reserved) else {
            return;
        };
        a.reserved = false;
        if let Some(ckey) = a.task.spec.concurrency_key().map(Box::<str>::from) {
            self.key_released(&ckey);
        }
    }

    /// A task of `ckey` released its slot: the lines parked on the key
    /// may go on.
    pub(super) fn key_released(&mut self, ckey: &str) {
        if let Some(n) = self.flow.running.get_mut(ckey) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.flow.running.remove(ckey);
            }
        }
        if let Some((ckey, queues)) = self.flow.parked.remove_entry(ckey) {
            for q in queues {
                self.refill_line(&q, &ckey);
            }
        }
    }

    /// Replaces the rules and puts every ready task where they now say:
    /// held or in its queue, lines refilled with the new limits.
    pub(super) fn set_flow_rules(&mut self, rules: Arc<FlowRules>) {
        if *rules == *self.flow.rules {
            // Nothing changes (a server without rules at start-up): no walk
            // of the active tasks.
            return;
        }
        // Tasks without a key are placed again only if what is paused
        // changed.
        let paused_changed = rules.paused != self.flow.rules.paused;
        let rates_changed = rules.rate_limits != self.flow.rules.rate_limits;
        if rates_changed {
            // A rate limit that stays as it was keeps its buckets.
            let mut old = std::mem::take(&mut self.flow.rates);
            self.flow.rates = rules
                .rate_limits
                .iter()
                .map(|r| {
                    match old.iter().position(|o| {
                        o.rule.pattern == r.pattern
                            && o.rule.namespace == r.namespace
                            && o.rule.same_bucket(r)
                    }) {
                        Some(at) => {
                            let mut kept = old.swap_remove(at);
                            kept.rule = r.clone();
                            kept
                        }
                        None => Rates::new(r.clone()),
                    }
                })
                .collect();
        }
        self.flow.rules = rules;
        self.flow.parked.clear();
        let mut ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, a)| {
                a.held
                    || (a.queued.is_some()
                        && (paused_changed || a.task.spec.concurrency_key.is_some()))
            })
            .map(|(id, _)| *id)
            .collect();
        // The tasks a rate limit holds are queued again and take a token
        // under the new rules (their timer is given up).
        if rates_changed {
            ids.extend(self.flow.rate_held.keys().copied());
        }
        for id in ids {
            self.unplace(id);
            self.place(id, self.now);
        }
        for q in self.queues.values_mut() {
            if q.fair.as_ref().is_some_and(|f| f.lines.is_empty()) {
                q.fair = None;
            }
        }
    }

    /// Why a held task waits, with the rule's figures; `None` if no rule
    /// holds it.
    pub(super) fn hold_of(&self, a: &Active, ahead: bool) -> Option<(WaitingReason, Hold)> {
        if a.task.rt.state != TaskState::Pending {
            return None;
        }
        // Only a task on a timer may be held by a rate limit (no lookup
        // on a server without rate limits).
        let rate_held = if a.timer.is_some() && !self.flow.rate_held.is_empty() {
            self.flow.rate_held.get(&a.task.id).copied()
        } else {
            None
        };
        if let Some((until, i)) = rate_held {
            let r = self.flow.rules.rate_limits.get(i)?;
            return Some((
                WaitingReason::RateLimited,
                Hold {
                    rule: r.pattern.clone(),
                    key: a
                        .task
                        .spec
                        .concurrency_key()
                        .filter(|_| r.per_key)
                        .map(String::from),
                    next_start: Some(until),
                    rate: Some((
                        r.rate,
                        r.interval.as_millis().min(u128::from(u64::MAX)) as u64,
                        r.burst,
                    )),
                    ..Hold::default()
                },
            ));
        }
        if a.held {
            let rule = self.flow.rules.paused_by(&a.task.spec)?;
            return Some((
                WaitingReason::QueuePaused,
                Hold {
                    rule: rule.to_string(),
                    ..Hold::default()
                },
            ));
        }
        if a.reserved {
            // It starts whatever the count: nothing holds it.
            return None;
        }
        let ckey = a.task.spec.concurrency_key()?;
        let qk = a.queued?;
        let limit = self.flow.rules.limit_for(&a.task.spec)?;
        let running = self.flow.running_of(ckey);
        if running < limit.limit {
            return None;
        }
        let ahead = if ahead {
            self.queues
                .get(&a.key)
                .and_then(|q| q.fair.as_ref())
                .and_then(|f| f.lines.get(ckey))
                .map(|l| {
                    let lk = LKey {
                        fresh: !a.reserved,
                        qk,
                    };
                    l.waiting.range(..lk).count() as u64
                })
        } else {
            None
        };
        Some((
            WaitingReason::ConcurrencyLimit,
            Hold {
                rule: limit.rule.unwrap_or("default").to_string(),
                key: Some(ckey.to_string()),
                limit: limit.limit,
                running,
                ahead,
                ..Hold::default()
            },
        ))
    }

    /// Ready tasks held, per rule: `concurrency_limit` (in lines parked on
    /// their key's limit) and `queue_paused`.
    pub(super) fn held_counts(&self) -> (u64, u64) {
        let mut limited = 0u64;
        for (ckey, queues) in &self.flow.parked {
            for q in queues {
                if let Some(l) = self
                    .queues
                    .get(q)
                    .and_then(|q| q.fair.as_ref())
                    .and_then(|f| f.lines.get(ckey))
                    .filter(|l| l.head.is_none())
                {
                    limited += l.waiting.len() as u64;
                }
            }
        }
        (limited, self.flow.held.len() as u64)
    }

    /// Flow control per queue, for the metrics: each queue with keyed
    /// ready tasks or tasks held by a pause or a rate limit, its
    /// [`TOP_KEYS`] keys with the most ready tasks, the tasks each rule
    /// holds, and the rate limits that apply to it with their tokens at
    /// `now` (those holding any of its tasks and those whose pattern
    /// matches its name, at most [`MAX_QUEUE_RATE_LIMITS`]); at most
    /// [`MAX_FLOW_QUEUES`] queues (those with the most such tasks), by
    /// name. One walk of the lines (O(keys)), no sort of all keys.
    pub(super) fn queue_flow(&self, now: Micros) -> Vec<QueueFlowInfo> {
        let mut out: HashMap<Arc<str>, (QueueFlowInfo, u64)> = HashMap::new();
        for (name, q) in &self.queues {
            let Some(fair) = q.fair.as_ref().filter(|f| !f.lines.is_empty()) else {
                continue;
            };
            let mut keys: Vec<(&Arc<str>, u64)> = fair
                .lines
                .iter()
                .map(|(k, l)| (k, l.waiting.len() as u64))
                .collect();
            let keyed: u64 = keys.iter().map(|(_, n)| n).sum();
            let most_first = |a: &(&Arc<str>, u64), b: &(&Arc<str>, u64)| {
                b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
            };
            if keys.len() > TOP_KEYS {
                keys.select_nth_unstable_by(TOP_KEYS - 1, most_first);
                keys.truncate(TOP_KEYS);
            }
            keys.sort_by(most_first);
            let held_limit = fair
                .lines
                .iter()
                .filter(|(k, l)| {
                    l.head.is_none()
                        && self
                            .flow
                            .parked
                            .get(*k)
                            .is_some_and(|qs| qs.iter().any(|x| x == name))
                })
                .map(|(_, l)| l.waiting.len() as u64)
                .sum();
            let info = QueueFlowInfo {
                name: name.to_string(),
                top_keys: keys
                    .into_iter()
                    .map(|(k, n)| KeyPending {
                        key: crate::domain::namespace::unqualify_key(k).to_string(),
                        pending: n,
                        running: self.flow.running_of(k),
                    })
                    .collect(),
                held_limit,
                ..QueueFlowInfo::default()
            };
            out.insert(name.clone(), (info, keyed));
        }
        for id in &self.flow.held {
            let Some(a) = self.tasks.get(id) else {
                continue;
            };
            let e = queue_entry(&mut out, &a.key);
            e.0.held_paused += 1;
            e.1 += 1;
        }
        // The rate limits holding each queue's tasks, by their place in
        // the rules.
        let mut rate_of: HashMap<Arc<str>, BTreeSet<usize>> = HashMap::new();
        for (id, (_, i)) in &self.flow.rate_held {
            let Some(a) = self.tasks.get(id) else {
                continue;
            };
            let e = queue_entry(&mut out, &a.key);
            e.0.held_rate += 1;
            e.1 += 1;
            rate_of.entry(a.key.clone()).or_default().insert(*i);
        }
        let mut all: Vec<(QueueFlowInfo, u64)> = out.into_values().collect();
        let most = |a: &(QueueFlowInfo, u64), b: &(QueueFlowInfo, u64)| {
            b.1.cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name))
        };
        if all.len() > MAX_FLOW_QUEUES {
            all.select_nth_unstable_by(MAX_FLOW_QUEUES - 1, most);
            all.truncate(MAX_FLOW_QUEUES);
        }
        let mut all: Vec<QueueFlowInfo> = all.into_iter().map(|(i, _)| i).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        if !self.flow.rates.is_empty() {
            for info in &mut all {
                let mut at = rate_of.remove(info.name.as_str()).unwrap_or_default();
                at.extend(
                    self.flow
                        .rates
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.rule.applies_to(&info.name))
                        .map(|(i, _)| i),
                );
                info.rate_limits = at
                    .into_iter()
                    .filter_map(|i| self.flow.rates.get(i))
                    .take(MAX_QUEUE_RATE_LIMITS)
                    .map(|r| RateTokens {
                        pattern: qualified_pattern(&r.rule),
                        tokens: r.tokens(now),
                        rate: r.rule.rate,
                        interval: r.rule.interval,
                        burst: r.rule.burst,
                        per_key: r.rule.per_key,
                    })
                    .collect();
            }
        }
        all
    }

    /// Pending tasks held by a rate limit.
    pub(super) fn rate_held_count(&self) -> u64 {
        self.flow.rate_held.len() as u64
    }
}

impl super::Core {
    /// Replaces the flow rules (concurrency policies, the default limit,
    /// paused names): every ready task is put where they now say, and
    /// what they no longer hold is dispatched.
    pub fn set_flow_rules(&self, rules: FlowRules) {
        let rules = Arc::new(rules);
        let told = rules.clone();
        self.with_state(|st| st.set_flow_rules(rules));
        self.inner.flow_rules.send_if_modified(|v| {
            let changed = **v != *told;
            if changed {
                *v = told;
            }
            changed
        });
    }

    /// The flow rules in force, now and as they change: for an engine that
    /// mirrors a rule in its own terms (the BullMQ backend pauses a paused
    /// queue in Redis too). The core holds the tasks whatever the engine
    /// does.
    pub fn watch_flow_rules(&self) -> tokio::sync::watch::Receiver<Arc<FlowRules>> {
        self.inner.flow_rules.subscribe()
    }

    /// The flow rules in force.
    pub fn flow_rules(&self) -> Arc<FlowRules> {
        self.inner.state.lock().flow.rules.clone()
    }

    /// The tokens left per rate limit, in the order of the rules' rate
    /// limits: its pattern qualified by its namespace (`pattern@ns`
    /// outside `default`) and its tokens now.
    pub fn rate_tokens(&self) -> Vec<(String, f64)> {
        let now = now_micros();
        self.inner.state.lock().rate_tokens(now)
    }
}

/// A rate limit's pattern qualified by its namespace, as the metrics and
/// the tokens name it (server-wide).
fn qualified_pattern(r: &RateLimit) -> String {
    crate::domain::namespace::qualify(&r.pattern, &r.namespace).into_owned()
}

/// A queue's entry in [`State::queue_flow`]'s map (its figures and the
/// tasks held in it), made empty for a queue only rules other than keys
/// hold.
fn queue_entry<'a>(
    out: &'a mut HashMap<Arc<str>, (QueueFlowInfo, u64)>,
    key: &Arc<str>,
) -> &'a mut (QueueFlowInfo, u64) {
    out.entry(key.clone()).or_insert_with(|| {
        (
            QueueFlowInfo {
                name: key.to_string(),
                ..QueueFlowInfo::default()
            },
            0,
        )
    })
}
