//! The cluster's status, as both edges show it: who leads each partition
//! and which replicas are alive. The wiring provides the view (PostgreSQL
//! leases, or the one embedded replica).

use async_trait::async_trait;

use crate::core::CoreError;
use crate::pb;
pub use crate::store::postgres::{LeaseRow, ReplicaRow};

/// The cluster as the store records it now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterStatus {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// The replica that answers.
    pub replica_id: String,
    /// One lease per partition (none on SQLite).
    pub leases: Vec<LeaseRow>,
    /// The replicas seen in the last hour (none recorded on SQLite).
    pub replicas: Vec<ReplicaRow>,
}

impl ClusterStatus {
    /// Whether `replica` holds a lease that has not lapsed.
    pub fn leads(&self, replica: &str) -> bool {
        self.leases
            .iter()
            .any(|l| l.holder == replica && l.expires_in_ms > 0.0)
    }
}

/// Where the edges read the cluster's status.
#[async_trait]
pub trait ClusterView: Send + Sync {
    /// The status now.
    async fn status(&self) -> Result<ClusterStatus, CoreError>;
}

/// The embedded store's one replica.
pub struct SingleReplica {
    /// Its id.
    pub replica_id: String,
}

#[async_trait]
impl ClusterView for SingleReplica {
    async fn status(&self) -> Result<ClusterStatus, CoreError> {
        Ok(ClusterStatus {
            store: "sqlite",
            replica_id: self.replica_id.clone(),
            leases: Vec::new(),
            replicas: Vec::new(),
        })
    }
}

fn millis(ms: f64) -> Option<prost_types::Duration> {
    let ms = if ms.is_finite() { ms } else { 0.0 };
    let whole = ms.trunc();
    Some(prost_types::Duration {
        seconds: (whole / 1000.0) as i64,
        nanos: (((whole % 1000.0) * 1_000_000.0) + (ms - whole) * 1_000_000.0) as i32,
    })
}

/// The status as the gRPC answer.
pub fn to_pb(s: &ClusterStatus) -> pb::GetClusterStatusResponse {
    pb::GetClusterStatusResponse {
        store: s.store.to_string(),
        replica_id: s.replica_id.clone(),
        leases: s
            .leases
            .iter()
            .map(|l| pb::PartitionLease {
                partition: l.partition,
                term: l.term,
                holder: l.holder.clone(),
                address: l.address.clone(),
                since_renewal: millis(l.renewed_ms_ago),
                expires_in: millis(l.expires_in_ms),
                held_for: millis(l.held_for_ms),
            })
            .collect(),
        replicas: s
            .replicas
            .iter()
            .map(|r| pb::ClusterReplica {
                id: r.id.clone(),
                address: r.address.clone(),
                leader: s.leads(&r.id),
                since_seen: millis(r.seen_ms_ago),
                up: millis(r.up_ms),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_sign_and_milliseconds() {
        let d = millis(1234.5).unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 234_500_000));
        let d = millis(-250.0).unwrap();
        assert_eq!((d.seconds, d.nanos), (0, -250_000_000));
        let d = millis(f64::NAN).unwrap();
        assert_eq!((d.seconds, d.nanos), (0, 0));
    }
}
