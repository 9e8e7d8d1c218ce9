//! `check`, `baseline` and `diff` across the hosts of a [`Snapshot`].
//!
//! Which document of a host answers a domain: the one published for the domain's virt
//! type, arch (default: the host's) and machine: exactly the alias key when the domain names
//! one (`q35`), else a document of that virt type and arch whose `<machine>` is the
//! domain's (`pc-q35-7.2`), and the default machine's document when the domain names no
//! machine. A host with no such document is `unknown` for that domain: it states nothing
//! about it, which is not a "no".

use std::sync::Arc;

use capsd_analysis::{Domain, Finding, Verdict};
use capsd_core::DomainCapabilities;
use serde::Serialize;

use crate::store::{Host, Snapshot};
use crate::{FleetError, QueryKey};

/// Which hosts: named ones, and/or those whose record matches every selector.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Host ids (empty: every host).
    pub hosts: Vec<String>,
    /// `name=value` on the host record's fields (see [`crate::HostRecord::fields`]).
    pub selectors: Vec<(String, String)>,
}

impl Selection {
    /// Parse `NAME=VALUE` selectors.
    pub fn parse_selector(s: &str) -> Result<(String, String), FleetError> {
        const NAMES: [&str; 9] = [
            "id",
            "driver",
            "capsd_version",
            "libvirt_version",
            "arch",
            "cpu.vendor",
            "cpu.model",
            "emulator",
            "qemu_version",
        ];
        let Some((n, v)) = s.split_once('=') else {
            return Err(FleetError::Invalid {
                what: "selector",
                value: s.to_owned(),
                reason: format!("expected NAME=VALUE with NAME one of {}", NAMES.join(", ")),
            });
        };
        if !NAMES.contains(&n) {
            return Err(FleetError::Invalid {
                what: "selector",
                value: s.to_owned(),
                reason: format!("unknown field '{n}'; fields: {}", NAMES.join(", ")),
            });
        }
        Ok((n.to_owned(), v.to_owned()))
    }

    /// The selected hosts, by id. A named host that is not there is an error.
    pub fn apply<'a>(&self, snap: &'a Snapshot) -> Result<Vec<(&'a String, &'a Host)>, FleetError> {
        for h in &self.hosts {
            if !snap.hosts.contains_key(h) {
                return Err(FleetError::NoSuchHost(h.clone()));
            }
        }
        Ok(snap
            .hosts
            .iter()
            .filter(|(id, _)| self.hosts.is_empty() || self.hosts.contains(id))
            .filter(|(_, h)| {
                if self.selectors.is_empty() {
                    return true;
                }
                let fields = h.record.fields();
                self.selectors.iter().all(|(n, v)| fields.iter().any(|(fnm, fv)| fnm == n && fv == v))
            })
            .collect())
    }
}

/// One host's answer for a domain.
#[derive(Debug, Clone, Serialize)]
pub struct HostVerdict {
    pub host: String,
    pub verdict: Verdict,
    /// The published query whose document was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The finding that decides (the first unsupported, else the first unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
    /// Why, when no finding decides (no document for the domain's query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The hashes of the documents a question about `virt_type`/`arch`/`machine` may read for
/// the selected hosts (fetch them with [`Snapshot::fetch`] before asking).
pub fn needed(
    snap: &Snapshot,
    sel: &Selection,
    virt_type: &str,
    arch: Option<&str>,
    machine: Option<&str>,
) -> Result<Vec<String>, FleetError> {
    let mut out = std::collections::HashSet::new();
    for (_, host) in sel.apply(snap)? {
        let arch = arch.unwrap_or(&host.record.cpu.arch);
        if let Some((_, h)) = host.docs.get_parts(virt_type, arch, machine) {
            out.insert(h);
        } else if machine.is_some() {
            out.extend(host.docs.iter().filter(|(q, _)| q.virt_type == virt_type && q.arch == arch).map(|(_, h)| h));
        }
    }
    let mut out: Vec<String> = out.into_iter().cloned().collect();
    out.sort_unstable();
    Ok(out)
}

/// What a host publishes for a question: the document's query and hash, nothing, or why
/// what it publishes cannot be used (a document that is damaged, forged or missing).
#[derive(Debug, Clone)]
pub enum Found {
    Document(QueryKey, String),
    Nothing,
    Unusable(String),
}

/// The query key and hash of `host`'s document for a domain of `virt_type`/`arch`/`machine`
/// (documents fetched beforehand, see [`needed`]).
pub fn find_document(
    snap: &Snapshot,
    id: &str,
    virt_type: &str,
    arch: Option<&str>,
    machine: Option<&str>,
) -> Result<Found, FleetError> {
    let host = snap.hosts.get(id).ok_or_else(|| FleetError::NoSuchHost(id.to_owned()))?;
    Ok(match find(snap, host, virt_type, arch, machine) {
        Find::Document(q, h) => Found::Document(q.clone(), h.clone()),
        Find::Nothing => Found::Nothing,
        Find::Unusable(why) => Found::Unusable(why),
    })
}

/// [`find_document`] for a host at hand, borrowing the query and hash (asked once per host
/// of a fleet).
enum Find<'a> {
    Document(&'a QueryKey, &'a String),
    Nothing,
    Unusable(String),
}

