//! The conformance suite run against driver-lxc, on this host and on driver-lxc's recorded
//! hosts (`driver-lxc/tests/data/*/root`, read with `LxcDriver::with_root`).
//!
//! libvirt defines no domain capabilities for LXC, so driver-lxc states some enums libvirt
//! does not document (container namespaces, cgroups, filesystem and interface types). It
//! declares them in `driver_lxc::caps::LXC_ENUMS`; exactly those are passed to the suite as
//! extensions, so any other unknown enum name or value still fails.

use capsd_tests::reference;

use std::path::PathBuf;

use capsd_core::Query;
use capsd_tests::conformance::{self, host_arch, Options};
use capsd_tests::enums::Values;
use driver_lxc::LxcDriver;

fn options() -> Options {
    let extra_enums = driver_lxc::caps::LXC_ENUMS
        .iter()
        .map(|(element, name, values)| {
            let values = match values {
                Some(v) => Values::Closed(v),
                None => Values::Open,
            };
            ((*element).to_owned(), (*name).to_owned(), values)
        })
        .collect();
    Options { extra_enums, ..Options::default() }
}

fn queries(arch: &str) -> Vec<Query> {
    vec![
        Query::default(),
        Query { virt_type: Some("lxc".into()), ..Query::default() },
        Query { arch: Some(arch.into()), virt_type: Some("lxc".into()), ..Query::default() },
    ]
}

#[test]
fn lxc_on_this_host() {
    let Some(_) = reference::need("fixtures") else { return };
    let report = conformance::assert_conforms_with(&LxcDriver::new(), &queries(host_arch()), &options());
    eprintln!("{report}");
}

#[test]
fn lxc_recorded_hosts() {
    let Some(_) = reference::need("fixtures") else { return };
    for host in ["debian12-cgroup2", "snapshot-cgroup1"] {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../driver-lxc/tests/data").join(host).join("root");
        let d = LxcDriver::with_root(&root);
        // A recorded host states its own arch; the query without an arch must give it, and
        // the suite's "host arch" expectation only holds when it matches this machine.
        let caps = capsd_core::DomainCapsDriver::domain_capabilities(&d, &Query::default())
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let mut qs = queries(&caps.arch);
        if caps.arch != host_arch() {
            qs.remove(0);
            qs.remove(0);
        }
        let report = conformance::assert_conforms_with(&d, &qs, &options());
        eprintln!("{host}: {report}");
    }
}
