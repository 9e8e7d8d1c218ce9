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

/// The query key and hash of `host`'s document for a domain of `virt_type`/`arch`/`machine`.
pub fn find_document(
    snap: &mut Snapshot,
    id: &str,
    virt_type: &str,
    arch: Option<&str>,
    machine: Option<&str>,
) -> Result<Option<(QueryKey, String)>, FleetError> {
    let host = snap.hosts.get(id).ok_or_else(|| FleetError::NoSuchHost(id.to_owned()))?;
    let arch = arch.unwrap_or(&host.record.cpu.arch).to_owned();
    let exact = QueryKey { virt_type: virt_type.to_owned(), arch: arch.clone(), machine: machine.map(str::to_owned) };
    if let Some(h) = host.docs.get(&exact) {
        return Ok(Some((exact, h.clone())));
    }
    let Some(m) = machine else { return Ok(None) };
    let candidates: Vec<(QueryKey, String)> = host
        .docs
        .iter()
        .filter(|(q, _)| q.virt_type == virt_type && q.arch == arch)
        .map(|(q, h)| (q.clone(), h.clone()))
        .collect();
    for (q, h) in candidates {
        if snap.document(&h)?.machine.as_deref() == Some(m) {
            return Ok(Some((q, h)));
        }
    }
    Ok(None)
}

/// Check `domain` on every selected host.
pub fn check(snap: &mut Snapshot, domain: &Domain, sel: &Selection) -> Result<Vec<HostVerdict>, FleetError> {
    let ids: Vec<String> = sel.apply(snap)?.into_iter().map(|(id, _)| id.clone()).collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let found = find_document(snap, &id, domain.virt_type(), domain.arch(), domain.machine())?;
        let Some((q, hash)) = found else {
            let arch = domain.arch().map_or_else(|| snap.hosts[&id].record.cpu.arch.clone(), str::to_owned);
            out.push(HostVerdict {
                host: id,
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
        };
        let caps = snap.document(&hash)?;
        let report = capsd_analysis::check(domain, &caps)?;
        let first = |v: Verdict| report.findings.iter().find(|f| f.verdict == v).cloned();
        let (verdict, finding) = if let Some(f) = first(Verdict::Unsupported) {
            (Verdict::Unsupported, Some(f))
        } else if let Some(f) = first(Verdict::Unknown) {
            (Verdict::Unknown, Some(f))
        } else {
            (Verdict::Supported, None)
        };
        out.push(HostVerdict { host: id, verdict, query: Some(q.to_string()), finding, note: None });
    }
    Ok(out)
}

/// The documents of the selected hosts for one query (alias or canonical machine, as for a
/// domain). Hosts without one are returned apart.
pub type Documents = (Vec<(String, Arc<DomainCapabilities>)>, Vec<String>);

pub fn documents(
    snap: &mut Snapshot,
    sel: &Selection,
    virt_type: &str,
    arch: Option<&str>,
    machine: Option<&str>,
) -> Result<Documents, FleetError> {
    let ids: Vec<String> = sel.apply(snap)?.into_iter().map(|(id, _)| id.clone()).collect();
    let mut have = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match find_document(snap, &id, virt_type, arch, machine)? {
            Some((_, hash)) => {
                let d = snap.document(&hash)?;
                have.push((id, d));
            }
            None => missing.push(id),
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
