//! Reading the fleet from etcd: one snapshot of every host and document at one revision, and
//! garbage collection of documents no host refers to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capsd_core::DomainCapabilities;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::{FleetError, HostRecord, Layout, QueryKey};

/// Connect to etcd (`endpoints`: `http://HOST:PORT` or `HOST:PORT`), with bounded connect and
/// request times so a dead cluster answers with an error rather than a hang.
///
/// One member at a time: the endpoints are tried in turn (starting one further on each call
/// in this process) until one connects and answers a status request. The client's own
/// balancing over several endpoints failed requests routed to a killed member instead of
/// avoiding it; with one endpoint per client, a failed request makes the caller connect
/// again, to the next member.
pub async fn connect(endpoints: &[String]) -> Result<Client, FleetError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(FleetError::Invalid {
            what: "etcd endpoints",
            value: endpoints.join(","),
            reason: "give one or more HOST:PORT or http://HOST:PORT, comma-separated".into(),
        });
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..endpoints.len() {
        let ep = &endpoints[(start + i) % endpoints.len()];
        match Client::connect([ep], Some(opts.clone())).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tracing::debug!(endpoint = %ep, error = ?last, "etcd: member not answering; trying the next");
    }
    Err(FleetError::etcd(endpoints, last.unwrap_or(etcd_client::Error::InvalidArgs("no endpoint".into()))))
}

/// A host as read from the store.
#[derive(Debug, Clone)]
pub struct Host {
    pub record: HostRecord,
    /// Query → content hash.
    pub docs: BTreeMap<QueryKey, String>,
}

/// Every host and document at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The etcd revision read.
    pub revision: i64,
    pub hosts: BTreeMap<String, Host>,
    /// Hash → document text (libvirt's XML).
    pub texts: HashMap<String, Arc<str>>,
    /// Bytes of keys and values under the prefix.
    pub stored_bytes: u64,
    parsed: HashMap<String, Arc<DomainCapabilities>>,
}

impl Snapshot {
    /// Read the hosts and the documents under `layout` (two range reads at one revision).
    pub async fn read(client: &mut Client, endpoints: &[String], layout: &Layout) -> Result<Snapshot, FleetError> {
        let (hosts, revision) = range_all(client, endpoints, &layout.hosts(), 0).await?;
        let (docs, _) = range_all(client, endpoints, &layout.docs(), revision).await?;
        let mut s = Snapshot { revision, ..Snapshot::default() };
        let mut refs: Vec<(String, QueryKey, String)> = Vec::new();
        let host_prefix = layout.hosts();
        for kv in &hosts {
            s.stored_bytes += (kv.key().len() + kv.value().len()) as u64;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rest = &key[host_prefix.len().min(key.len())..];
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            match rest.split_once("/docs/") {
                Some((id, q)) => {
                    let q = QueryKey::parse(q)
                        .map_err(|e| FleetError::Corrupt { key: key.clone(), reason: e.to_string() })?;
                    refs.push((id.to_owned(), q, value));
                }
                None if !rest.contains('/') => {
                    let record: HostRecord = serde_json::from_str(&value)
                        .map_err(|e| FleetError::Corrupt { key: key.clone(), reason: format!("host record: {e}") })?;
                    s.hosts.insert(rest.to_owned(), Host { record, docs: BTreeMap::new() });
                }
                None => tracing::debug!(key, "ignoring an unknown key under hosts/"),
            }
        }
        for (id, q, hash) in refs {
            // References of a host whose record is not (or no longer) there are ignored.
            if let Some(h) = s.hosts.get_mut(&id) {
                h.docs.insert(q, hash);
            }
        }
        let doc_prefix = layout.docs();
        for kv in &docs {
            s.stored_bytes += (kv.key().len() + kv.value().len()) as u64;
            let key = String::from_utf8_lossy(kv.key());
            let hash = key[doc_prefix.len().min(key.len())..].to_owned();
            s.texts.insert(hash, Arc::from(String::from_utf8_lossy(kv.value()).as_ref()));
        }
        Ok(s)
    }

