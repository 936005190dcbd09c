//! Redis for the BullMQ backend: one multiplexed connection for reads and
//! small writes, bullmq-rs queues (one connection each) for adding and
//! removing jobs with BullMQ's own scripts, and dedicated connections for
//! the blocking reads of the events streams.
//!
//! Every call has a deadline: an error or a timeout means "Redis cannot be
//! reached now", and the caller decides what happens next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bullmq_rs::{Queue, QueueBuilder, RedisConnection};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value as RValue};
use serde_json::value::RawValue;

use super::config::BullmqConfig;
use super::mapping::{AddOptions, JobPlace};

/// Takes a job out of BullMQ's waiting states (so that no worker can start
/// it) before BullMQ's removeJob deletes it; also answers where the job is
/// otherwise, and the events stream's last id at that moment. Switchyard's
/// own script: a job Switchyard added has no parent, children or
/// deduplication key, so the lists below are all the places it can wait.
const TAKE_OUT: &str = r#"
local id = ARGV[1]
local last = redis.call('XREVRANGE', KEYS[9], '+', '-', 'COUNT', 1)
local lastId = '0-0'
if last[1] then lastId = last[1][1] end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, lastId} end
if redis.call('ZREM', KEYS[4], id) == 1 or redis.call('ZREM', KEYS[5], id) == 1
  or redis.call('LREM', KEYS[2], 1, id) == 1 or redis.call('LREM', KEYS[3], 1, id) == 1 then
  return {1, lastId}
end
if redis.call('LPOS', KEYS[6], id) then return {0, lastId} end
if redis.call('ZSCORE', KEYS[7], id) or redis.call('ZSCORE', KEYS[8], id) then return {2, lastId} end
return {3, lastId}
"#;

/// Writes Node-format `opts` over a job that exists (see
/// [`AddOptions::for_bullmq_rs`]).
const SET_OPTS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'opts', ARGV[1])
  return 1
end
return 0
"#;

/// Pauses or resumes a BullMQ queue as BullMQ 5's own `Queue.pause()` and
/// `Queue.resume()` do (its `pause-7.lua`: the `wait` list becomes the
/// `paused` list and `meta.paused` is set, so no worker takes a job, and
/// jobs added meanwhile go to `paused`; on resume the other way round, with
/// a marker so that blocked workers wake), and marks the pause as
/// Switchyard's (`meta` field `switchyard:paused`: `1` if Switchyard paused
/// BullMQ's queue, `0` if it was paused already): a resume only undoes a
/// pause Switchyard made, and a queue paused by someone else stays paused.
/// Returns 1 if BullMQ's queue changed, else 0.
///
/// KEYS: wait, paused, meta, prioritized, events, delayed, marker.
/// ARGV[1]: `paused` or `resumed`.
const PAUSE: &str = r#"
local meta = KEYS[3]
local function move(src, dst)
  if redis.call('EXISTS', src) == 0 then return end
  if redis.call('EXISTS', dst) == 0 then
    redis.call('RENAME', src, dst)
  else
    while redis.call('RPOPLPUSH', src, dst) do end
  end
end
if ARGV[1] == 'paused' then
  if redis.call('HEXISTS', meta, 'switchyard:paused') == 1 then return 0 end
  if redis.call('HEXISTS', meta, 'paused') == 1 then
    redis.call('HSET', meta, 'switchyard:paused', 0)
    return 0
  end
  redis.call('HSET', meta, 'switchyard:paused', 1)
  move(KEYS[1], KEYS[2])
  redis.call('HSET', meta, 'paused', 1)
  redis.call('DEL', KEYS[7])
  redis.call('XADD', KEYS[5], '*', 'event', 'paused')
  return 1
end
local mine = redis.call('HGET', meta, 'switchyard:paused')
redis.call('HDEL', meta, 'switchyard:paused')
if mine ~= '1' or redis.call('HEXISTS', meta, 'paused') == 0 then return 0 end
move(KEYS[2], KEYS[1])
redis.call('HDEL', meta, 'paused')
if redis.call('LLEN', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[4]) > 0 then
  redis.call('ZADD', KEYS[7], 0, '0')
