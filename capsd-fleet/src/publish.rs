//! Publishing one host: its record and documents under a lease kept alive, retried with
//! backoff while etcd is unreachable, caught up when it returns.
//!
//! The caller hands [`Content`] (record and documents) to a [`Publisher`] through
//! [`Publisher::update`], whenever it changes; the publisher's task writes only what changed
//! (a reference whose hash moved, a query gone, the record) in a few transactions. The
//! session loop:
//!
//! 1. connect, grant a lease of `ttl`, delete what an earlier session of the same host id
//!    left (its lease may still run), write everything;
//! 2. keep the lease alive every `ttl / 3`, write each new content at once;
//! 3. on any etcd error: log it, wait (100 ms doubling to 5 s), start again at 1. The
//!    caller is never blocked: `update` only replaces the latest content.
//!
//! [`Publisher::stop`] revokes the lease (every host key disappears at once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

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
    pub endpoints: Vec<String>,
    pub layout: Layout,
    pub host_id: String,
    /// Lease time to live: how long a host that died stays listed.
    pub ttl: Duration,
}

/// A running publisher task.
#[derive(Debug)]
pub struct Publisher {
    content: watch::Sender<Option<Arc<Content>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// How many times the content was written completely (for tests and metrics).
    pub published: watch::Receiver<u64>,
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
        let task = tokio::spawn(run(config, content_rx, stop_rx, published_tx));
        Ok(Publisher { content, stop, task, published })
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
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&cfg, &mut content, &mut stop, &published, &mut backoff).await {
            Ok(()) => return,
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
) -> Result<(), FleetError> {
    let ep = &cfg.endpoints;
    let err = |e| FleetError::etcd(ep, e);
    let mut client = crate::store::connect(ep).await?;
    let lease = client.lease_grant(cfg.ttl.as_secs() as i64, None).await.map_err(err)?.id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.map_err(err)?;
    tracing::info!(host = %cfg.host_id, lease, ttl_s = cfg.ttl.as_secs(), "etcd: lease granted");
    // An earlier session of this host id (a restart within its TTL) leaves keys on its own
    // lease: start clean.
    client.delete(cfg.layout.host_docs(&cfg.host_id), Some(DeleteOptions::new().with_prefix())).await.map_err(err)?;
    client.delete(cfg.layout.host(&cfg.host_id), None).await.map_err(err)?;
    let mut written = Written::default();
    let mut current = content.borrow_and_update().clone();
    if let Some(c) = &current {
        write(&mut client, cfg, lease, &mut written, c).await?;
        published.send_modify(|n| *n += 1);
    }
    *backoff = BACKOFF_MIN;
    let mut tick = tokio::time::interval(cfg.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(err)?;
                let answer = tokio::time::timeout(cfg.ttl / 3, responses.message()).await;
                match answer {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        return Err(FleetError::Invalid { what: "lease", value: lease.to_string(), reason: "expired (etcd was out of reach for longer than the TTL)".into() });
                    }
                    Ok(Ok(None)) => return Err(FleetError::Invalid { what: "lease", value: lease.to_string(), reason: "keep-alive stream closed".into() }),
                    Ok(Err(e)) => return Err(err(e)),
                    Err(_) => return Err(FleetError::Invalid { what: "lease", value: lease.to_string(), reason: "no keep-alive answer in time".into() }),
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
                    write(&mut client, cfg, lease, &mut written, c).await?;
                    published.send_modify(|n| *n += 1);
                }
            }
            _ = stop.changed() => {
                match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                    Ok(Ok(_)) => tracing::info!(host = %cfg.host_id, "etcd: lease revoked"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "etcd: revoking the lease failed; it expires by itself"),
                    Err(_) => tracing::warn!("etcd: revoking the lease timed out; it expires by itself"),
                }
                return Ok(());
            }
        }
    }
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
    client: &mut Client,
    cfg: &PublishConfig,
    lease: i64,
    written: &mut Written,
    content: &Content,
) -> Result<(), FleetError> {
    let refs = &mut written.refs;
    let ep = &cfg.endpoints;
    let put = || Some(PutOptions::new().with_lease(lease));
    let mut ops: Vec<(TxnOp, Option<(QueryKey, String)>)> = Vec::new();
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
            let put_doc = Txn::new()
                .when(vec![Compare::version(doc_key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(doc_key, text.as_bytes().to_vec(), None)]);
            ops.push((TxnOp::txn(put_doc), None));
        }
        ops.push((TxnOp::put(cfg.layout.host_doc(&cfg.host_id, q), hash.clone(), put()), Some((q.clone(), hash))));
    }
    let gone: Vec<QueryKey> = refs.keys().filter(|q| !content.docs.contains_key(*q)).cloned().collect();
    for q in gone {
        ops.push((TxnOp::delete(cfg.layout.host_doc(&cfg.host_id, &q), None), None));
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
        client.txn(Txn::new().and_then(txn_ops)).await.map_err(|e| FleetError::etcd(ep, e))?;
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
        client.put(cfg.layout.host(&cfg.host_id), json, put()).await.map_err(|e| FleetError::etcd(ep, e))?;
        tracing::info!(host = %cfg.host_id, documents = record.documents, "etcd: published");
    }
    Ok(())
}