fn find<'a>(snap: &Snapshot, host: &'a Host, virt_type: &str, arch: Option<&str>, machine: Option<&str>) -> Find<'a> {
    if let Some(why) = &host.damaged {
        return Find::Unusable(format!("its host record is not usable: {why}"));
    }
    let arch = arch.unwrap_or(&host.record.cpu.arch);
    if let Some((exact, h)) = host.docs.get_parts(virt_type, arch, machine) {
        return match snap.document(h) {
            Ok(_) => Find::Document(exact, h),
            Err(e) => Find::Unusable(e.to_string()),
        };
    }
    let Some(m) = machine else { return Find::Nothing };
    let mut unusable = None;
    for (q, h) in host.docs.iter().filter(|(q, _)| q.virt_type == virt_type && q.arch == arch) {
        match snap.document(h) {
            Ok(d) if d.machine.as_deref() == Some(m) => return Find::Document(q, h),
            Ok(_) => {}
            Err(e) => unusable = Some(e.to_string()),
        }
    }
    unusable.map_or(Find::Nothing, Find::Unusable)
}

/// Check `domain` on every selected host. Each distinct document is judged once.
pub fn check(snap: &Snapshot, domain: &Domain, sel: &Selection) -> Result<Vec<HostVerdict>, FleetError> {
    let hosts = sel.apply(snap)?;
    let mut out = Vec::with_capacity(hosts.len());
    let mut judged: std::collections::HashMap<&str, (Verdict, Option<Finding>)> = std::collections::HashMap::new();
    // The query's text, made once per query (hosts mostly share one).
    let mut shown: Option<(&QueryKey, String)> = None;
    for (id, host) in hosts {
        let (q, hash) = match find(snap, host, domain.virt_type(), domain.arch(), domain.machine()) {
            Find::Document(q, h) => (q, h),
            Find::Nothing => {
                let arch = domain.arch().unwrap_or(&host.record.cpu.arch);
                out.push(HostVerdict {
                    host: id.clone(),
                    verdict: Verdict::Unknown,
                    query: None,
                    finding: None,
                    note: Some(format!(
                        "publishes no document for virt type {}, arch {}, machine {}",
                        domain.virt_type(),
                        arch,
                        domain.machine().unwrap_or("(default)")
                    )),
                });
                continue;
            }
            Find::Unusable(why) => {
                out.push(HostVerdict {
                    host: id.clone(),
                    verdict: Verdict::Unknown,
                    query: None,
                    finding: None,
                    note: Some(why),
                });
                continue;
            }
        };
        let (verdict, finding) = match judged.get(hash.as_str()) {
            Some(v) => v.clone(),
            None => {
                let caps = snap.document(hash)?;
                let report = capsd_analysis::check(domain, &caps)?;
                let first = |v: Verdict| report.findings.iter().find(|f| f.verdict == v).cloned();
                let v = if let Some(f) = first(Verdict::Unsupported) {
                    (Verdict::Unsupported, Some(f))
                } else if let Some(f) = first(Verdict::Unknown) {
                    (Verdict::Unknown, Some(f))
                } else {
                    (Verdict::Supported, None)
                };
                judged.insert(hash.as_str(), v.clone());
                v
            }
        };
        let query = match &shown {
            Some((k, text)) if *k == q => text.clone(),
            _ => {
                let text = q.to_string();
                shown = Some((q, text.clone()));
                text
            }
        };
        out.push(HostVerdict { host: id.clone(), verdict, query: Some(query), finding, note: None });
    }
    Ok(out)
}

/// The documents of the selected hosts for one query (alias or canonical machine, as for a
/// domain), and the hosts without a usable one (with why).
pub type Documents = (Vec<(String, Arc<DomainCapabilities>)>, Vec<(String, String)>);

pub fn documents(
    snap: &Snapshot,
    sel: &Selection,
    virt_type: &str,
    arch: Option<&str>,
    machine: Option<&str>,
) -> Result<Documents, FleetError> {
    let mut have = Vec::new();
    let mut missing = Vec::new();
    for (id, host) in sel.apply(snap)? {
        match find(snap, host, virt_type, arch, machine) {
            Find::Document(_, hash) => {
                let d = snap.document(hash)?;
                have.push((id.clone(), d));
            }
            Find::Nothing => missing.push((id.clone(), "no document for the query".to_owned())),
            Find::Unusable(why) => missing.push((id.clone(), why)),
        }
    }
    Ok((have, missing))
}

