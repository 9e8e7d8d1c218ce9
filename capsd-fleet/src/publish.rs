//! Publishing one host: its claim, record and documents under a lease kept alive, retried
//! with backoff while etcd is unreachable, caught up when it returns.
//!
//! The caller hands [`Content`] (record and documents) to a [`Publisher`] through
//! [`Publisher::update`], whenever it changes; the publisher's task writes only what changed
//! (a reference whose hash moved, a query gone, the record) in a few transactions. The
//! session loop:
//!
//! 1. connect, grant a lease of `ttl`, claim the host id (`P/claims/ID`, put only when
//!    absent): a claim of this same agent (an earlier run: same [`PublishConfig::owner`]) is
//!    revoked with everything on its lease; another agent's live claim is refused, fatally on
//!    the first session ([`FleetError::HostIdTaken`], the agent does not start) unless
//!    `take_over` (its lease is revoked), later by waiting for it to go;
//! 2. keep the lease alive every `ttl / 3`, and check the keys on the lease: when some
//!    vanished (deleted by hand, a take-over), claim and write everything again; write each
//!    new content at once;
//! 3. on any etcd error: log it, wait (100 ms doubling to 5 s), start again at 1. The
//!    caller is never blocked: `update` only replaces the latest content.
//!
//! [`Publisher::stop`] revokes the lease (every host key disappears at once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::etcd::{Client, Compare, EtcdConfig, Op, Range, Txn};
use crate::{content_hash, FleetError, HostRecord, Layout, QueryKey};

/// What one host publishes: its record (its `updated_ms` and `documents` are set when
/// written) and one document (libvirt's XML) per query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub record: HostRecord,
    pub docs: BTreeMap<QueryKey, Arc<str>>,
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub etcd: EtcdConfig,
    pub layout: Layout,
    pub host_id: String,
    /// Lease time to live: how long a host that died stays listed.
    pub ttl: Duration,
    /// Who this agent is (stable across its restarts, different for another agent): its
    /// claim's value. See [`owner_token`].
    pub owner: String,
    /// Take the host id from another agent whose claim is alive (its lease is revoked).
    pub take_over: bool,
}

/// An agent's identity for claims: a hash of the machine id, the agent's state directory and
/// the host id, so a restarted agent finds its own claim and another agent (another machine,
/// or another state directory here) does not.
pub fn owner_token(state_dir: &std::path::Path, host_id: &str) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let hash = content_hash(format!("{}\0{}\0{host_id}", machine.trim(), dir.display()).as_bytes());
    hash[..32].to_owned()
}

/// A running publisher task.
#[derive(Debug)]
pub struct Publisher {
    content: watch::Sender<Option<Arc<Content>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// How many times the content was written completely (for tests and metrics).
    pub published: watch::Receiver<u64>,
    /// Set when the publisher gave up for good (the host id is another agent's).
    pub refused: watch::Receiver<Option<String>>,
}

