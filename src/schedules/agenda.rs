//! The runner's agenda: when each active schedule must be looked at next,
//! ordered by time, so that a pass visits only the schedules that are due
//! (not every schedule on every wake).
//!
//! Must not: decide when a schedule fires (`domain::schedule` does); this
//! only keeps the times the runner computed.

use std::collections::{BTreeSet, HashMap};

use crate::domain::Micros;

/// Schedule ids by the time they are due.
#[derive(Debug, Default)]
pub struct Agenda {
    by_time: BTreeSet<(Micros, String)>,
    at: HashMap<String, Micros>,
}

impl Agenda {
    /// Looks at `id` at `when` (replacing any earlier entry of it).
    pub fn set(&mut self, id: &str, when: Micros) {
        if let Some(old) = self.at.insert(id.to_string(), when) {
            self.by_time.remove(&(old, id.to_string()));
        }
        self.by_time.insert((when, id.to_string()));
    }

    /// Forgets `id` (paused or deleted).
    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.at.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
    }

    /// Takes out every id due at or before `now`, earliest first.
    pub fn take_due(&mut self, now: Micros) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((when, _)) = self.by_time.first() {
            if *when > now {
                break;
            }
            if let Some((_, id)) = self.by_time.pop_first() {
                self.at.remove(&id);
                due.push(id);
            }
        }
        due
    }

    /// When the earliest entry is due (`Micros::MAX` when none is).
    pub fn earliest(&self) -> Micros {
        self.by_time.first().map_or(Micros::MAX, |(t, _)| *t)
    }

    /// How many schedules are on it.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_due_in_time_order() {
        let mut a = Agenda::default();
        a.set("late", 300);
        a.set("early", 100);
        a.set("mid", 200);
        assert_eq!(a.earliest(), 100);
        assert_eq!(a.take_due(200), ["early", "mid"]);
        assert_eq!(a.len(), 1);
        assert_eq!(a.earliest(), 300);
        assert!(a.take_due(299).is_empty());
    }

    #[test]
    fn a_new_time_replaces_the_old_and_remove_forgets() {
        let mut a = Agenda::default();
        a.set("x", 500);
        a.set("x", 50);
        assert_eq!(a.len(), 1);
        assert_eq!(a.take_due(100), ["x"]);
        a.set("y", 10);
        a.remove("y");
        a.remove("never-there");
        assert_eq!(a.earliest(), Micros::MAX);
        assert!(a.take_due(Micros::MAX).is_empty());
    }
}