else
  local next = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if next[2] then redis.call('ZADD', KEYS[7], tonumber(next[2]) / 0x1000, '1') end
end
redis.call('XADD', KEYS[5], '*', 'event', 'resumed')
return 1
"#;

/// What [`Conn::take_out`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOut {
    /// It was waiting, and is now out of every list: no worker can start it.
    TakenOut,
    /// It is active (a worker holds it).
    Active,
    /// It has finished (completed or failed).
    Finished,
    /// Somewhere else (waiting for children, or moving).
    Elsewhere,
    /// No such job; the events stream ended at this id when we looked.
    Missing(String),
}

/// A job as read from Redis.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Where it is.
    pub place: Option<JobPlace>,
    /// `atm`: attempts made (failed or finished).
    pub attempts_made: u32,
    /// `returnvalue`.
    pub returnvalue: Option<String>,
    /// `failedReason`.
    pub failed_reason: Option<String>,
    /// `stacktrace` (JSON array).
    pub stacktrace: Option<String>,
    /// The job's log lines (`job.log`).
    pub logs: Vec<String>,
}

impl Probe {
    /// Where it is (missing if unknown).
    pub fn place(&self) -> JobPlace {
        self.place.unwrap_or(JobPlace::Missing)
    }
}

/// Redis, as the backend uses it.
pub struct Conn {
    cfg: BullmqConfig,
    url: String,
    client: redis::Client,
    manager: tokio::sync::Mutex<Option<ConnectionManager>>,
    queues: parking_lot::Mutex<HashMap<String, Arc<Queue<Box<RawValue>>>>>,
    building: tokio::sync::Mutex<()>,
    take_out: redis::Script,
    set_opts: redis::Script,
    pause: redis::Script,
}

/// A failed Redis call, as text.
pub type RedisFailure = String;

fn fail(what: &str, e: impl std::fmt::Display) -> RedisFailure {
    format!("{what}: {e}")
}

