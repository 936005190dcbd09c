//! How a store's writer forms a batch (one group commit) from the groups
//! queued for it; both writers (SQLite's thread, PostgreSQL's task) use it.
//!
//! Ordinary writes (inserts, updates, log lines) join the batch in the
//! order they came. Retention's removals do not: they wait in a queue of
//! their own and ride on commits in slices: a batch carries removals of
//! at most as many tasks as it carries other writes, and at least
//! [`REMOVE_SLICE`] (one removing group, whatever its size, when it is
//! alone). So a write that arrives behind a sweep's removals never waits
//! for them to commit first, a commit is made at most about twice as long
//! by the removals it carries, and the removals keep pace with a busy
//! server, whose commits are large, while a quiet one clears them in
//! short commits of their own.
//!
//! Must not: decide what to remove (that is the retention sweeper), or
//! reorder ordinary writes.

use std::collections::VecDeque;

use super::WriteOp;

/// Tasks a batch may remove even when it carries fewer other writes.
pub const REMOVE_SLICE: usize = 32;

/// What the former needs to know of a queued group.
pub(crate) trait Queued {
    /// The group's operations.
    fn ops(&self) -> &[WriteOp];
    /// Whether it was submitted lazily (does not start a commit).
    fn lazy(&self) -> bool;
}

/// A queued group's weight: a removal weighs as many operations as it
/// removes tasks; whether it removes.
fn cost(ops: &[WriteOp]) -> (usize, bool) {
    let (mut weight, mut removes) = (0, false);
    for op in ops {
        weight += match op {
            WriteOp::Remove(ids) => {
                removes = true;
                ids.len().max(1)
            }
            _ => 1,
        };
    }
    (weight, removes)
}

/// The batch a writer commits next.
pub(crate) struct Batch<G> {
    /// The groups, ordinary ones first, in the order they came.
    pub groups: Vec<G>,
    /// Operations in all (removals count per task).
    pub weight: usize,
    /// Whether it removes tasks (free pages may follow).
    pub removes: bool,
}

/// Gathers the next batch (see the module's comment).
pub(crate) struct BatchFormer<G> {
    /// Removing groups waiting for a batch, with their weights.
    removals: VecDeque<(G, usize)>,
    /// The ordinary groups of the batch being formed.
    groups: Vec<G>,
    /// Their weight.
    weight: usize,
    /// Whether every one of them is lazy.
    lazy_only: bool,
}

impl<G: Queued> BatchFormer<G> {
    /// An empty former.
    pub fn new() -> Self {
        BatchFormer {
            removals: VecDeque::new(),
            groups: Vec::new(),
            weight: 0,
            lazy_only: true,
        }
    }

    /// Takes a group that came: an ordinary one joins the batch, a
    /// removing one waits for a slice of a batch.
    pub fn push(&mut self, g: G) {
        let (weight, removes) = cost(g.ops());
        if removes {
            self.removals.push_back((g, weight));
            return;
        }
        self.lazy_only &= g.lazy();
        self.weight += weight;
        self.groups.push(g);
    }

    /// Whether removals wait (the writer then has work without a new
    /// group, and must not block waiting for one).
    pub fn removals_waiting(&self) -> bool {
        !self.removals.is_empty()
    }

    /// Whether the batch has reached `max_batch` operations.
    pub fn full(&self, max_batch: usize) -> bool {
        self.weight >= max_batch
    }

    /// Whether the batch holds only lazy writes (at least one) and no
    /// removal waits: the writer may then wait a little for a write that
    /// needs a commit, and ride on it.
    pub fn lazy_only(&self) -> bool {
        !self.groups.is_empty() && self.lazy_only && self.removals.is_empty()
    }

    /// The batch to commit (empty when nothing came): its ordinary
    /// groups, then removals up to its slice. The former starts the next
    /// one.
    pub fn take(&mut self) -> Batch<G> {
        let slice = self.weight.max(REMOVE_SLICE);
        let mut groups = std::mem::take(&mut self.groups);
        let (mut removed, mut removes) = (0, false);
        while let Some((_, w)) = self.removals.front() {
            if removes && removed + w > slice {
                break;
            }
            let (g, w) = self.removals.pop_front().expect("a front");
            removed += w;
            removes = true;
            groups.push(g);
        }
        let weight = std::mem::take(&mut self.weight) + removed;
        self.lazy_only = true;
        Batch {
            groups,
            weight,
            removes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LogEntry, TaskId};

    struct G(Vec<WriteOp>, bool);

    impl Queued for G {
        fn ops(&self) -> &[WriteOp] {
            &self.0
        }
        fn lazy(&self) -> bool {
            self.1
        }
    }

    fn ordinary(lazy: bool) -> G {
        G(
            vec![WriteOp::Log(vec![LogEntry::system(
                TaskId::now_v7(),
                1,
                "x",
            )])],
            lazy,
        )
    }

    fn removal(n: usize) -> G {
        G(
            vec![WriteOp::Remove((0..n).map(|_| TaskId::now_v7()).collect())],
            false,
        )
    }

    fn kinds(b: &Batch<G>) -> Vec<usize> {
        b.groups.iter().map(|g| cost(&g.0).0).collect()
    }

    #[test]
    fn a_write_behind_removals_goes_first_with_one_slice() {
        let mut f = BatchFormer::new();
        for _ in 0..10 {
            f.push(removal(20));
        }
        f.push(ordinary(false));
        let b = f.take();
        assert_eq!(kinds(&b), vec![1, 20], "the write, then one removal of 20");
        assert_eq!((b.weight, b.removes), (21, true));
        for left in (0..9).rev() {
            assert!(f.removals_waiting());
            let b = f.take();
            assert_eq!(kinds(&b), vec![20], "{left} left");
        }
        assert!(!f.removals_waiting());
        let b = f.take();
        assert!(b.groups.is_empty() && !b.removes && b.weight == 0);
    }

    #[test]
    fn removals_grow_with_the_batch_they_ride_on() {
        let mut f = BatchFormer::new();
        for _ in 0..10 {
            f.push(removal(16));
        }
        for _ in 0..100 {
            f.push(ordinary(false));
        }
        let b = f.take();
        // 100 writes: up to 100 removed tasks, i.e. six groups of 16.
        assert_eq!(b.weight, 100 + 96);
        // Alone: the slice, two groups of 16.
        assert_eq!(f.take().weight, 32);
        // A group over the slice still goes, alone.
        f.push(removal(500));
        f.push(removal(1));
        assert_eq!(f.take().weight, 32);
        assert_eq!(f.take().weight, 500);
        assert_eq!(f.take().weight, 1);
    }

    #[test]
    fn lazy_waits_only_without_removals() {
        let mut f = BatchFormer::new();
        assert!(!f.lazy_only(), "nothing yet");
        f.push(ordinary(true));
        assert!(f.lazy_only());
        f.push(removal(3));
        assert!(!f.lazy_only(), "a removal needs a commit anyway");
        let b = f.take();
        assert_eq!(kinds(&b), vec![1, 3]);
        f.push(ordinary(true));
        f.push(ordinary(false));
        assert!(!f.lazy_only());
        f.take();
        f.push(ordinary(true));
        assert!(f.lazy_only(), "a new batch starts lazy");
    }
}