/// The document every selected host with a document for the query satisfies. Hosts sharing
/// a document count once (a baseline of a document with itself is that document).
pub fn baseline(docs: &[(String, Arc<DomainCapabilities>)]) -> Result<DomainCapabilities, FleetError> {
    let mut distinct: Vec<&Arc<DomainCapabilities>> = Vec::new();
    for (_, d) in docs {
        if !distinct.iter().any(|x| Arc::ptr_eq(x, d)) {
            distinct.push(d);
        }
    }
    let plain: Vec<DomainCapabilities> = distinct.iter().map(|d| (***d).clone()).collect();
    Ok(capsd_analysis::baseline(&plain)?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::Host;
    use crate::{content_hash, Cpu, HostRecord};

    fn fixture(name: &str) -> Arc<str> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver-test/fixtures").join(name);
        Arc::from(std::fs::read_to_string(&p).unwrap().as_str())
    }

    fn record(id: &str, vendor: &str) -> HostRecord {
        HostRecord {
            id: id.into(),
            capsd_version: "0".into(),
            driver: "test".into(),
            libvirt_version: None,
            emulators: Vec::new(),
            cpu: Cpu { arch: "x86_64".into(), vendor: Some(vendor.into()), model: None },
            updated_ms: 0,
            inputs_changed_ms: None,
            documents: 0,
        }
    }

    /// Host `a` publishes q35 under its alias; host `b` nothing for x86_64 KVM.
    fn snapshot() -> Snapshot {
        let q35 = fixture("x86_64-kvm-q35.xml");
        let hash = content_hash(q35.as_bytes());
        let mut s = Snapshot::default();
        s.insert_document(&hash, q35.as_bytes());
        let docs = crate::store::Docs::from([(QueryKey::parse("kvm/x86_64/q35").unwrap(), hash)]);
        s.hosts.insert("a".into(), Host { record: record("a", "AuthenticAMD"), damaged: None, docs });
        s.hosts.insert(
            "b".into(),
            Host { record: record("b", "GenuineIntel"), damaged: None, docs: crate::store::Docs::new() },
        );
        s
    }

    fn domain(machine: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='kvm'><os><type arch='x86_64' machine='{machine}'>hvm</type></os></domain>"
        ))
        .unwrap()
    }

    #[test]
    fn a_host_without_the_document_is_unknown_and_a_canonical_machine_finds_the_alias_document() {
        let s = snapshot();
        let canonical =
            s.document(&s.hosts["a"].docs.values().next().unwrap().clone()).unwrap().machine.clone().unwrap();
        assert_ne!(canonical, "q35");
        for m in ["q35", canonical.as_str()] {
            let v = check(&s, &domain(m), &Selection::default()).unwrap();
            assert_eq!(v[0].host, "a");
            assert_eq!(v[0].query.as_deref(), Some("kvm/x86_64/q35"), "{m}");
            assert_ne!(v[0].verdict, Verdict::Unsupported, "{m}: {:?}", v[0]);
            assert_eq!(v[1].host, "b");
            assert_eq!(v[1].verdict, Verdict::Unknown);
            assert!(v[1].note.as_deref().unwrap().contains("publishes no document"), "{:?}", v[1]);
        }
        // A machine no document has: unknown on a as well.
        let v = check(&s, &domain("pc-q35-1.0"), &Selection::default()).unwrap();
        assert_eq!(v[0].verdict, Verdict::Unknown);
        assert_eq!(v[0].query, None);
    }

    #[test]
    fn selection_by_ids_and_record_fields() {
        let s = snapshot();
        let ids = |sel: Selection| sel.apply(&s).unwrap().into_iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(Selection::default()), ["a", "b"]);
        assert_eq!(ids(Selection { hosts: vec!["b".into()], selectors: Vec::new() }), ["b"]);
        let by_vendor = Selection::parse_selector("cpu.vendor=GenuineIntel").unwrap();
        assert_eq!(ids(Selection { hosts: Vec::new(), selectors: vec![by_vendor] }), ["b"]);
        assert!(Selection::parse_selector("colour=blue").unwrap_err().to_string().contains("colour"));
        assert!(Selection::parse_selector("arch").unwrap_err().to_string().contains("NAME=VALUE"));
        let e = Selection { hosts: vec!["nosuch".into()], selectors: Vec::new() }.apply(&s).unwrap_err();
        assert!(e.to_string().contains("'nosuch'"), "{e}");
    }
}
