//! A typed `OrchestratorService` client: the generated client behind
//! methods that take and return the messages a caller cares about, with an
//! optional bearer token on every call.

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::pb;
use crate::pb::orchestrator_service_client::OrchestratorServiceClient;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a URL tonic accepts.
    #[error("invalid server address {0:?}")]
    Address(String),
    /// The connection failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The address.
        url: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
    /// The TLS files cannot be used (unreadable, half an identity, or set
    /// for an `http://` URL).
    #[error("TLS: {0}")]
    Tls(String),
}

/// A connected client. Cheap to clone (one HTTP/2 connection is shared).
#[derive(Debug, Clone)]
pub struct Client {
    inner: OrchestratorServiceClient<Transport>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    namespace: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// What a [`Client`] sends its calls over: one channel, or a
/// [`crate::failover::Failover`] over several replicas.
pub type Transport = tower::util::BoxCloneSyncService<
    tonic::codegen::http::Request<tonic::body::Body>,
    tonic::codegen::http::Response<tonic::body::Body>,
    tonic::transport::Error,
>;

/// The URLs of a comma-separated list (at least one: an empty list yields
/// the empty string, which no endpoint accepts).
pub fn split_urls(list: &str) -> impl Iterator<Item = &str> {
    let mut parts: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        parts.push("");
    }
    parts.into_iter()
}