impl Publisher {
    /// Start publishing (in a task of the current runtime). Nothing is written until the
    /// first [`update`](Self::update).
    pub fn start(config: PublishConfig) -> Result<Publisher, FleetError> {
        crate::validate_host_id(&config.host_id)?;
        if config.ttl < Duration::from_secs(1) {
            return Err(FleetError::Invalid {
                what: "lease TTL",
                value: format!("{:?}", config.ttl),
                reason: "must be at least one second".into(),
            });
        }
        let (content, content_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (published_tx, published) = watch::channel(0);
        let (refused_tx, refused) = watch::channel(None);
        let task = tokio::spawn(run(config, content_rx, stop_rx, published_tx, refused_tx));
        Ok(Publisher { content, stop, task, published, refused })
    }

    /// Replace the content to publish (written as soon as etcd takes it).
    pub fn update(&self, content: Content) {
        self.content.send_if_modified(|old| {
            if old.as_deref() == Some(&content) {
                false
            } else {
                *old = Some(Arc::new(content));
                true
            }
        });
    }

    /// Revoke the lease (the host's keys go at once) and end the task; bounded to `within`.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("etcd: the publisher did not stop in time; its lease will expire by itself");
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn run(
    cfg: PublishConfig,
    mut content: watch::Receiver<Option<Arc<Content>>>,
    mut stop: watch::Receiver<bool>,
    published: watch::Sender<u64>,
    refused: watch::Sender<Option<String>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&cfg, &mut content, &mut stop, &published, &mut backoff, &mut first).await {
            Ok(()) => return,
            Err(e @ FleetError::HostIdTaken { .. }) if first => {
                tracing::error!(error = %e, "etcd: not publishing");
                let _ = refused.send(Some(e.to_string()));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, host = %cfg.host_id, "etcd: publishing failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One lease's life: until an error (returned), or a stop (lease revoked, `Ok`).
async fn session(
    cfg: &PublishConfig,
    content: &mut watch::Receiver<Option<Arc<Content>>>,
    stop: &mut watch::Receiver<bool>,
    published: &watch::Sender<u64>,
    backoff: &mut Duration,
    first: &mut bool,
) -> Result<(), FleetError> {
    let client = crate::store::connect(&cfg.etcd).await?;
    let err = |e| FleetError::etcd("", e);
    let lease = client.lease_grant(cfg.ttl.as_secs() as i64).await.map_err(err)?;
    tracing::info!(host = %cfg.host_id, lease, ttl_s = cfg.ttl.as_secs(), endpoint = client.endpoint(), "etcd: lease granted");
    let claimed = claim(&client, cfg, lease).await;
    if claimed.is_err() {
        let _ = client.lease_revoke(lease).await;
    }
    claimed?;
    *first = false;
    let mut written = Written::default();
    let mut current = content.borrow_and_update().clone();
    if let Some(c) = &current {
        write(&client, cfg, lease, &mut written, c).await?;
        published.send_modify(|n| *n += 1);
    }
    *backoff = BACKOFF_MIN;
    let mut tick = tokio::time::interval(cfg.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ttl = client.lease_keep_alive(lease).await.map_err(err)?;
                if ttl <= 0 {
                    return Err(FleetError::Invalid { what: "lease", value: format!("{lease:x}"), reason: "expired or revoked (etcd out of reach for longer than the TTL, or another agent took the host id)".into() });
                }
                // Keys deleted by anyone else: claim and write everything again.
                let (_, keys) = client.lease_keys(lease).await.map_err(err)?;
                let want = 1 + written.refs.len() + usize::from(written.record.is_some());
                if keys.len() < want {
                    tracing::warn!(host = %cfg.host_id, on_lease = keys.len(), written = want, "etcd: this host's keys vanished; publishing them again");
                    claim(&client, cfg, lease).await?;
                    written = Written::default();
                    if let Some(c) = &current {
                        write(&client, cfg, lease, &mut written, c).await?;
                        published.send_modify(|n| *n += 1);
                    }
                }
            }
            changed = content.changed() => {
                if changed.is_err() {
                    // The owner is gone without a stop: behave as a stop.
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                    return Ok(());
                }
                current = content.borrow_and_update().clone();
                if let Some(c) = &current {
                    write(&client, cfg, lease, &mut written, c).await?;
                    published.send_modify(|n| *n += 1);
                }
            }
            _ = stop.changed() => {
                match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                    Ok(Ok(())) => tracing::info!(host = %cfg.host_id, "etcd: lease revoked"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "etcd: revoking the lease failed; it expires by itself"),
                    Err(_) => tracing::warn!("etcd: revoking the lease timed out; it expires by itself"),
                }
                return Ok(());
            }
        }
    }
}

/// Claim the host id for `lease` (see the module docs).
async fn claim(client: &Client, cfg: &PublishConfig, lease: i64) -> Result<(), FleetError> {
    let err = |e| FleetError::etcd("", e);
    let key = cfg.layout.claim(&cfg.host_id);
    for _ in 0..5 {
        let txn = Txn {
            compare: vec![Compare::VersionEq(key.clone().into_bytes(), 0)],
            success: vec![Op::put(key.clone(), cfg.owner.clone(), lease)],
            failure: vec![Op::Range(Range::key(key.clone()))],
        };
        let r = client.txn(&txn).await.map_err(err)?;
        if r.succeeded {
            return Ok(());
        }
        let Some(held) = r.ranges.into_iter().next().and_then(|r| r.kvs.into_iter().next()) else { continue };
        if held.lease == lease {
            return Ok(());
        }
        let owner = String::from_utf8_lossy(&held.value).into_owned();
        if owner == cfg.owner || held.lease == 0 {
            // This agent's own earlier run (or a claim on no lease): clear it, with its keys.
            tracing::info!(host = %cfg.host_id, old_lease = held.lease, "etcd: an earlier run's claim; revoking its lease");
        } else if cfg.take_over {
            tracing::warn!(host = %cfg.host_id, other_lease = held.lease, "etcd: taking the host id over from another agent (--take-over)");
        } else {
            return Err(FleetError::HostIdTaken {
                id: cfg.host_id.clone(),
                lease: held.lease,
                owner: owner.escape_debug().to_string(),
            });
        }
        if held.lease != 0 {
            client.lease_revoke(held.lease).await.map_err(err)?;
        }
        // A claim on no lease (written by hand) goes only if unchanged since read.
        let _ = client
            .txn(&Txn {
                compare: vec![Compare::LeaseEq(key.clone().into_bytes(), held.lease)],
                success: vec![Op::delete(key.clone())],
                failure: Vec::new(),
            })
            .await
            .map_err(err)?;
    }
    Err(FleetError::Invalid {
        what: "host id claim",
        value: cfg.host_id.clone(),
        reason: "kept changing; retrying".into(),
    })
}

/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128; a document
/// costs two: its conditional put and its reference).
const OPS_PER_TXN: usize = 100;

/// What a session has written under its lease.
#[derive(Debug, Default)]
pub struct Written {
    /// Query → hash.
    pub refs: BTreeMap<QueryKey, String>,
    pub record: Option<HostRecord>,
}

/// Write what differs from `written`, then the record. Documents go in the transaction of
/// their reference, put only when absent.
pub async fn write(
    client: &Client,
    cfg: &PublishConfig,
    lease: i64,
    written: &mut Written,
    content: &Content,
) -> Result<(), FleetError> {
    let refs = &mut written.refs;
    let err = |e| FleetError::etcd("", e);
    let mut ops: Vec<(Op, Option<(QueryKey, String)>)> = Vec::new();
    let mut changed = false;
    // A document answering several queries is put once (etcd refuses a key twice in a
    // transaction); an earlier transaction of this call, or this one, has it before its refs.
    let mut putting = std::collections::HashSet::new();
    for (q, text) in &content.docs {
        let hash = content_hash(text.as_bytes());
        if refs.get(q) == Some(&hash) {
            continue;
        }
        if putting.insert(hash.clone()) {
            let doc_key = cfg.layout.doc(&hash);
            let put_doc = Txn {
                compare: vec![Compare::VersionEq(doc_key.clone().into_bytes(), 0)],
                success: vec![Op::put(doc_key, text.as_bytes().to_vec(), 0)],
                failure: Vec::new(),
            };
            ops.push((Op::Txn(Box::new(put_doc)), None));
        }
        ops.push((Op::put(cfg.layout.host_doc(&cfg.host_id, q), hash.clone(), lease), Some((q.clone(), hash))));
    }
    let gone: Vec<QueryKey> = refs.keys().filter(|q| !content.docs.contains_key(*q)).cloned().collect();
    for q in gone {
        ops.push((Op::delete(cfg.layout.host_doc(&cfg.host_id, &q)), None));
        refs.remove(&q);
        changed = true;
    }
    while !ops.is_empty() {
        let batch: Vec<_> = ops.drain(..ops.len().min(OPS_PER_TXN)).collect();
        let mut txn_ops = Vec::with_capacity(batch.len());
        let mut done = Vec::new();
        for (op, w) in batch {
            txn_ops.push(op);
            done.extend(w);
        }
        client.txn(&Txn { compare: Vec::new(), success: txn_ops, failure: Vec::new() }).await.map_err(err)?;
        for (q, h) in done {
            refs.insert(q, h);
            changed = true;
        }
    }
    if changed || written.record.as_ref() != Some(&content.record) {
        written.record = Some(content.record.clone());
        let mut record = content.record.clone();
        record.documents = content.docs.len();
        record.updated_ms = crate::now_ms();
        let json = serde_json::to_string(&record).unwrap_or_default();
        client.put(cfg.layout.host(&cfg.host_id), json, lease).await.map_err(err)?;
        tracing::info!(host = %cfg.host_id, documents = record.documents, "etcd: published");
    }
    Ok(())
}
