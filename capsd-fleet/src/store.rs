//! Reading the fleet from etcd: the hosts and the references a question needs at one
//! revision, the documents they name (each fetched once, its SHA-256 checked against its
//! key, parsed once), and garbage collection of documents no host refers to.
//!
//! Nothing read is trusted: a damaged host record, a malformed reference, a document whose
//! hash does not match, one that does not parse or is missing, or a key that belongs to no
//! layout is recorded as a [`Problem`] (against its host when there is one) and left out; the
//! rest of the fleet is answered. Ranges are read in pages that shrink when a page is too
//! large for a reply, down to one key; a value too large even alone is reported and skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use capsd_core::DomainCapabilities;

use crate::etcd::{self, Client, Compare, EtcdConfig, Op, Range, Txn};
use crate::{content_hash, FleetError, HostRecord, Layout, QueryKey};

/// Largest host record believed (an agent's is a few hundred bytes).
pub const MAX_RECORD: usize = 64 << 10;
/// Bytes a page of a range aims at, well below the client's 64 MiB limit
/// ([`etcd::MAX_REPLY`]; etcd's own server sends answers of any size). Every key of a range
/// is kept until the range is read, so a page's size adds little to the peak; what it
/// changes is the number of requests, and etcd 3.4 walks the whole rest of the range's
/// index and lists its revisions for every page: reading the 100,000 references of one
/// query of the bench fleet (`cargo xtask bench fleet --hosts 100000`) cost etcd 430-810 ms
/// of CPU in pages of 10,000 keys, 170-210 ms in one page.
pub const PAGE_BYTES: usize = 16 << 20;
/// Largest document believed (libvirt's are tens of KiB; etcd's default request limit is 1.5 MiB).
pub const MAX_DOCUMENT: usize = 4 << 20;

/// Connect to etcd (see [`etcd::connect`]), the error naming the endpoints.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, FleetError> {
    if cfg.endpoints.is_empty() || cfg.endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(FleetError::Invalid {
            what: "etcd endpoints",
            value: cfg.endpoints_str(),
            reason: "give one or more HOST:PORT, http://HOST:PORT or https://HOST:PORT, comma-separated".into(),
        });
    }
    etcd::connect(cfg).await.map_err(|e| FleetError::etcd(&cfg.endpoints_str(), e))
}

/// A host as read from the store.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its record (only the id when records were not read, or the record is damaged).
    pub record: HostRecord,
    /// Why the record is not usable (damaged, too large): the host is listed, never believed.
    pub damaged: Option<String>,
    /// Query → content hash (the references read).
    pub docs: Docs,
}

/// A host's references, query → content hash, in query order: a sorted vector (a host has
/// one to a few dozen; a `BTreeMap` would allocate a whole node, about 1 KiB, per host, which
/// at 100,000 hosts was most of `check`'s memory and time). Read like a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Docs(Vec<(QueryKey, String)>);

impl Docs {
    pub fn new() -> Docs {
        Docs::default()
    }
    fn find(&self, q: &QueryKey) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(q))
    }
    pub fn get(&self, q: &QueryKey) -> Option<&String> {
        self.find(q).ok().map(|i| &self.0[i].1)
    }
    pub fn contains_key(&self, q: &QueryKey) -> bool {
        self.find(q).is_ok()
    }
    /// The entry for virt type, arch and machine (`None`: the default) without building
    /// a [`QueryKey`] (asked once per host of a fleet).
    pub fn get_parts(&self, virt_type: &str, arch: &str, machine: Option<&str>) -> Option<(&QueryKey, &String)> {
        let want = (virt_type, arch, machine);
        self.0
            .binary_search_by(|(k, _)| (k.virt_type.as_str(), k.arch.as_str(), k.machine.as_deref()).cmp(&want))
            .ok()
            .map(|i| (&self.0[i].0, &self.0[i].1))
    }
    /// Set `q`'s hash; the one it replaces.
    pub fn insert(&mut self, q: QueryKey, hash: String) -> Option<String> {
        match self.find(&q) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, hash)),
            Err(i) => {
                self.0.insert(i, (q, hash));
                None
            }
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (&QueryKey, &String)> {
        self.0.iter().map(|(q, h)| (q, h))
    }
    pub fn keys(&self) -> impl Iterator<Item = &QueryKey> {
        self.0.iter().map(|(q, _)| q)
    }
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(_, h)| h)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(QueryKey, String)> for Docs {
    fn from_iter<I: IntoIterator<Item = (QueryKey, String)>>(iter: I) -> Docs {
        let mut d = Docs::new();
        for (q, h) in iter {
            d.insert(q, h);
        }
        d
    }
}