impl Client {
    /// Connects to `url` (`http://127.0.0.1:50051`). Several replicas'
    /// URLs, comma-separated (`http://a:50051,http://b:50051`), or a name
    /// with several address records, use the
    /// first that accepts a connection and move to the next when a call
    /// fails at the transport ([`crate::failover::Failover`]): a standby
    /// forwards to the leader, so the client rides a failover. A call in
    /// flight on a replica that dies fails with UNAVAILABLE and can be
    /// retried (with its idempotency key, a `ScheduleTask` never creates a
    /// second task).
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        Client::connect_tls(url, &crate::TlsFiles::default()).await
    }

    /// As [`connect`](Client::connect), with TLS for `https://` URLs: the
    /// CAs of `tls.ca_file` (else the system's roots) and, for mTLS, the
    /// client certificate `tls.cert_file` and `tls.key_file`.
    pub async fn connect_tls(
        url: impl Into<String>,
        tls: &crate::TlsFiles,
    ) -> Result<Client, ClientError> {
        let url = url.into();
        let endpoints = split_urls(&url)
            .map(|u| {
                let e = Endpoint::from_shared(u.to_owned())
                    .map(|e| e.connect_timeout(std::time::Duration::from_secs(5)))
                    .map_err(|_| ClientError::Address(u.to_owned()))?;
                tls.apply(e).map_err(ClientError::Tls)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A name with several address records is several replicas.
        let endpoints = crate::failover::expand_dns(endpoints).await;
        if endpoints.len() > 1 {
            let failover = crate::failover::Failover::connect(endpoints).await;
            return Ok(Client {
                inner: OrchestratorServiceClient::new(Transport::new(failover)),
                token: None,
                namespace: None,
            });
        }
        let channel = endpoints[0]
            .connect()
            .await
            .map_err(|source| ClientError::Connect { url, source })?;
        Ok(Client::from_channel(channel))
    }

    /// A client over a channel of the caller's (TLS, a balancer, …).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            inner: OrchestratorServiceClient::new(Transport::new(channel)),
            token: None,
            namespace: None,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call. A token that
    /// is not valid metadata is refused.
    pub fn with_token(mut self, token: &str) -> Result<Client, Status> {
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not valid metadata"))?;
        self.token = Some(v);
        Ok(self)
    }

    /// Sends `switchyard-namespace: <namespace>` with every call: the
    /// namespace a static token acts in (a key acts in its own; naming
    /// another is PERMISSION_DENIED). A value that is not valid metadata
    /// is refused.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Client, Status> {
        let v = namespace
            .parse()
            .map_err(|_| Status::invalid_argument("the namespace is not valid metadata"))?;
        self.namespace = Some(v);
        Ok(self)
    }

    /// The generated client, for calls this type does not wrap.
    pub fn raw(&mut self) -> &mut OrchestratorServiceClient<Transport> {
        &mut self.inner
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(ns) = &self.namespace {
            r.metadata_mut().insert("switchyard-namespace", ns.clone());
        }
        r
    }

    /// Schedules a task (see `ScheduleTaskRequest`).
    pub async fn schedule(
        &mut self,
        req: pb::ScheduleTaskRequest,
    ) -> Result<pb::ScheduleTaskResponse, Status> {
        let r = self.req(req);
        Ok(self.inner.schedule_task(r).await?.into_inner())
    }

    /// Schedules up to 1,000 tasks in one call, committed together; one
    /// result per item, in order (see `ScheduleTasksRequest`).
    pub async fn schedule_many(
        &mut self,
        tasks: Vec<pb::ScheduleTaskRequest>,
    ) -> Result<Vec<pb::ScheduleTasksResult>, Status> {
        let r = self.req(pb::ScheduleTasksRequest { tasks });
        Ok(self.inner.schedule_tasks(r).await?.into_inner().results)
    }

    /// One task's status.
    pub async fn status(&mut self, task_id: &str) -> Result<pb::TaskStatus, Status> {
        let r = self.req(pb::GetTaskStatusRequest {
            task_id: task_id.into(),
        });
        self.inner
            .get_task_status(r)
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::internal("the answer has no status"))
    }

    /// Cancels a task; `force` ends it without waiting for its worker.
    pub async fn cancel(
        &mut self,
        task_id: &str,
        reason: &str,
        force: bool,
    ) -> Result<pb::CancelTaskResponse, Status> {
        let r = self.req(pb::CancelTaskRequest {
            task_id: task_id.into(),
            reason: reason.into(),
            force,
        });
        Ok(self.inner.cancel_task(r).await?.into_inner())
    }

    /// Runs an ended (FAILED, CANCELLED, COMPENSATED) task again under its
    /// id, with the next run number and a new attempt budget (`RetryTask`).
    pub async fn retry(&mut self, task_id: &str, reason: &str) -> Result<pb::TaskStatus, Status> {
        let r = self.req(pb::RetryTaskRequest {
            task_id: task_id.into(),
            reason: reason.into(),
        });
        self.inner
            .retry_task(r)
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::internal("the answer has no status"))
    }

    /// Runs an ended workflow again from step `from_step`: earlier steps
    /// keep their outputs (`ReplayWorkflow`).
    pub async fn replay(
        &mut self,
        task_id: &str,
        from_step: &str,
        reason: &str,
    ) -> Result<pb::TaskStatus, Status> {
        let r = self.req(pb::ReplayWorkflowRequest {
            task_id: task_id.into(),
            from_step: from_step.into(),
            reason: reason.into(),
        });
        self.inner
            .replay_workflow(r)
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::internal("the answer has no status"))
    }

    /// Stops every active task of a user.
    pub async fn disconnect_user(
        &mut self,
        user_id: &str,
        reason: &str,
    ) -> Result<Vec<pb::DisconnectReceipt>, Status> {
        let r = self.req(pb::DisconnectRequest {
            user_id: user_id.into(),
            session_id: String::new(),
            reason: reason.into(),
        });
        Ok(self.inner.disconnect(r).await?.into_inner().receipts)
    }

    /// Stops every active task of a session.
    pub async fn disconnect_session(
        &mut self,
        session_id: &str,
        reason: &str,
    ) -> Result<Vec<pb::DisconnectReceipt>, Status> {
        let r = self.req(pb::DisconnectRequest {
            user_id: String::new(),
            session_id: session_id.into(),
            reason: reason.into(),
        });
        Ok(self.inner.disconnect(r).await?.into_inner().receipts)
    }

    /// Watches tasks that match `filter`, resuming after `after_sequence`
    /// (0: live only).
    pub async fn watch(
        &mut self,
        filter: pb::TaskFilter,
        after_sequence: u64,
    ) -> Result<Streaming<pb::WatchTasksResponse>, Status> {
        let r = self.req(pb::WatchTasksRequest {
            filter: Some(filter),
            after_sequence,
            include_snapshot: false,
        });
        Ok(self.inner.watch_tasks(r).await?.into_inner())
    }

    /// One page of tasks, newest first.
    pub async fn list(
        &mut self,
        filter: pb::TaskFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListTasksResponse, Status> {
        let r = self.req(pb::ListTasksRequest {
            filter: Some(filter),
            page_size,
            page_token: page_token.into(),
        });
        Ok(self.inner.list_tasks(r).await?.into_inner())
    }

    /// A task's log lines after `after_line`.
    pub async fn logs(
        &mut self,
        task_id: &str,
        after_line: u64,
        limit: u32,
    ) -> Result<pb::GetTaskLogsResponse, Status> {
        let r = self.req(pb::GetTaskLogsRequest {
            task_id: task_id.into(),
            after_line,
            limit,
        });
        Ok(self.inner.get_task_logs(r).await?.into_inner())
    }

    /// Counts, queues, throughput and latencies.
    pub async fn metrics(&mut self) -> Result<pb::GetMetricsResponse, Status> {
        let r = self.req(pb::GetMetricsRequest {});
        Ok(self.inner.get_metrics(r).await?.into_inner())
    }
}