impl Conn {
    /// Checks the configuration; connects lazily.
    pub fn new(cfg: &BullmqConfig) -> Result<Conn, String> {
        let url = cfg.connection_url()?;
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("bullmq.url: {e}"))?;
        Ok(Conn {
            cfg: cfg.clone(),
            url,
            client,
            manager: tokio::sync::Mutex::new(None),
            queues: parking_lot::Mutex::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
            take_out: redis::Script::new(TAKE_OUT),
            set_opts: redis::Script::new(SET_OPTS),
            pause: redis::Script::new(PAUSE),
        })
    }

    /// `<prefix>:<queue>:<suffix>`.
    pub fn key(&self, queue: &str, suffix: &str) -> String {
        format!("{}:{queue}:{suffix}", self.cfg.prefix)
    }

    /// The shared multiplexed connection (made on first use; it reconnects
    /// by itself after that).
    async fn manager(&self) -> Result<ConnectionManager, RedisFailure> {
        let mut m = self.manager.lock().await;
        if let Some(c) = m.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.cfg.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let c = tokio::time::timeout(
            self.cfg.connect_timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| fail("connect", "timed out"))?
        .map_err(|e| fail("connect", e))?;
        *m = Some(c.clone());
        Ok(c)
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`).
    pub async fn dedicated(&self, block: Duration) -> Result<MultiplexedConnection, RedisFailure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(block + self.cfg.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| fail("connect", e))
    }

    /// The bullmq-rs queue of `name` (made on first use).
    async fn queue(&self, name: &str) -> Result<Arc<Queue<Box<RawValue>>>, RedisFailure> {
        if let Some(q) = self.queues.lock().get(name) {
            return Ok(q.clone());
        }
        let _one = self.building.lock().await;
        if let Some(q) = self.queues.lock().get(name) {
            return Ok(q.clone());
        }
        let q = tokio::time::timeout(
            self.cfg.connect_timeout,
            QueueBuilder::new(name)
                .connection(RedisConnection::new(self.url.clone()))
                .prefix(self.cfg.prefix.clone())
                .build::<Box<RawValue>>(),
        )
        .await
        .map_err(|_| fail("connect", "timed out"))?
        .map_err(|e| fail("connect", e))?;
        let q = Arc::new(q);
        self.queues.lock().insert(name.to_string(), q.clone());
        Ok(q)
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, RedisFailure> {
        match tokio::time::timeout(self.cfg.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(fail(what, e)),
            Err(_) => Err(fail(what, "timed out")),
        }
    }

    /// Adds a job (a no-op if the job id exists). `data` is the job's JSON
    /// as it goes to Redis: passed through, not parsed into a tree and
    /// written out again.
    pub async fn add(
        &self,
        queue: &str,
        name: &str,
        data: Box<RawValue>,
        opts: &AddOptions,
    ) -> Result<(), RedisFailure> {
        let q = self.queue(queue).await?;
        self.timed("add", q.add(name, data, Some(opts.for_bullmq_rs())))
            .await?;
        if opts.needs_node_opts() {
            let mut c = self.manager().await?;
            let key = self.key(queue, &opts.job_id);
            let text = opts.node_opts().to_string();
            self.timed(
                "set opts",
                self.set_opts
                    .key(&key)
                    .arg(&text)
                    .invoke_async::<i64>(&mut c),
            )
            .await?;
        }
        Ok(())
    }

    /// Takes a waiting job out of its list (see [`TAKE_OUT`]).
    pub async fn take_out(&self, queue: &str, job_id: &str) -> Result<TakeOut, RedisFailure> {
        let mut c = self.manager().await?;
        let mut inv = self.take_out.prepare_invoke();
        inv.key(self.key(queue, job_id));
        for s in [
            "wait",
            "paused",
            "prioritized",
            "delayed",
            "active",
            "completed",
            "failed",
            "events",
        ] {
            inv.key(self.key(queue, s));
        }
        inv.arg(job_id);
        let (code, last): (i64, String) = self.timed("take out", inv.invoke_async(&mut c)).await?;
        Ok(match code {
            1 => TakeOut::TakenOut,
            0 => TakeOut::Active,
            2 => TakeOut::Finished,
            -1 => TakeOut::Missing(last),
            _ => TakeOut::Elsewhere,
        })
    }

    /// Pauses (or resumes) `queue` in BullMQ, as Switchyard's pause (see
    /// [`PAUSE`]); returns whether BullMQ's queue changed.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, RedisFailure> {
        let mut c = self.manager().await?;
        let mut inv = self.pause.prepare_invoke();
        for s in [
            "wait",
            "paused",
            "meta",
            "prioritized",
            "events",
            "delayed",
            "marker",
        ] {
            inv.key(self.key(queue, s));
        }
        inv.arg(if paused { "paused" } else { "resumed" });
        let registry = format!("{}:switchyard:paused", self.cfg.prefix);
        // The queues Switchyard paused are listed, so that a restarted
        // server finds those to resume: listed before the pause, unlisted
        // after the resume (a crash in between leaves a name whose resume
        // finds nothing to do).
        if paused {
            let mut p = redis::pipe();
            p.cmd("SADD").arg(&registry).arg(queue).ignore();
            self.timed("pause", p.query_async::<()>(&mut c)).await?;
        }
        let changed: i64 = self.timed("pause", inv.invoke_async(&mut c)).await?;
        if !paused {
            let mut p = redis::pipe();
            p.cmd("SREM").arg(&registry).arg(queue).ignore();
            self.timed("resume", p.query_async::<()>(&mut c)).await?;
        }
        Ok(changed == 1)
    }

    /// The queues Switchyard paused in BullMQ (and has not resumed).
    pub async fn paused_queues(&self) -> Result<Vec<String>, RedisFailure> {
        let mut c = self.manager().await?;
        let registry = format!("{}:switchyard:paused", self.cfg.prefix);
        self.timed(
            "paused queues",
            redis::cmd("SMEMBERS")
                .arg(registry)
                .query_async::<Vec<String>>(&mut c),
        )
        .await
    }

    /// Removes a job with BullMQ's removeJob (refused for a locked job).
    pub async fn remove(&self, queue: &str, job_id: &str) -> Result<(), RedisFailure> {
        let q = self.queue(queue).await?;
        self.timed("remove", q.remove(job_id)).await
    }

    /// Asks the worker of an active job to stop: publishes the job id on
    /// `<prefix>:<queue>:switchyard:cancel` and sets
    /// `<prefix>:<queue>:<job id>:switchyard:cancel` for `cancel_ttl`.
    pub async fn publish_cancel(&self, queue: &str, job_id: &str) -> Result<(), RedisFailure> {
        let mut c = self.manager().await?;
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(self.key(queue, &format!("{job_id}:switchyard:cancel")))
            .arg(1)
            .arg("EX")
            .arg(self.cfg.cancel_ttl.as_secs().max(1))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.key(queue, "switchyard:cancel"))
            .arg(job_id)
            .ignore();
        self.timed("publish cancel", p.query_async::<()>(&mut c))
            .await
    }

    /// Reads jobs: where each is, its attempts, result or error, and logs.
    /// One round trip for all.
    pub async fn probe(&self, queue: &str, ids: &[String]) -> Result<Vec<Probe>, RedisFailure> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.manager().await?;
        let mut p = redis::pipe();
        let (wait, paused, active) = (
            self.key(queue, "wait"),
            self.key(queue, "paused"),
            self.key(queue, "active"),
        );
        let sets = [
            "completed",
            "failed",
            "delayed",
            "prioritized",
            "waiting-children",
        ]
        .map(|s| self.key(queue, s));
        for id in ids {
            let jk = self.key(queue, id);
            p.cmd("HMGET").arg(&jk).arg(&[
                "name",
                "atm",
                "returnvalue",
                "failedReason",
                "stacktrace",
            ]);
            for s in &sets {
                p.cmd("ZSCORE").arg(s).arg(id);
            }
            for l in [&active, &wait, &paused] {
                p.cmd("LPOS").arg(l).arg(id);
            }
            p.cmd("LRANGE").arg(format!("{jk}:logs")).arg(0).arg(-1);
        }
        let vals: Vec<RValue> = self.timed("read jobs", p.query_async(&mut c)).await?;
        let per = 10;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in vals.chunks(per) {
            if chunk.len() < per {
                break;
            }
            let h: Vec<Option<String>> =
                redis::from_redis_value(chunk[0].clone()).unwrap_or_default();
            let field = |i: usize| h.get(i).cloned().flatten();
            let present = |v: &RValue| !matches!(v, RValue::Nil);
            let place = if field(0).is_none() {
                JobPlace::Missing
            } else if present(&chunk[1]) {
                JobPlace::Completed
            } else if present(&chunk[2]) {
                JobPlace::Failed
            } else if present(&chunk[3]) {
                JobPlace::Delayed
            } else if present(&chunk[4]) {
                JobPlace::Prioritized
            } else if present(&chunk[5]) {
                JobPlace::WaitingChildren
            } else if present(&chunk[6]) {
                JobPlace::Active
            } else if present(&chunk[7]) || present(&chunk[8]) {
                JobPlace::Waiting
            } else {
                JobPlace::Nowhere
            };
            out.push(Probe {
                place: Some(place),
                attempts_made: field(1).and_then(|s| s.parse().ok()).unwrap_or(0),
                returnvalue: field(2),
                failed_reason: field(3),
                stacktrace: field(4),
                logs: redis::from_redis_value(chunk[9].clone()).unwrap_or_default(),
            });
        }
        if out.len() != ids.len() {
            return Err(fail("read jobs", "short reply"));
        }
        Ok(out)
    }

    /// Redis's `run_id`: it changes when the server restarts (and so may
    /// have lost its data) or another server answers.
    pub async fn run_id(c: &mut MultiplexedConnection) -> Result<String, RedisFailure> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(c)
            .await
            .map_err(|e| fail("info", e))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim()
            .to_string())
    }
}