    /// The parsed document with this hash (each parsed once).
    pub fn document(&mut self, hash: &str) -> Result<Arc<DomainCapabilities>, FleetError> {
        if let Some(d) = self.parsed.get(hash) {
            return Ok(d.clone());
        }
        let text = self.texts.get(hash).ok_or_else(|| FleetError::Corrupt {
            key: format!("docs/{hash}"),
            reason: "referenced by a host but not stored".into(),
        })?;
        let d = Arc::new(
            capsd_core::parse_any(text)
                .map_err(|e| FleetError::Corrupt { key: format!("docs/{hash}"), reason: e.to_string() })?,
        );
        self.parsed.insert(hash.to_owned(), d.clone());
        Ok(d)
    }

    /// Hashes of the stored documents no host refers to.
    pub fn unreferenced(&self) -> Vec<String> {
        let used: HashSet<&String> = self.hosts.values().flat_map(|h| h.docs.values()).collect();
        let mut v: Vec<String> = self.texts.keys().filter(|h| !used.contains(h)).cloned().collect();
        v.sort();
        v
    }
}

/// Every key under `prefix` at `revision` (0: the current one), in pages that stay below
/// gRPC's message size limit (4 MiB); returns the revision read.
pub(crate) async fn range_all(
    client: &mut Client,
    endpoints: &[String],
    prefix: &str,
    revision: i64,
) -> Result<(Vec<etcd_client::KeyValue>, i64), FleetError> {
    /// Keys per page: documents are tens of KiB, so a page stays within a few MiB.
    const PAGE: i64 = 64;
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = revision;
    let mut out = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let mut r = client.get(from.clone(), Some(opts)).await.map_err(|e| FleetError::etcd(endpoints, e))?;
        if revision == 0 {
            revision = r.header().map_or(0, |h| h.revision());
        }
        let more = r.more();
        let kvs = r.take_kvs();
        let Some(last) = kvs.last() else { break };
        from = last.key().to_vec();
        from.push(0);
        out.extend(kvs);
        if !more {
            break;
        }
    }
    Ok((out, revision))
}

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Delete the documents no host refers to. The deletion is one transaction that only
/// happens when no key under `P/hosts/` was written after the snapshot it was computed from
/// (a compare on the whole range's modification revision), so a reference written meanwhile
/// makes it retry instead of losing its document. Documents referenced only by hosts
/// without a record yet are kept. Returns how many documents were deleted.
pub async fn gc(client: &mut Client, endpoints: &[String], layout: &Layout) -> Result<usize, FleetError> {
    for _ in 0..10 {
        let snap = Snapshot::read(client, endpoints, layout).await?;
        // References of hosts whose record is not there yet count too.
        let (hosts, _) = range_all(client, endpoints, &layout.hosts(), snap.revision).await?;
        let referenced: HashSet<String> = hosts
            .iter()
            .filter(|kv| String::from_utf8_lossy(kv.key()).contains("/docs/"))
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect();
        let dead: Vec<String> = snap.texts.keys().filter(|h| !referenced.contains(*h)).cloned().collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        let mut all_done = true;
        for chunk in dead.chunks(100) {
            let ops: Vec<TxnOp> = chunk.iter().map(|h| TxnOp::delete(layout.doc(h), None)).collect();
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(layout.hosts(), CompareOp::Less, snap.revision + 1)
                    .with_range(prefix_end(&layout.hosts()))])
                .and_then(ops);
            let r = client.txn(txn).await.map_err(|e| FleetError::etcd(endpoints, e))?;
            if !r.succeeded() {
                all_done = false;
                break;
            }
            deleted += chunk.len();
        }
        if all_done {
            tracing::info!(deleted, "deleted unreferenced documents");
            return Ok(deleted);
        }
        tracing::debug!("hosts changed during gc; reading again");
    }
    Err(FleetError::Invalid {
        what: "gc",
        value: layout.prefix().to_owned(),
        reason: "the hosts kept changing during 10 attempts; try again".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/capsd/hosts/"), b"/capsd/hosts0".to_vec());
    }
}
