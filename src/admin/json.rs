//! The admin API's JSON: the one dialect ([`crate::pb::dialect`]) that the
//! CLI's `--json` writes too: camelCase field names, lower-case enum words
//! (`completed`, `bullmq`), numbers as JSON numbers (64-bit ones included),
//! RFC 3339 timestamps, durations as `…Ms` milliseconds, every field
//! written (`null` for an unset message). Nothing here re-encodes it: the
//! routes call [`to_json`] and add a field or two where a route says so
//! (`taskId` on `…/logs` lines, `leader` on `…/cluster`).

pub use crate::pb::dialect::to_json;
