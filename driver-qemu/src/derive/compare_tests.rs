//! Comparison of derived documents with libvirt 9.0's, outside `<cpu>` (owned by
//! `crate::cpu`) and `<hyperv>` (same): live (probe the real binaries, `#[ignore]`d because it
//! starts QEMU) against the oracle outputs of this host in
//! `../shared/fixtures/libvirt-9.0-host/` (or `CAPSD_ORACLE_DIR`).
//!
//! Run: `cargo test -p driver-qemu derive::compare_tests -- --ignored --nocapture`.
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
    // Extra cases (oracle files produced with `virsh domcapabilities` into CAPSD_ORACLE_DIR).
    ("i686-tcg-default", "/usr/bin/qemu-system-i386", "i686", "pc-i440fx-7.2", Accel::Tcg),
    ("i686-kvm-q35", "/usr/bin/qemu-system-i386", "i686", "pc-q35-7.2", Accel::Kvm),
    ("x86_64-i686-kvm-default", "/usr/bin/qemu-system-x86_64", "i686", "pc-i440fx-7.2", Accel::Kvm),
    ("x86_64-tcg-isapc", "/usr/bin/qemu-system-x86_64", "x86_64", "isapc", Accel::Tcg),
    ("x86_64-tcg-microvm", "/usr/bin/qemu-system-x86_64", "x86_64", "microvm", Accel::Tcg),
    ("armv7l-tcg-virt", "/usr/bin/qemu-system-arm", "armv7l", "virt-7.2", Accel::Tcg),
    ("armv7l-tcg-default", "/usr/bin/qemu-system-arm", "armv7l", "integratorcp", Accel::Tcg),
    ("aarch64-tcg-default", "/usr/bin/qemu-system-aarch64", "aarch64", "integratorcp", Accel::Tcg),
    ("aarch64-tcg-sbsa", "/usr/bin/qemu-system-aarch64", "aarch64", "sbsa-ref", Accel::Tcg),
    ("ppc64le-tcg-pseries", "/usr/bin/qemu-system-ppc64", "ppc64le", "pseries-7.2", Accel::Tcg),
    ("ppc64-tcg-powernv", "/usr/bin/qemu-system-ppc64", "ppc64", "powernv9", Accel::Tcg),
    ("ppc-tcg-default", "/usr/bin/qemu-system-ppc", "ppc", "g3beige", Accel::Tcg),
    ("riscv64-tcg-virt", "/usr/bin/qemu-system-riscv64", "riscv64", "virt", Accel::Tcg),
    ("riscv32-tcg-default", "/usr/bin/qemu-system-riscv32", "riscv32", "spike", Accel::Tcg),
    ("alpha-tcg-default", "/usr/bin/qemu-system-alpha", "alpha", "clipper", Accel::Tcg),
    ("m68k-tcg-default", "/usr/bin/qemu-system-m68k", "m68k", "mcf5208evb", Accel::Tcg),
];

fn oracle_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CAPSD_ORACLE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/libvirt-9.0-host"));
    dirs
}

fn oracle(stem: &str) -> Option<String> {
    oracle_dirs().into_iter().find_map(|d| std::fs::read_to_string(d.join(format!("{stem}.xml"))).ok())
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
