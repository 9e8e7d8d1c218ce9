//! Evidence for `capsd explain`, recorded by derivation as it decides (see
//! [`capsd_core::evidence`]): the nodes of the document and the host facts with the place
//! they were read. QMP facts are recorded where they are looked up ([`super::probe::Answers`],
//! [`super::schema::Schema`], [`crate::probe_data::Transcript`]), release rules by
//! [`crate::libvirt::Target::has`]. Without a recorder every function here is the bare
//! decision.

use capsd_core::evidence::{self, Fact};

use crate::host::{source, HostFacts};

/// An element decided by `f`, present when `f` gives one.
pub fn element<T>(step: &str, f: impl FnOnce() -> Option<T>) -> Option<T> {
    evidence::node(|| step.to_owned(), f, Option::is_some)
}

/// An element that is always present (its content decided by `f`).
pub fn always<T>(step: &str, f: impl FnOnce() -> T) -> T {
    evidence::node(|| step.to_owned(), f, |_| true)
}

/// An element whose step depends on its text (`path[.='...']`).
pub fn text_element<T>(tag: &str, text: &str, f: impl FnOnce() -> T) -> T {
    evidence::node(|| evidence::step(tag, None, Some(text)), f, |_| true)
}

/// `<enum name='NAME'>`, its values decided by `f`.
pub fn enum_node<T>(name: &str, f: impl FnOnce() -> T) -> T {
    evidence::node(|| evidence::step("enum", Some(name), None), f, |_| true)
}

/// `<value>V</value>`: offered when `condition` holds.
pub fn value_node(v: &str, condition: impl FnOnce() -> bool) -> bool {
    evidence::node(|| evidence::value_step(v), condition, |b| *b)
}

/// A host fact read at `source` (`None`: absent there).
pub fn host(source: &str, value: impl FnOnce() -> Option<String>) {
    evidence::fact(|| Fact::Host { source: source.to_owned(), value: value() });
}

/// A query value that decided.
pub fn query(name: &str, value: &str) {
    evidence::fact(|| Fact::Query { name: name.to_owned(), value: value.to_owned() });
}

fn flag(b: Option<bool>) -> Option<String> {
    b.map(|b| if b { "Y" } else { "N" }.to_owned())
}

/// A flag stored only as "is `Y`": false may mean the file is absent.
fn y_or_not(b: bool) -> Option<String> {
    Some(if b { "Y" } else { "not Y" }.to_owned())
}

fn exists(b: bool) -> Option<String> {
    b.then(|| "exists".to_owned())
}

/// The swtpm tools (`<tpm>` emulator backends and versions).
pub fn swtpm(h: &HostFacts) {
    let s = h.swtpm.as_ref();
    host("swtpm in PATH", || s.map(|s| s.swtpm.clone()));
    host("swtpm_setup in PATH", || s.and_then(|s| s.swtpm_setup.clone()));
    host("swtpm_ioctl in PATH", || s.and_then(|s| s.swtpm_ioctl.clone()));
}

/// What `swtpm_setup --print-capabilities` says it creates.
pub fn swtpm_setup_features(h: &HostFacts) {
    if let Some(setup) = h.swtpm.as_ref().and_then(|s| s.swtpm_setup.as_ref()) {
        let features = h.swtpm.as_ref().map(|s| s.swtpm_setup_features.join(" ")).unwrap_or_default();
        host(&format!("{setup} --print-capabilities features"), || Some(features));
    }
}

/// VFIO passthrough (`<hostdev>` pciBackend, iommufd).
pub fn vfio(h: &HostFacts) {
    host(source::IOMMU_GROUPS, || Some(if h.vfio.iommu_groups { "has entries" } else { "no entries" }.to_owned()));
    if !h.vfio.iommu_groups {
        host(source::VFIO_NOIOMMU, || y_or_not(h.vfio.noiommu_mode));
    }
    host(source::DEV_VFIO, || exists(h.vfio.dev_vfio));
}

/// `/dev/iommu` (`<hostdev>` iommufd).
pub fn iommufd(h: &HostFacts) {
    host(source::DEV_IOMMU, || exists(h.vfio.iommufd_device));
}

/// AMD SEV's kernel side (`<sev>`, `<launchSecurity>`).
pub fn sev(h: &HostFacts) {
    host(source::KVM_AMD_SEV, || flag(h.sev.kvm_amd_sev));
    host(source::DEV_SEV, || exists(h.sev.dev_sev));
}

/// The SEV ASID range (`<maxGuests>`, `<maxESGuests>`).
pub fn sev_asids(h: &HostFacts) {
    host(source::SEV_CPUID, || h.sev.cpuid_asids.map(|(c, d)| format!("ECX {c}, EDX {d}")));
}

/// s390 protected virtualization.
pub fn s390_pv(h: &HostFacts) {
    host(source::PROT_VIRT_HOST, || flag(h.s390_pv.prot_virt_host));
    host(source::KVM_PROT_VIRT, || flag(h.s390_pv.kvm_prot_virt));
}

/// Intel TDX.
pub fn tdx(h: &HostFacts) {
    host(source::KVM_INTEL_TDX, || y_or_not(h.tdx));
}

/// KVM's vCPU limit (`<vcpu max>`).
pub fn kvm_max_vcpus(h: &HostFacts) {
    host(source::KVM_MAX_VCPUS, || h.kvm_max_vcpus.map(|n| n.to_string()));
}

/// The `qemu-rdp` helper (`<graphics>` rdp).
pub fn qemu_rdp(h: &HostFacts) {
    host("qemu-rdp in PATH", || h.qemu_rdp.then(|| "found".to_owned()));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use capsd_core::evidence::{document_paths, record};

    use crate::derive::{domain_capabilities_with, ResolvedQuery};
    use crate::libvirt::{version::LibvirtVersion, Target};
    use crate::probe_data::Accel;

    /// Recording the evidence does not change the document, for every release and both
    /// accelerators of the committed x86_64 recording; and what the evidence says is present
    /// is exactly what the document has.
    #[test]
    fn recording_leaves_the_document_alone_and_agrees_with_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-x86_64.json");
        let rec = crate::replay::load(&path).unwrap();
        for (accel, machine) in [(Accel::Kvm, "pc-q35-7.2"), (Accel::Tcg, "pc-i440fx-7.2")] {
            if rec.data.run(accel).is_none() {
                continue;
            }
            for release in [(9, 0), (10, 5), (11, 3), (12, 8)] {
                let q = ResolvedQuery {
                    emulator: rec.data.binary.clone(),
                    arch: "x86_64".into(),
                    machine: machine.into(),
                    accel,
                };
                let target = Target::new(LibvirtVersion::new(release.0, release.1, 0));
                let opts = crate::cpu::CpuOptions { target, ..Default::default() };
                let plain = domain_capabilities_with(&rec.data, &q, opts).unwrap();
                let (recorded, ex) = record(|| domain_capabilities_with(&rec.data, &q, opts));
                let recorded = recorded.unwrap();
                assert_eq!(plain, recorded, "{accel:?} {release:?}");
                let doc = document_paths(&recorded);
                for n in ex.nodes.iter().filter(|n| !n.path.is_empty()) {
                    assert_eq!(n.present, doc.contains(&n.path), "{accel:?} {release:?}: {}", n.path);
                }
                assert!(doc.iter().all(|p| ex.accounting_for(p).is_some_and(|n| !n.path.is_empty())));
            }
        }
    }
}
