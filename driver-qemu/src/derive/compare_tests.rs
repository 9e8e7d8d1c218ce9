//! Comparison of derived documents with libvirt 9.0's, outside `<cpu>` (owned by
//! `crate::cpu`) and `<hyperv>` (same). Both tests are live (they probe the real binaries,
//! so they are `#[ignore]`d) and meant for the machine the oracle outputs come from:
//! - [`live_matches_libvirt_outside_cpu`]: derivation alone (canonical machine given) against
//!   `../shared/fixtures/libvirt-9.0-host/`;
//! - [`driver_matches_libvirt_outside_cpu_for_every_listed_case`]: the whole driver
//!   (resolve, probe, derive) for every case of `tests/data/oracle-cases.txt`, against the
//!   `virsh domcapabilities` outputs in `CAPSD_ORACLE_DIR`.
//!
//! Run: `CAPSD_ORACLE_DIR=... cargo test -p driver-qemu --lib derive::compare_tests -- --ignored`.
//! Each derived document is also written to `CAPSD_DERIVE_OUT` (default: a `capsd-derive`
//! directory under the system temp dir) for `facts.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsd_core::DomainCapabilities;

use super::{domain_capabilities, ResolvedQuery};
use crate::probe_data::{Accel, ProbeData};

/// One oracle case: file stem, binary, arch, canonical machine, accelerator.
pub(crate) const CASES: &[(&str, &str, &str, &str, Accel)] = &[
    ("x86_64-kvm-default", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-i440fx-7.2", Accel::Kvm),
    ("x86_64-kvm-q35", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-q35-7.2", Accel::Kvm),
    ("x86_64-tcg-default", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-i440fx-7.2", Accel::Tcg),
    ("x86_64-tcg-q35", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-q35-7.2", Accel::Tcg),
    ("aarch64-tcg-virt", "/usr/bin/qemu-system-aarch64", "aarch64", "virt-7.2", Accel::Tcg),
    ("ppc64-tcg-pseries", "/usr/bin/qemu-system-ppc64", "ppc64", "pseries-7.2", Accel::Tcg),
    ("s390x-tcg-default", "/usr/bin/qemu-system-s390x", "s390x", "s390-ccw-virtio-7.2", Accel::Tcg),
];

/// The oracle outputs of the 9.0 host that come with the repository.
fn oracle(stem: &str) -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/libvirt-9.0-host");
    std::fs::read_to_string(dir.join(format!("{stem}.xml"))).ok()
}

/// The document without the parts other modules own.
pub(crate) fn without_cpu(mut caps: DomainCapabilities) -> DomainCapabilities {
    caps.cpu = None;
    if let Some(f) = caps.features.as_mut() {
        f.hyperv = None;
    }
    caps
}

/// Lines of `a` and `b` (as XML) that differ, for a readable failure.
pub(crate) fn xml_diff(want: &DomainCapabilities, got: &DomainCapabilities) -> Vec<String> {
    let w = capsd_core::xml::to_xml(want);
    let g = capsd_core::xml::to_xml(got);
    let wl: Vec<&str> = w.lines().collect();
    let gl: Vec<&str> = g.lines().collect();
    let mut out: Vec<String> = wl.iter().filter(|l| !gl.contains(l)).map(|l| format!("- {l}")).collect();
    out.extend(gl.iter().filter(|l| !wl.contains(l)).map(|l| format!("+ {l}")));
    out
}

#[test]
#[ignore = "starts every QEMU binary of the oracle cases; run with --ignored"]
fn live_matches_libvirt_outside_cpu() {
    let out_dir = std::env::var_os("CAPSD_DERIVE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("capsd-derive"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut probes: BTreeMap<&str, ProbeData> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut compared = 0;
    for &(stem, binary, arch, machine, accel) in CASES {
        let Some(want) = oracle(stem) else { continue };
        if !Path::new(binary).exists() {
            continue;
        }
        if !probes.contains_key(binary) {
            let data = crate::probe::probe(Path::new(binary), &Default::default()).unwrap();
            probes.insert(binary, data);
        }
        let data = &probes[binary];
        let q = ResolvedQuery { emulator: binary.into(), arch: arch.into(), machine: machine.into(), accel };
        let got = domain_capabilities(data, &q).unwrap();
        std::fs::write(out_dir.join(format!("{stem}.xml")), capsd_core::xml::to_xml(&got)).unwrap();
        let want = without_cpu(capsd_core::xml::from_xml(&want).unwrap());
        let got = without_cpu(got);
        compared += 1;
        if want != got {
            failures.push(format!("{stem}:\n{}", xml_diff(&want, &got).join("\n")));
        }
    }
    assert!(compared > 0, "no oracle case could be compared");
    assert!(failures.is_empty(), "{} of {compared} cases differ:\n{}", failures.len(), failures.join("\n"));
}

/// The `virsh domcapabilities` arguments of one line of `tests/data/oracle-cases.txt`.
fn parse_case(args: &str) -> capsd_core::Query {
    let mut q = capsd_core::Query::default();
    let mut it = args.split_whitespace();
    while let Some(flag) = it.next() {
        let value = it.next().map(str::to_owned);
        match flag {
            "--emulatorbin" => q.emulator = value.map(PathBuf::from),
            "--arch" => q.arch = value,
            "--machine" => q.machine = value,
            "--virttype" => q.virt_type = value,
            other => panic!("unknown flag {other} in oracle-cases.txt"),
        }
    }
    q
}

#[test]
#[ignore = "starts QEMU for every case of tests/data/oracle-cases.txt; needs CAPSD_ORACLE_DIR"]
fn driver_matches_libvirt_outside_cpu_for_every_listed_case() {
    use capsd_core::DomainCapsDriver;
    let Some(dir) = std::env::var_os("CAPSD_ORACLE_DIR").map(PathBuf::from) else {
        panic!("set CAPSD_ORACLE_DIR to a directory of `virsh domcapabilities` outputs named after the cases");
    };
    let out_dir = std::env::var_os("CAPSD_DERIVE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("capsd-derive"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let cases =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/oracle-cases.txt")).unwrap();
    let driver = crate::QemuDriver::new();
    let mut failures = Vec::new();
    let mut compared = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (name, args) = line.split_once(char::is_whitespace).unwrap();
        let Ok(want) = std::fs::read_to_string(dir.join(format!("{name}.xml"))) else { continue };
        let got = match driver.domain_capabilities(&parse_case(args)) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        std::fs::write(out_dir.join(format!("{name}.xml")), capsd_core::xml::to_xml(&got)).unwrap();
        compared += 1;
        let want = without_cpu(capsd_core::xml::from_xml(&want).unwrap());
        let got = without_cpu(got);
        if want != got {
            failures.push(format!("{name}:\n{}", xml_diff(&want, &got).join("\n")));
        }
    }
    assert!(compared > 0, "no case had an oracle file in {}", dir.display());
    assert!(failures.is_empty(), "{} of {compared} cases differ:\n{}", failures.len(), failures.join("\n"));
}