impl<const N: usize> From<[(QueryKey, String); N]> for Docs {
    fn from(a: [(QueryKey, String); N]) -> Docs {
        a.into_iter().collect()
    }
}

/// Something under the prefix that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub key: String,
    /// The host it belongs to, when the key names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub reason: String,
}

/// Which part of the fleet to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every host record, reference and (on demand) document: `fleet hosts`, `diff`.
    All,
    /// The references for one virt type (and arch, and machine when given): `check`, `baseline`.
    /// `records`: read the host records too (needed for selectors and a domain without arch);
    /// without, hosts are known by id alone. `prefetch`: fetch the documents the query's
    /// references name as soon as the references are read, while the host records (or ids)
    /// still come (for a question about every host, which needs nearly all of them;
    /// [`Snapshot::fetch`] then takes those it is asked for).
    Query { virt_type: String, arch: Option<String>, machine: Option<String>, records: bool, prefetch: bool },
}

/// A document as fetched.
#[derive(Debug, Clone)]
enum Doc {
    Ok(Arc<DomainCapabilities>),
    Bad(String),
}

/// The hosts and references at one revision, and the documents fetched for them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The etcd revision read.
    pub revision: i64,
    pub hosts: BTreeMap<String, Host>,
    /// What was left out (damaged keys, junk).
    pub problems: Vec<Problem>,
    /// Bytes of keys and values read.
    pub stored_bytes: u64,
    docs: HashMap<String, Doc>,
    /// Documents fetched ahead ([`Scope::Query`]'s `prefetch`), not yet asked for: their
    /// problems are reported only when [`Snapshot::fetch`] takes them.
    prefetched: HashMap<String, (String, Doc)>,
}

