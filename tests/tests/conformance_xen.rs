//! The conformance suite run against driver-xen: on this host (no Xen: the driver must say
//! it is unavailable and fail every query cleanly), and on driver-xen's recorded hosts
//! (`driver-xen/tests/data/*/root`, replayed with `XenDriver::with_root`).

use capsd_tests::reference;

use std::path::PathBuf;

use capsd_core::{DomainCapsDriver, Query};
use capsd_tests::conformance;
use driver_xen::XenDriver;

fn q(arch: Option<&str>, machine: Option<&str>) -> Query {
    Query {
        emulator: None,
        arch: arch.map(Into::into),
        machine: machine.map(Into::into),
        virt_type: Some("xen".into()),
        libvirt: None,
    }
}

fn queries() -> Vec<Query> {
    vec![
        Query::default(),
        q(Some("x86_64"), Some("xenfv")),
        q(Some("x86_64"), Some("xenpv")),
        q(Some("x86_64"), Some("xenpvh")),
        q(Some("x86_64"), None),
    ]
}

fn recorded(host: &str) -> XenDriver {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../driver-xen/tests/data").join(host).join("root");
    XenDriver::with_root(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

#[test]
fn xen_on_this_host() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = XenDriver::new();
    if std::path::Path::new("/proc/xen/capabilities").exists() {
        // A real Xen host (dom0 or guest): the suite decides from what the driver says.
        if d.availability().is_available() {
            conformance::assert_conforms(&d, &queries());
            return;
        }
    }
    let report = conformance::assert_unavailable(&d, &queries());
    eprintln!("{report}");
}

#[test]
fn xen_replay_upstream_4_17() {
    let Some(_) = reference::need("fixtures") else { return };
    let report = conformance::assert_conforms(&recorded("upstream-4.17-x86_64"), &queries());
    eprintln!("{report}");
}

#[test]
fn xen_replay_debian_4_17() {
    let Some(_) = reference::need("fixtures") else { return };
    let report = conformance::assert_conforms(&recorded("debian-4.17-x86_64"), &queries());
    eprintln!("{report}");
}

#[test]
fn xen_replay_domu_is_unavailable() {
    // A recorded Xen guest (not dom0): unavailable, every query fails cleanly.
    let report = conformance::assert_unavailable(&recorded("domu-x86_64"), &queries());
    eprintln!("{report}");
}
