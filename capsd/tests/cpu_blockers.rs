//! `capsd domcapabilities --cpu-blockers` with the real QEMU (skipped without it unless
//! `CAPSD_REQUIRE_LIVE=1`): newer libvirt's `<blockers>` follow exactly the unusable custom
//! models, each naming that model, and the document is otherwise libvirt 9.0's.

mod live_support;

use std::process::Command;

use live_support::{live, X86};

fn domcaps(cache: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(cache)
        .args(["domcapabilities", "--emulatorbin", X86, "--virttype", "qemu"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn blockers_follow_exactly_the_unusable_models() {
    if !live() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let plain = domcaps(cache.path(), &["--libvirt-version", "9.0"]);
    let with = domcaps(cache.path(), &["--libvirt-version", "9.0", "--cpu-blockers"]);
    assert!(!plain.contains("<blockers"), "libvirt 9.0's form has no blockers");

    let caps = capsd_core::xml::from_xml(&with).unwrap();
    let custom = caps.cpu.as_ref().and_then(|c| c.custom.as_ref()).expect("custom mode");
    let mut unusable = 0;
    for m in &custom.models {
        match (m.usable, &m.blockers) {
            (capsd_core::Usable::No, Some(b)) => {
                unusable += 1;
                assert_eq!(b.model, m.name);
                assert!(!b.features.is_empty(), "{}: empty blockers", m.name);
            }
            (capsd_core::Usable::No, None) => panic!("{}: unusable without blockers", m.name),
            (_, Some(_)) => panic!("{}: usable model with blockers", m.name),
            (_, None) => {}
        }
    }
    assert!(unusable > 0, "TCG leaves some x86 models unusable");

    // Apart from the blockers, the two documents are the same.
    let mut stripped = caps.clone();
    if let Some(c) = stripped.cpu.as_mut().and_then(|c| c.custom.as_mut()) {
        c.models.iter_mut().for_each(|m| m.blockers = None);
    }
    assert_eq!(capsd_core::xml::to_xml(&stripped), plain);
}