impl Snapshot {
    /// Read what `scope` needs under `layout` at one revision.
    pub async fn read(client: &Client, layout: &Layout, scope: &Scope) -> Result<Snapshot, FleetError> {
        let mut s = Snapshot::default();
        let records = match scope {
            Scope::All => true,
            Scope::Query { records, .. } => *records,
        };
        // One revision for everything read: the current one.
        let hosts_prefix = layout.hosts();
        s.revision =
            client.range(&Range::key(hosts_prefix.clone())).await.map_err(|e| FleetError::etcd("", e))?.revision;
        // The references the question needs: everything, or the query's own range
        // `P/refs/VIRTTYPE/ARCH/MACHINE/` (without an arch: that range of each arch an agent
        // publishes, then of any other arch a host record names).
        let first_arches: Vec<String> = match scope {
            Scope::Query { arch: Some(a), .. } => vec![a.clone()],
            _ => crate::ARCHES.iter().map(|a| (*a).to_owned()).collect(),
        };
        let refs_prefixes: Vec<String> = match scope {
            Scope::All => vec![layout.refs()],
            Scope::Query { virt_type, machine, .. } => first_arches
                .iter()
                .map(|a| layout.refs_of(virt_type, Some(a), Some(machine_segment(machine.as_deref()))))
                .collect(),
        };
        // Host records (or their ids alone) and the references, read at once (streams of one
        // connection; etcd serves them in parallel), then, when asked, the documents the
        // references name while the hosts still come.
        let prefetch = matches!(scope, Scope::Query { prefetch: true, .. });
        let refs_then_docs = async {
            let (refs, problems) = range_many(client, refs_prefixes, s.revision).await?;
            let docs = if prefetch {
                let hashes: BTreeSet<&[u8]> =
                    refs.iter().map(|kv| &kv.value[..]).filter(|v| is_hash_bytes(v)).collect();
                // 64 ASCII hex digits: UTF-8.
                let hashes = hashes.into_iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
                fetch_documents(client, layout, s.revision, hashes).await?
            } else {
                Vec::new()
            };
            Ok::<_, FleetError>((refs, problems, docs))
        };
        let mut p_hosts = Vec::new();
        let (hosts, refs) =
            tokio::join!(range_all(client, &mut p_hosts, &hosts_prefix, s.revision, !records), refs_then_docs);
        let ((kvs, _), (refs, p_refs, docs)) = (hosts?, refs?);
        for f in docs {
            s.stored_bytes += f.bytes;
            s.prefetched.insert(f.hash, (f.key, f.doc));
        }
        s.problems.extend(p_hosts);
        s.problems.extend(p_refs);
        // Keys come in order: the map is built at once from them (full nodes, no splits).
        let mut hosts = Vec::with_capacity(kvs.len());
        for kv in kvs {
            s.stored_bytes += (kv.key.len() + kv.value.len()) as u64;
            let key = kv.key_str().into_owned();
            let id = &key[hosts_prefix.len().min(key.len())..];
            if crate::validate_host_id(id).is_err() {
                s.problems.push(Problem { key, host: None, reason: "not a host record key (bad host id)".into() });
                continue;
            }
            let mut host = Host { record: bare_record(id), damaged: None, docs: Docs::new() };
            if records {
                match parse_record(id, &kv.value) {
                    Ok(r) => host.record = r,
                    Err(reason) => {
                        s.problems.push(Problem {
                            key: key.clone(),
                            host: Some(id.to_owned()),
                            reason: reason.clone(),
                        });
                        host.damaged = Some(reason);
                    }
                }
            }
            hosts.push((id.to_owned(), host));
        }
        // References come in host order within each query's range, as the hosts do: each is
        // matched by stepping through the hosts' vector, before the map is built.
        add_refs(&mut s.problems, &mut s.stored_bytes, layout, refs, &mut SortedHosts { v: &mut hosts, next: 0 });
        s.hosts = hosts.into_iter().collect();
        if let Scope::Query { virt_type, arch, machine, .. } = scope {
            let arch_of = |h: &Host| arch.clone().unwrap_or_else(|| h.record.cpu.arch.clone());
            let usable = |a: &String| QueryKey::new(virt_type, a, None).is_ok();
            // A host record naming an arch none of the ranges read covers.
            let extra: BTreeSet<String> = s
                .hosts
                .values()
                .filter(|h| h.damaged.is_none())
                .map(arch_of)
                .filter(|a| usable(a) && !first_arches.contains(a))
                .collect();
            let mseg = machine_segment(machine.as_deref());
            s.read_many(client, layout, extra.iter().map(|a| layout.refs_of(virt_type, Some(a), Some(mseg))).collect())
                .await?;
            // A machine named that is not an alias a host publishes (a canonical name such
            // as pc-q35-7.2): that host's documents of the same virt type and arch are
            // candidates.
            if let Some(m) = machine {
                let wider: BTreeSet<String> = s
                    .hosts
                    .values()
                    .filter(|h| h.damaged.is_none())
                    .filter(|h| {
                        let arch = arch.as_deref().unwrap_or(&h.record.cpu.arch);
                        h.docs.get_parts(virt_type, arch, Some(m)).is_none()
                    })
                    .map(arch_of)
                    .filter(usable)
                    .collect();
                s.read_many(client, layout, wider.iter().map(|a| layout.refs_of(virt_type, Some(a), None)).collect())
                    .await?;
            }
        }
        if scope == &Scope::All {
            // Junk elsewhere under the prefix is reported too.
            let all = layout.all();
            let (kvs, _) = range_all(client, &mut s.problems, &all, s.revision, true).await?;
            for kv in kvs {
                let key = kv.key_str().into_owned();
                let rest = &key[all.len().min(key.len())..];
                let known = ["hosts/", "refs/", "claims/"].iter().any(|p| rest.starts_with(p))
                    || rest.strip_prefix("docs/").is_some_and(is_hash);
                if !known {
                    s.problems.push(Problem { key, host: None, reason: "not a key of capsd's layout".into() });
                }
            }
        }
        Ok(s)
    }

    async fn read_many(&mut self, client: &Client, layout: &Layout, prefixes: Vec<String>) -> Result<(), FleetError> {
        if prefixes.is_empty() {
            return Ok(());
        }
        let (kvs, problems) = range_many(client, prefixes, self.revision).await?;
        self.problems.extend(problems);
        add_refs(&mut self.problems, &mut self.stored_bytes, layout, kvs, &mut self.hosts);
        Ok(())
    }

