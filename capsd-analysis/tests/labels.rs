//! KubeVirt node labels and Nova traits of libvirt-formatted documents, against reviewed
//! golden files (tests/data/labels/<fixture>.{labels,traits}). After an intended change:
//! `UPDATE_EXPECT=1 cargo test -p capsd-analysis --test labels`, then review the diff.

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::path::{Path, PathBuf};

use capsd_analysis::{kubevirt_labels, nova_traits};
use capsd_core::DomainCapabilities;
use expect_test::expect_file;

fn load(rel: &str) -> DomainCapabilities {
    let p = crate::reference::shared_dir().join("fixtures").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    capsd_core::parse_any(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const FIXTURES: [&str; 8] = [
    "libvirt-9.0-host/x86_64-kvm-q35.xml",
    "libvirt-9.0-host/x86_64-tcg-q35.xml",
    "libvirt-9.0-host/aarch64-tcg-virt.xml",
    "libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml",
    "libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_11.1.0-virt.aarch64.xml",
    "libvirt-upstream/domaincaps/libxl-xenfv.xml",
    "libvirt-upstream/domaincaps/empty.xml",
];

fn golden(rel: &str, ext: &str) -> PathBuf {
    let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
    let dir = Path::new(rel).parent().unwrap().file_name().unwrap().to_str().unwrap();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/labels").join(format!("{dir}__{stem}.{ext}"))
}

#[test]
fn labels_and_traits_match_reviewed_golden_files() {
    let Some(_) = reference::need("fixtures") else { return };
    for rel in FIXTURES {
        let caps = load(rel);
        let labels: String = kubevirt_labels(&caps).iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        expect_file![golden(rel, "labels")].assert_eq(&labels);
        let traits: String = nova_traits(&caps).iter().map(|t| format!("{t}\n")).collect();
        expect_file![golden(rel, "traits")].assert_eq(&traits);
    }
}

#[test]
fn omitted_or_unsupported_gives_nothing() {
    let Some(_) = reference::need("fixtures") else { return };
    // empty.xml: every CPU mode supported='no', no devices, SEV no.
    let caps = load("libvirt-upstream/domaincaps/empty.xml");
    assert!(kubevirt_labels(&caps).is_empty());
    assert!(nova_traits(&caps).is_empty());
    // Removing an element removes its labels, never turns them into "false".
    let mut caps = load("libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml");
    let before = kubevirt_labels(&caps);
    assert_eq!(before.get("kubevirt.io/sev").map(String::as_str), Some(""));
    assert_eq!(before.get("kubevirt.io/sev-es").map(String::as_str), Some(""));
    caps.features.as_mut().unwrap().sev = None;
    caps.devices.as_mut().unwrap().tpm = None;
    let after = kubevirt_labels(&caps);
    assert!(!after.contains_key("kubevirt.io/sev"));
    assert!(after.values().all(|v| v == "true"));
    let traits = nova_traits(&caps);
    assert!(!traits.iter().any(|t| t.contains("TPM") || t.contains("SEV")), "{traits:?}");
}

#[test]
fn label_keys_are_valid_kubernetes_label_keys() {
    let Some(_) = reference::need("fixtures") else { return };
    // prefix (DNS subdomain) '/' name (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)
    for rel in FIXTURES {
        for k in kubevirt_labels(&load(rel)).keys() {
            let (prefix, name) = k.split_once('/').unwrap_or_else(|| panic!("{k}: no prefix"));
            assert!(prefix.len() <= 253 && prefix.split('.').all(|p| !p.is_empty()), "{k}");
            assert!(!name.is_empty() && name.len() <= 63, "{k}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{k}");
            assert!(name.starts_with(|c: char| c.is_ascii_alphanumeric()), "{k}");
            assert!(name.ends_with(|c: char| c.is_ascii_alphanumeric()), "{k}");
        }
    }
}
