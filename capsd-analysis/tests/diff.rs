//! `diff` on libvirt-formatted documents: facts, not order; values, enums, CPU models.

#[path = "../../tests/src/reference.rs"]
mod reference;

use capsd_analysis::{diff, facts};
use capsd_core::DomainCapabilities;

fn load(rel: &str) -> DomainCapabilities {
    let p = crate::reference::shared_dir().join("fixtures").join(rel);
    capsd_core::parse_any(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

const KVM: &str = "libvirt-9.0-host/x86_64-kvm-q35.xml";
const TCG: &str = "libvirt-9.0-host/x86_64-tcg-q35.xml";

#[test]
fn identical_documents_and_reordering() {
    let Some(_) = reference::need("fixtures") else { return };
    let a = load(KVM);
    assert!(diff(&a, &a).is_empty());
    // The JSON form is the same document.
    let b = capsd_core::parse_any(&capsd_core::json::to_json(&a)).unwrap();
    assert!(diff(&a, &b).is_empty());
    // Order of enum values and of CPU models is not a fact.
    let mut c = a.clone();
    c.devices.as_mut().unwrap().disk.as_mut().unwrap().enums.iter_mut().for_each(|e| e.values.reverse());
    c.cpu.as_mut().unwrap().custom.as_mut().unwrap().models.reverse();
    assert_ne!(a, c);
    assert!(diff(&a, &c).is_empty(), "{}", diff(&a, &c).to_text("a", "c"));
}

#[test]
fn kvm_against_tcg_on_one_host() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = diff(&load(KVM), &load(TCG));
    let changed: Vec<(&str, Option<&str>, Option<&str>)> =
        d.changed.iter().map(|c| (c.path.as_str(), c.a.as_deref(), c.b.as_deref())).collect();
    assert!(changed.contains(&("/domainCapabilities/domain", Some("kvm"), Some("qemu"))), "{changed:?}");
    // The pentium3 model is usable in both; qemu64 only under TCG.
    let usable = |name: &str| format!("/domainCapabilities/cpu/mode[@name='custom']/model[.='{name}']/@usable");
    assert!(!changed.iter().any(|c| c.0 == usable("pentium3")));
    assert!(changed.contains(&(usable("qemu64").as_str(), Some("no"), Some("yes"))), "{changed:?}");
    // Every fact of the diff is a fact of its document.
    let fa = facts(&load(KVM));
    let fb = facts(&load(TCG));
    assert!(d.only_a.iter().all(|f| fa.contains(f) && !fb.iter().any(|g| g.path == f.path)));
    assert!(d.only_b.iter().all(|f| fb.contains(f) && !fa.iter().any(|g| g.path == f.path)));
}

#[test]
fn enum_values_and_elements_one_side_lacks() {
    let Some(_) = reference::need("fixtures") else { return };
    let old = load("libvirt-upstream/domaincaps/qemu_7.2.0-q35.x86_64.xml");
    let new = load("libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml");
    let d = diff(&old, &new);
    let only_new: Vec<&str> = d.only_b.iter().map(|f| f.path.as_str()).collect();
    // 11.1 states Hyper-V enlightenments and a TDX launch security; 7.2's has neither.
    assert!(only_new.contains(&"/domainCapabilities/features/hyperv/@supported"), "{} facts", only_new.len());
    assert!(
        only_new.contains(&"/domainCapabilities/features/launchSecurity/enum[@name='sectype']/value[.='tdx']"),
        "{} facts",
        only_new.len()
    );
    let changed = |p: &str| d.changed.iter().find(|c| c.path == p).map(|c| (c.a.clone(), c.b.clone()));
    assert_eq!(
        changed("/domainCapabilities/features/launchSecurity/@supported"),
        Some((Some("no".into()), Some("yes".into())))
    );
    assert!(changed("/domainCapabilities/machine").is_some());
    // Symmetric.
    let r = diff(&new, &old);
    assert_eq!(r.only_a, d.only_b);
    assert_eq!(r.only_b, d.only_a);
    assert_eq!(r.changed.len(), d.changed.len());
    // Empty enums are facts too: libvirt 9.0 lists no capsType.
    assert!(facts(&load(KVM))
        .iter()
        .any(|f| f.path == "/domainCapabilities/devices/hostdev/enum[@name='capsType']" && f.value.is_none()));
}