    /// Fetch the documents with these hashes (those not fetched yet), checking each
    /// against its hash and parsing it; failures are kept per document (see [`Self::document`]).
    pub async fn fetch(
        &mut self,
        client: &Client,
        layout: &Layout,
        hashes: impl IntoIterator<Item = String>,
    ) -> Result<(), FleetError> {
        let mut want = Vec::new();
        let mut got = Vec::new();
        let mut seen = HashSet::new();
        for h in hashes {
            if self.docs.contains_key(&h) || !seen.insert(h.clone()) {
                continue;
            }
            match self.prefetched.remove(&h) {
                Some((key, doc)) => got.push(Fetched { hash: h, key, doc, bytes: 0 }),
                None => want.push(h),
            }
        }
        got.extend(fetch_documents(client, layout, self.revision, want).await?);
        for f in got {
            self.stored_bytes += f.bytes;
            if let Doc::Bad(reason) = &f.doc {
                self.problems.push(Problem { key: f.key, host: None, reason: reason.clone() });
            }
            self.docs.insert(f.hash, f.doc);
        }
        Ok(())
    }

    /// The parsed document with this hash (fetched by [`Self::fetch`]); an error names the
    /// document and what is wrong with it.
    pub fn document(&self, hash: &str) -> Result<Arc<DomainCapabilities>, FleetError> {
        match self.docs.get(hash) {
            Some(Doc::Ok(d)) => Ok(d.clone()),
            Some(Doc::Bad(reason)) => Err(FleetError::Corrupt { key: format!("docs/{hash}"), reason: reason.clone() }),
            None => Err(FleetError::Corrupt { key: format!("docs/{hash}"), reason: "not fetched".into() }),
        }
    }

    /// Put a document as if fetched (checked the same way): for tests and tools.
    pub fn insert_document(&mut self, hash: &str, value: &[u8]) {
        let doc = check_document(&format!("docs/{hash}"), hash, value);
        self.docs.insert(hash.to_owned(), doc);
    }

    /// How many distinct documents were fetched (good or bad).
    pub fn fetched(&self) -> usize {
        self.docs.len()
    }
}

/// Where [`add_refs`] finds a host by id.
trait HostIndex {
    fn host_mut(&mut self, id: &str) -> Option<&mut Host>;
}

impl HostIndex for BTreeMap<String, Host> {
    fn host_mut(&mut self, id: &str) -> Option<&mut Host> {
        self.get_mut(id)
    }
}

/// Hosts in id order, searched from the one after the last found (references of one query
/// come in id order too).
struct SortedHosts<'a> {
    v: &'a mut Vec<(String, Host)>,
    next: usize,
}

impl HostIndex for SortedHosts<'_> {
    fn host_mut(&mut self, id: &str) -> Option<&mut Host> {
        let i = match self.v.get(self.next) {
            Some((k, _)) if k == id => self.next,
            _ => self.v.binary_search_by(|(k, _)| k.as_str().cmp(id)).ok()?,
        };
        self.next = i + 1;
        Some(&mut self.v[i].1)
    }
}

