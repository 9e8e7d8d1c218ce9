//! The conformance suite run against driver-qemu with the live QEMU of this host (Debian's
//! QEMU 7.2: x86_64 KVM and TCG with the default machine and q35, aarch64 virt under TCG).
//! Runs wherever `qemu-system-x86_64` exists; without it the test says it skipped, unless
//! `CAPSD_REQUIRE_LIVE=1` (set by CI, which installs QEMU), where a missing QEMU fails.

use capsd_tests::reference;

use capsd_core::Query;
use capsd_tests::conformance;
use driver_qemu::QemuDriver;

fn q(arch: &str, virt: &str, machine: Option<&str>) -> Query {
    Query {
        emulator: None,
        arch: Some(arch.into()),
        machine: machine.map(Into::into),
        virt_type: Some(virt.into()),
        libvirt: None,
    }
}

fn have(bin: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(bin).is_file())
}

#[test]
fn qemu_live() {
    let Some(_) = reference::need("fixtures") else { return };
    if !have("qemu-system-x86_64") {
        if std::env::var("CAPSD_REQUIRE_LIVE").as_deref() == Ok("1") {
            panic!("qemu-system-x86_64 is not installed and CAPSD_REQUIRE_LIVE=1");
        }
        eprintln!("skipping live QEMU conformance: qemu-system-x86_64 is not installed");
        return;
    }
    // No arch, no virt type: the host's arch and the best virt type here.
    let mut queries = vec![Query::default()];
    if std::path::Path::new("/dev/kvm").exists() {
        queries.push(q("x86_64", "kvm", None));
        queries.push(q("x86_64", "kvm", Some("q35")));
    }
    queries.extend([q("x86_64", "qemu", None), q("x86_64", "qemu", Some("q35"))]);
    if have("qemu-system-aarch64") {
        queries.push(q("aarch64", "qemu", Some("virt")));
    }
    // A private cache: the first call of each query probes QEMU, the repeat (rule
    // `deterministic`) is answered from the cache, so the rule also checks the cache.
    let cache = tempfile::tempdir().unwrap();
    let d = QemuDriver::new().with_cache_dir(cache.path().to_owned());
    let report = conformance::assert_conforms(&d, &queries);
    eprintln!("{report}");
}
