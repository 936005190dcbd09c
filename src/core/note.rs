//! Notes: a line in a task's log written for an edge (who cancelled or
//! retried it, for the audit), committed with the next write.
//!
//! Owns: nothing but the write of the line.
//! Must not: change the task.

use crate::domain::LogEntry;

use super::Core;

impl Core {
    /// Appends `line` to its task's log.
    pub fn note(&self, line: LogEntry) {
        self.with_state(|st| st.log(line));
    }
}