/// Take references read (checked: key layout, host id, a hash as value) into the hosts.
fn add_refs(
    problems: &mut Vec<Problem>,
    stored_bytes: &mut u64,
    layout: &Layout,
    kvs: Vec<etcd::KeyValue>,
    hosts: &mut impl HostIndex,
) {
    let refs = layout.refs();
    // A range holds one query's references (or a few, in key order): its key segment is
    // parsed once, not per host.
    let mut last: Option<(Vec<u8>, QueryKey)> = None;
    for kv in kvs {
        *stored_bytes += (kv.key.len() + kv.value.len()) as u64;
        let rest = kv.key.get(refs.len()..).filter(|_| kv.key.starts_with(refs.as_bytes())).unwrap_or(&[]);
        let split = rest.iter().rposition(|&b| b == b'/').map(|i| (&rest[..i], &rest[i + 1..]));
        let Some((q_bytes, id_bytes)) = split else {
            problems.push(Problem { key: kv.key_str().into_owned(), host: None, reason: "not a reference key".into() });
            continue;
        };
        let id = match std::str::from_utf8(id_bytes) {
            Ok(id) => std::borrow::Cow::Borrowed(id),
            Err(_) => String::from_utf8_lossy(id_bytes),
        };
        let q = match &last {
            Some((b, q)) if b.as_slice() == q_bytes => Ok(q.clone()),
            _ => QueryKey::parse(&String::from_utf8_lossy(q_bytes)),
        };
        let q = match q {
            Ok(q) if crate::validate_host_id(&id).is_ok() => q,
            Ok(_) => {
                problems.push(Problem {
                    key: kv.key_str().into_owned(),
                    host: None,
                    reason: "not a reference key (bad host id)".into(),
                });
                continue;
            }
            Err(e) => {
                problems.push(Problem {
                    key: kv.key_str().into_owned(),
                    host: Some(id.into_owned()),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if last.as_ref().is_none_or(|(b, _)| b.as_slice() != q_bytes) {
            last = Some((q_bytes.to_vec(), q.clone()));
        }
        if !is_hash_bytes(&kv.value) {
            let hash = String::from_utf8_lossy(&kv.value);
            let shown: String = hash.chars().take(80).collect();
            problems.push(Problem {
                key: kv.key_str().into_owned(),
                host: Some(id.into_owned()),
                reason: format!("not a document hash ({} bytes: {})", kv.value.len(), shown.escape_debug()),
            });
            continue;
        }
        // References of a host whose record is not (or no longer) there are left out.
        if let Some(h) = hosts.host_mut(&id) {
            // 64 ASCII hex digits: UTF-8.
            h.docs.insert(q, String::from_utf8(kv.value).unwrap_or_default());
        }
    }
}

/// A document fetched and checked: its hash, key, what it is, bytes read.
struct Fetched {
    hash: String,
    key: String,
    doc: Doc,
    bytes: u64,
}

/// Fetch the documents with these hashes at `revision` (many requests in flight on the one
/// connection), then check and parse them on as many threads as there are CPUs (parsing is
/// most of the work: a few hundred documents of tens of KiB each).
async fn fetch_documents(
    client: &Client,
    layout: &Layout,
    revision: i64,
    hashes: Vec<String>,
) -> Result<Vec<Fetched>, FleetError> {
    /// Requests in flight at once.
    const IN_FLIGHT: usize = 64;
    let mut raw: Vec<(String, String, Option<Vec<u8>>)> = Vec::with_capacity(hashes.len());
    for chunk in hashes.chunks(IN_FLIGHT) {
        let mut set = tokio::task::JoinSet::new();
        for hash in chunk {
            let (c, key, hash) = (client.clone(), layout.doc(hash), hash.clone());
            set.spawn(async move {
                let r = c.range(&at_revision(Range::key(key.clone()), revision)).await;
                (hash, key, r)
            });
        }
        while let Some(j) = set.join_next().await {
            let (hash, key, r) = j.map_err(|e| FleetError::Invalid {
                what: "etcd read",
                value: String::new(),
                reason: format!("a document's task failed: {e}"),
            })?;
            let r = r.map_err(|e| FleetError::etcd("", e))?;
            raw.push((hash, key, r.kvs.into_iter().next().map(|kv| kv.value)));
        }
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let per = raw.len().div_ceil(workers).max(1);
    let mut parts = Vec::new();
    while !raw.is_empty() {
        let part: Vec<_> = raw.drain(..per.min(raw.len())).collect();
        parts.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(hash, key, value)| match value {
                    None => Fetched {
                        doc: Doc::Bad(format!("document {key} is referenced but not stored")),
                        hash,
                        key,
                        bytes: 0,
                    },
                    Some(v) => {
                        Fetched { doc: check_document(&key, &hash, &v), bytes: (key.len() + v.len()) as u64, hash, key }
                    }
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend(p.await.map_err(|e| FleetError::Invalid {
            what: "documents",
            value: String::new(),
            reason: format!("checking documents failed: {e}"),
        })?);
    }
    Ok(out)
}

fn bare_record(id: &str) -> HostRecord {
    HostRecord {
        id: id.to_owned(),
        capsd_version: String::new(),
        driver: String::new(),
        libvirt_version: None,
        emulators: Vec::new(),
        cpu: crate::Cpu::default(),
        updated_ms: 0,
        inputs_changed_ms: None,
        documents: 0,
    }
}

fn parse_record(id: &str, value: &[u8]) -> Result<HostRecord, String> {
    if value.len() > MAX_RECORD {
        return Err(format!("host record of {} bytes (more than {MAX_RECORD})", value.len()));
    }
    let r: HostRecord = serde_json::from_slice(value).map_err(|e| format!("host record: {e}"))?;
    if r.id != id {
        return Err(format!("host record names another host ('{}')", r.id.escape_debug()));
    }
    Ok(r)
}

/// The key segment of a machine (`@default` for none).
fn machine_segment(m: Option<&str>) -> &str {
    m.unwrap_or(crate::DEFAULT_MACHINE)
}

/// 64 lowercase hex digits.
fn is_hash(s: &str) -> bool {
    is_hash_bytes(s.as_bytes())
}

fn is_hash_bytes(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn check_document(key: &str, hash: &str, value: &[u8]) -> Doc {
    if value.len() > MAX_DOCUMENT {
        return Doc::Bad(format!("document {key} of {} bytes (more than {MAX_DOCUMENT})", value.len()));
    }
    let actual = content_hash(value);
    if actual != hash {
        return Doc::Bad(format!("document {key} does not match its hash (its SHA-256 is {actual}): not used"));
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Doc::Bad(format!("document {key} is not UTF-8"));
    };
    match capsd_core::parse_any(text) {
        Ok(d) => Doc::Ok(Arc::new(d)),
        Err(e) => Doc::Bad(format!("document {key} does not parse: {e}")),
    }
}

/// `r` read at `revision` (the one a linearizable read of this client's member answered
/// first: [`Snapshot::read`]'s, or [`range_all`]'s first page), served by the member alone
/// (`serializable`). A linearizable read asks the cluster's leader whether the member is
/// current, a round of messages per request; at a fixed revision there is nothing to ask:
/// the keys at a revision never change, and a member that has not applied it yet (a
/// lagging follower) refuses the request ("required revision is a future revision")
/// rather than answer from older state. The first read, which picks the revision, stays
/// linearizable, so the fleet is read as of when the command started, on one member as on
/// three; a compacted revision is refused either way.
fn at_revision(r: Range, revision: i64) -> Range {
    Range { revision, serializable: revision != 0, ..r }
}

/// Every key under `prefix` at `revision` (0: the current one), in pages sized by bytes
/// (about [`PAGE_BYTES`] each, from the size of the keys read so far); returns the revision
/// read. A page too large for a reply is read again in smaller pages, down to one key; a key
/// whose value is too large alone is reported in `problems` and skipped.
pub(crate) async fn range_all(
    client: &Client,
    problems: &mut Vec<Problem>,
    prefix: &str,
    revision: i64,
    keys_only: bool,
) -> Result<(Vec<etcd::KeyValue>, i64), FleetError> {
    /// Keys per page at first: references and records are small (a few hundred bytes, so
    /// a page is a few MiB). Large pages also matter to etcd 3.4, which walks the whole
    /// rest of the range's index for every page.
    const PAGE: i64 = 10_000;
    /// Most keys per page however small they are.
    const MAX_PAGE: i64 = 250_000;
    let end = etcd::prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = revision;
    let mut page = if keys_only { MAX_PAGE } else { PAGE };
    let first_page = page;
    let mut out = Vec::new();
    loop {
        let r = at_revision(
            Range { key: from.clone(), range_end: end.clone(), limit: page, keys_only, ..Range::default() },
            revision,
        );
        let r = match client.range(&r).await {
            Ok(r) => r,
            Err(e) if too_large(&e) && page > 1 => {
                page = (page / 8).max(1);
                tracing::debug!(page, prefix, "etcd: a page too large for a reply; smaller pages");
                continue;
            }
            Err(e) if too_large(&e) => {
                // One value too large alone: name its key, skip it.
                let k = at_revision(
                    Range { key: from.clone(), range_end: end.clone(), limit: 1, keys_only: true, ..Range::default() },
                    revision,
                );
                let r = client.range(&k).await.map_err(|e| FleetError::etcd("", e))?;
                let Some(kv) = r.kvs.into_iter().next() else { break };
                problems.push(Problem {
                    key: kv.key_str().into_owned(),
                    host: None,
                    reason: format!("value too large to read ({e})"),
                });
                from = kv.key;
                from.push(0);
                page = first_page;
                continue;
            }
            Err(e) => return Err(FleetError::etcd("", e)),
        };
        if revision == 0 {
            revision = r.revision;
        }
        let Some(last) = r.kvs.last() else { break };
        from = last.key.clone();
        from.push(0);
        let more = r.more;
        // The next page: about PAGE_BYTES at this page's bytes per key.
        let bytes: usize = r.kvs.iter().map(|kv| kv.key.len() + kv.value.len() + 32).sum();
        page = ((PAGE_BYTES * r.kvs.len() / bytes.max(1)) as i64).clamp(1, MAX_PAGE);
        out.extend(r.kvs);
        if !more {
            break;
        }
    }
    Ok((out, revision))
}

/// Every key under each of `prefixes` at `revision`, the ranges read at once (see
/// [`range_all`]); keys in the order of `prefixes`, then of the keys.
async fn range_many(
    client: &Client,
    prefixes: Vec<String>,
    revision: i64,
) -> Result<(Vec<etcd::KeyValue>, Vec<Problem>), FleetError> {
    let mut set = tokio::task::JoinSet::new();
    for (i, prefix) in prefixes.into_iter().enumerate() {
        let c = client.clone();
        set.spawn(async move {
            let mut problems = Vec::new();
            let r = range_all(&c, &mut problems, &prefix, revision, false).await;
            (i, r.map(|(kvs, _)| (kvs, problems)))
        });
    }
    let mut parts = Vec::new();
    while let Some(j) = set.join_next().await {
        let (i, r) = j.map_err(|e| FleetError::Invalid {
            what: "etcd read",
            value: String::new(),
            reason: format!("a range's task failed: {e}"),
        })?;
        parts.push((i, r?));
    }
    parts.sort_by_key(|(i, _)| *i);
    let (mut kvs, mut problems) = (Vec::new(), Vec::new());
    for (_, (k, p)) in parts {
        kvs.extend(k);
        problems.extend(p);
    }
    Ok((kvs, problems))
}

/// How many keys are under `prefix` and their keys' and values' bytes (for measurements).
pub async fn measure(client: &Client, prefix: &str) -> Result<(usize, u64), FleetError> {
    let mut problems = Vec::new();
    let (kvs, _) = range_all(client, &mut problems, prefix, 0, false).await?;
    Ok((kvs.len(), kvs.iter().map(|kv| (kv.key.len() + kv.value.len()) as u64).sum()))
}

/// A reply refused for its size (by etcd's gRPC layer or our reader).
fn too_large(e: &etcd::EtcdError) -> bool {
    let s = e.to_string();
    s.contains("larger than max") || s.contains("length limit exceeded") || s.contains("too large")
}

/// Delete the documents no host refers to. Only the documents' keys are read (never their
/// values), so documents of any size go. The deletion is one transaction per 100 documents
/// that only happens when no reference under `P/refs/` was written after the revision the
/// references were read at, so a reference written meanwhile makes it retry instead of
/// losing its document. Returns how many documents were deleted.
pub async fn gc(client: &Client, layout: &Layout) -> Result<usize, FleetError> {
    for _ in 0..10 {
        let mut problems = Vec::new();
        let (refs, revision) = range_all(client, &mut problems, &layout.refs(), 0, false).await?;
        let referenced: HashSet<String> =
            refs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect();
        let (docs, _) = range_all(client, &mut problems, &layout.docs(), revision, true).await?;
        let docs_prefix = layout.docs();
        let dead: Vec<Vec<u8>> = docs
            .into_iter()
            .filter(|kv| !referenced.contains(kv.key_str().get(docs_prefix.len()..).unwrap_or("")))
            .map(|kv| kv.key)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        let mut all_done = true;
        for chunk in dead.chunks(100) {
            let refs_prefix = layout.refs();
            let txn = Txn {
                compare: vec![Compare::ModLessInRange {
                    key: refs_prefix.as_bytes().to_vec(),
                    end: etcd::prefix_end(refs_prefix.as_bytes()),
                    revision: revision + 1,
                }],
                success: chunk.iter().map(|k| Op::delete(k.clone())).collect(),
                failure: Vec::new(),
            };
            let r = client.txn(&txn).await.map_err(|e| FleetError::etcd("", e))?;
            if !r.succeeded {
                all_done = false;
                break;
            }
            deleted += chunk.len();
        }
        if all_done {
            tracing::info!(deleted, "deleted unreferenced documents");
            return Ok(deleted);
        }
        tracing::debug!("references changed during gc; reading again");
    }
    Err(FleetError::Invalid {
        what: "gc",
        value: layout.prefix().to_owned(),
        reason: "the references kept changing during 10 attempts; try again".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_checked_against_their_hash() {
        let text =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../driver-test/fixtures/x86_64-kvm-q35.xml")).unwrap();
        let hash = content_hash(&text);
        assert!(matches!(check_document("k", &hash, &text), Doc::Ok(_)));
        let forged = String::from_utf8(text.clone()).unwrap().replace("<vcpu max='", "<vcpu max='4096' x='");
        match check_document("P/docs/x", &hash, forged.as_bytes()) {
            Doc::Bad(r) => assert!(r.contains("P/docs/x") && r.contains("does not match its hash"), "{r}"),
            Doc::Ok(_) => panic!("a forged document was believed"),
        }
    }

    #[test]
    fn docs_are_found_by_their_parts_as_by_their_key() {
        let keys = ["kvm/x86_64/@default", "kvm/x86_64/pc", "kvm/x86_64/q35", "kvm/i686/pc", "qemu/x86_64/@default"];
        let docs: Docs = keys.iter().map(|k| (QueryKey::parse(k).unwrap(), format!("h-{k}"))).collect();
        for k in keys.iter().chain(&["kvm/aarch64/virt", "kvm/x86_64/virt", "qemu/x86_64/q35", "kvm/i686/@default"]) {
            let q = QueryKey::parse(k).unwrap();
            let found = docs.get_parts(&q.virt_type, &q.arch, q.machine.as_deref());
            assert_eq!(found.map(|(_, h)| h), docs.get(&q), "{k}");
            assert_eq!(found.map(|(fq, _)| fq), docs.get(&q).map(|_| &q), "{k}");
        }
    }

    #[test]
    fn references_are_checked_one_by_one_in_a_range_of_one_query() {
        // Both ways of finding a host: the map (a later read) and the sorted vector stepped
        // through (the first read), which must also find hosts out of order ("a" again after
        // "c", a host without a reference in between).
        let layout = Layout::new("/p").unwrap();
        let (h1, h2) = ("1".repeat(64), "2".repeat(64));
        let kv = |k: &str, v: &str| etcd::KeyValue { key: k.into(), value: v.into(), ..Default::default() };
        let refs = || {
            vec![
                kv("/p/refs/kvm/x86_64/q35/a", &h1),
                kv("/p/refs/kvm/x86_64/q35/b", "not a hash"),
                kv("/p/refs/kvm/x86_64/q35/bad id", &h1),
                kv("/p/refs/kvm/x86_64/q35/c", &h1),
                kv("/p/refs/kvm/x86_64/q35/e", &h2),
                kv("/p/refs/kvm/x86 64/q35/a", &h2),
                kv("/p/refs/kvm/x86_64/@default/b", &h2),
                kv("/p/refs/kvm/x86_64/pc/a", &h2),
                kv("/p/refs/junk", &h2),
            ]
        };
        let host = |id: &str| (id.to_owned(), Host { record: bare_record(id), damaged: None, docs: Docs::new() });
        let mut by_map = Snapshot { hosts: ["a", "b", "d", "e"].into_iter().map(host).collect(), ..Default::default() };
        add_refs(&mut by_map.problems, &mut by_map.stored_bytes, &layout, refs(), &mut by_map.hosts);
        let mut by_vec = Snapshot::default();
        let mut v: Vec<_> = ["a", "b", "d", "e"].into_iter().map(host).collect();
        add_refs(
            &mut by_vec.problems,
            &mut by_vec.stored_bytes,
            &layout,
            refs(),
            &mut SortedHosts { v: &mut v, next: 0 },
        );
        by_vec.hosts = v.into_iter().collect();
        let q = |s: &str| QueryKey::parse(s).unwrap();
        for s in [by_map, by_vec] {
            assert_eq!(
                s.hosts["a"].docs,
                Docs::from([(q("kvm/x86_64/q35"), h1.clone()), (q("kvm/x86_64/pc"), h2.clone())])
            );
            assert_eq!(s.hosts["b"].docs, Docs::from([(q("kvm/x86_64/@default"), h2.clone())]));
            assert!(s.hosts["d"].docs.is_empty());
            assert_eq!(s.hosts["e"].docs, Docs::from([(q("kvm/x86_64/q35"), h2.clone())]));
            let problems: Vec<&str> = s.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                problems,
                [
                    "/p/refs/kvm/x86_64/q35/b",
                    "/p/refs/kvm/x86_64/q35/bad id",
                    "/p/refs/kvm/x86 64/q35/a",
                    "/p/refs/junk"
                ]
            );
            assert_eq!(s.problems[0].host.as_deref(), Some("b"));
        }
    }

    #[test]
    fn records_must_be_small_json_of_their_own_host() {
        assert!(parse_record("a", &vec![b' '; MAX_RECORD + 1]).unwrap_err().contains("bytes"));
        assert!(parse_record("a", b"{").unwrap_err().contains("host record"));
        let r = serde_json::to_vec(&bare_record("b")).unwrap();
        assert!(parse_record("a", &r).unwrap_err().contains("another host"));
        parse_record("b", &r).unwrap();
    }
}
