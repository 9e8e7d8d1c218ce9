//! Rule tests: small hand-built transcripts, one derivation rule each.

use capsd_core::{DomainCapabilities, EnumList, ErrorKind, Support};
use serde_json::{json, Value};

use super::{domain_capabilities, ResolvedQuery};
use crate::host::{HostFacts, S390PvFacts};
use crate::probe_data::{Accel, Exchange, ProbeData, Reply, Transcript, PROBE_FORMAT_VERSION};

/// A transcript answering `query-machines` with `machines` (name, cpu-max), `qom-list-types`
/// with `types`, plus any extra `(command, reply)` pairs.
fn transcript(machines: &[(&str, u32)], types: &[&str], extra: &[(&str, Value)]) -> Transcript {
    let mut exchanges = vec![
        Exchange {
            execute: "query-machines".into(),
            arguments: None,
            reply: Reply::ok(Value::Array(
                machines.iter().map(|(n, max)| json!({"name": n, "cpu-max": max})).collect(),
            )),
        },
        Exchange {
            execute: "qom-list-types".into(),
            arguments: None,
            reply: Reply::ok(Value::Array(types.iter().map(|t| json!({"name": t})).collect())),
        },
    ];
    for (cmd, reply) in extra {
        exchanges.push(Exchange { execute: (*cmd).into(), arguments: None, reply: Reply::ok(reply.clone()) });
    }
    Transcript { greeting: json!({}), exchanges }
}

fn data(runs: Vec<(Accel, Transcript)>, host: HostFacts) -> ProbeData {
    ProbeData {
        format_version: PROBE_FORMAT_VERSION,
        binary: "/usr/bin/qemu-test".into(),
        runs: runs.into_iter().collect(),
        host,
    }
}

fn query(arch: &str, machine: &str, accel: Accel) -> ResolvedQuery {
    ResolvedQuery { emulator: "/usr/bin/qemu-test".into(), arch: arch.into(), machine: machine.into(), accel }
}

fn derive_one(arch: &str, machine: &str, t: Transcript) -> DomainCapabilities {
    domain_capabilities(&data(vec![(Accel::Tcg, t)], HostFacts::default()), &query(arch, machine, Accel::Tcg)).unwrap()
}

fn device_enum(caps: &DomainCapabilities, device: &str, name: &str) -> Vec<String> {
    caps.devices.as_ref().unwrap().get(device).unwrap().enums.enum_values(name).unwrap().to_vec()
}

#[test]
fn pseries_has_no_floppy_and_no_fdc_bus() {
    let caps = derive_one("ppc64", "pseries-7.2", transcript(&[("pseries-7.2", 1024)], &[], &[]));
    assert_eq!(device_enum(&caps, "disk", "diskDevice"), ["disk", "cdrom", "lun"]);
    assert_eq!(device_enum(&caps, "disk", "bus"), ["scsi", "virtio"]);
}

#[test]
fn fdc_bus_does_not_need_a_floppy_controller_type() {
    // libvirt 9.0 offers fdc on every non-pSeries machine, aarch64 virt included.
    let caps = derive_one("aarch64", "virt-7.2", transcript(&[("virt-7.2", 512)], &["usb-storage"], &[]));
    assert_eq!(device_enum(&caps, "disk", "bus"), ["fdc", "scsi", "virtio", "usb"]);
}

#[test]
fn ide_only_on_boards_with_builtin_ide_and_bus_order_is_libvirts() {
    let types = ["ich9-ahci", "usb-storage"];
    let pc = derive_one("x86_64", "pc-i440fx-7.2", transcript(&[("pc-i440fx-7.2", 255)], &types, &[]));
    assert_eq!(device_enum(&pc, "disk", "bus"), ["ide", "fdc", "scsi", "virtio", "usb", "sata"]);
    let q35 = derive_one("x86_64", "pc-q35-7.2", transcript(&[("pc-q35-7.2", 288)], &types, &[]));
    assert_eq!(device_enum(&q35, "disk", "bus"), ["fdc", "scsi", "virtio", "usb", "sata"]);
}

#[test]
fn transitional_models_need_the_transitional_types() {
    let without = derive_one("m68k", "virt", transcript(&[("virt", 1)], &["virtio-rng-device"], &[]));
    assert_eq!(device_enum(&without, "disk", "model"), ["virtio"]);
    assert_eq!(device_enum(&without, "rng", "model"), ["virtio"]);
    let with = derive_one(
        "x86_64",
        "pc-q35-7.2",
        transcript(&[("pc-q35-7.2", 288)], &["virtio-rng-pci", "virtio-blk-pci-transitional"], &[]),
    );
    assert_eq!(device_enum(&with, "rng", "model"), ["virtio", "virtio-transitional", "virtio-non-transitional"]);
}

#[test]
fn rng_is_stated_even_without_a_virtio_rng_type() {
    let caps = derive_one("cris", "axis-dev88", transcript(&[("axis-dev88", 1)], &["rng-random"], &[]));
    let rng = caps.devices.as_ref().unwrap().rng.as_ref().unwrap();
    assert_eq!(rng.supported, Support::Yes);
    assert!(rng.enums.enum_values("model").unwrap().is_empty(), "no model without virtio-rng");
    assert_eq!(device_enum(&caps, "rng", "backendModel"), ["random"]);
}

#[test]
fn tpm_needs_a_backend_and_takes_models_from_qemu() {
    let none = derive_one("s390x", "s390-ccw-virtio-7.2", transcript(&[("s390-ccw-virtio-7.2", 248)], &[], &[]));
    assert_eq!(none.devices.as_ref().unwrap().tpm.as_ref().unwrap().supported, Support::No);

    let t = transcript(
        &[("pseries-7.2", 1024)],
        &["spapr-tpm-proxy"],
        &[("query-tpm-models", json!(["tpm-spapr"])), ("query-tpm-types", json!(["emulator"]))],
    );
    let host = HostFacts {
        swtpm: Some(crate::host::SwtpmFacts {
            swtpm: "/usr/bin/swtpm".into(),
            swtpm_setup: Some("/usr/bin/swtpm_setup".into()),
            swtpm_ioctl: Some("/usr/bin/swtpm_ioctl".into()),
            swtpm_features: vec![],
            swtpm_setup_features: vec!["tpm-2.0".into()],
        }),
        ..Default::default()
    };
    let caps =
        domain_capabilities(&data(vec![(Accel::Tcg, t)], host), &query("ppc64", "pseries-7.2", Accel::Tcg)).unwrap();
    assert_eq!(device_enum(&caps, "tpm", "model"), ["tpm-spapr", "spapr-tpm-proxy"]);
    assert_eq!(device_enum(&caps, "tpm", "backendModel"), ["emulator", "external"]);
    assert_eq!(device_enum(&caps, "tpm", "backendVersion"), ["2.0"]);
}

#[test]
fn kvm_bounds_vcpu_max_by_the_host_limit() {
    let runs = || vec![(Accel::Kvm, transcript(&[("pc-q35-7.2", 288)], &[], &[]))];
    let host = |limit| HostFacts { kvm_max_vcpus: Some(limit), ..Default::default() };
    let q = query("x86_64", "pc-q35-7.2", Accel::Kvm);
    assert_eq!(domain_capabilities(&data(runs(), host(240)), &q).unwrap().vcpu.unwrap().max, 240);
    assert_eq!(domain_capabilities(&data(runs(), host(1024)), &q).unwrap().vcpu.unwrap().max, 288);
}

#[test]
fn tcg_is_not_bounded_by_kvm_and_uses_its_own_machine_table() {
    let kvm = transcript(&[("pc-q35-7.2", 288)], &["vmgenid"], &[]);
    let tcg = transcript(&[("pc-q35-7.2", 100)], &[], &[]);
    let host = HostFacts { kvm_max_vcpus: Some(8), ..Default::default() };
    let caps = domain_capabilities(
        &data(vec![(Accel::Kvm, kvm), (Accel::Tcg, tcg)], host),
        &query("x86_64", "pc-q35-7.2", Accel::Tcg),
    )
    .unwrap();
    assert_eq!(caps.vcpu.unwrap().max, 100, "machine table of the TCG run, no KVM bound");
    assert_eq!(caps.domain, "qemu");
    // Device facts come from the primary (KVM) run.
    assert_eq!(caps.features.unwrap().genid.unwrap().supported, Support::Yes);
}

#[test]
fn machine_alias_resolves_to_its_canonical_entry() {
    let t = Transcript {
        greeting: json!({}),
        exchanges: vec![Exchange {
            execute: "query-machines".into(),
            arguments: None,
            reply: Reply::ok(json!([{"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288}])),
        }],
    };
    let caps = derive_one("x86_64", "q35", t);
    assert_eq!(caps.machine.as_deref(), Some("pc-q35-7.2"));
}

#[test]
fn unknown_machine_and_unprobed_accel_are_errors_not_panics() {
    let d = data(vec![(Accel::Tcg, transcript(&[("virt-7.2", 512)], &[], &[]))], HostFacts::default());
    let e = domain_capabilities(&d, &query("aarch64", "nosuch", Accel::Tcg)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("nosuch"), "{e}");
    let e = domain_capabilities(&d, &query("aarch64", "virt-7.2", Accel::Kvm)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CannotAnswer);
}

#[test]
fn gic_versions_follow_the_accelerator() {
    let gic = json!([
        {"version": 3, "emulated": true, "kernel": true},
        {"version": 2, "emulated": true, "kernel": false}
    ]);
    let t = || transcript(&[("virt-7.2", 512)], &[], &[("query-gic-capabilities", gic.clone())]);
    let tcg = derive_one("aarch64", "virt-7.2", t());
    let g = tcg.features.unwrap().gic.unwrap();
    assert_eq!(g.supported, Support::Yes);
    assert_eq!(g.enums.enum_values("version").unwrap(), ["2", "3"]);

    let kvm = domain_capabilities(
        &data(vec![(Accel::Kvm, t())], HostFacts::default()),
        &query("aarch64", "virt-7.2", Accel::Kvm),
    )
    .unwrap();
    assert_eq!(kvm.features.unwrap().gic.unwrap().enums.enum_values("version").unwrap(), ["3"]);

    let other_board = derive_one(
        "aarch64",
        "sbsa-ref",
        transcript(&[("sbsa-ref", 512)], &[], &[("query-gic-capabilities", gic.clone())]),
    );
    let g = other_board.features.unwrap().gic.unwrap();
    assert_eq!(g.supported, Support::No);
    assert!(g.enums.is_empty());
}

#[test]
fn s390_pv_only_on_s390_and_only_with_qemu_kvm_and_host() {
    let x86 = derive_one("x86_64", "pc-q35-7.2", transcript(&[("pc-q35-7.2", 288)], &[], &[]));
    assert!(x86.features.unwrap().s390_pv.is_none());

    let t = || transcript(&[("s390-ccw-virtio-7.2", 248)], &["s390-pv-guest"], &[]);
    let pv_host = HostFacts {
        s390_pv: S390PvFacts { prot_virt_host: Some(true), kvm_prot_virt: Some(true) },
        ..Default::default()
    };
    let q = |accel| query("s390x", "s390-ccw-virtio-7.2", accel);
    let pv = |caps: DomainCapabilities| caps.features.unwrap().s390_pv.unwrap().supported;
    let both = || vec![(Accel::Kvm, t()), (Accel::Tcg, t())];
    let kvm = domain_capabilities(&data(both(), pv_host.clone()), &q(Accel::Kvm)).unwrap();
    assert_eq!(pv(kvm), Support::Yes);
    // The same binary's TCG document states the same (a property of binary and host).
    let tcg = domain_capabilities(&data(both(), pv_host.clone()), &q(Accel::Tcg)).unwrap();
    assert_eq!(pv(tcg), Support::Yes);
    // Without KVM for the binary, or without host support: no.
    let tcg_only = domain_capabilities(&data(vec![(Accel::Tcg, t())], pv_host), &q(Accel::Tcg)).unwrap();
    assert_eq!(pv(tcg_only), Support::No);
    let no_host = domain_capabilities(&data(both(), HostFacts::default()), &q(Accel::Kvm)).unwrap();
    assert_eq!(pv(no_host), Support::No);
}

#[test]
fn sgx_sections_are_reported_in_kib() {
    let sgx = json!({"sgx": true, "sgx1": true, "sgx2": false, "flc": true,
                     "sections": [{"node": 0, "size": 67108864}, {"node": 1, "size": 33554432}]});
    let caps =
        derive_one("x86_64", "pc-q35-7.2", transcript(&[("pc-q35-7.2", 288)], &[], &[("query-sgx-capabilities", sgx)]));
    let s = caps.features.unwrap().sgx.unwrap();
    assert_eq!(s.supported, Support::Yes);
    let info = s.info.unwrap();
    assert!(info.flc && info.sgx1 && !info.sgx2);
    assert_eq!(info.section_size_kib, 98304);
    let sections = info.sections.unwrap();
    assert_eq!((sections[1].node, sections[1].size_kib), (1, 32768));
}

#[test]
fn without_schema_answers_nothing_is_claimed() {
    let caps = derive_one("x86_64", "pc-q35-7.2", transcript(&[("pc-q35-7.2", 288)], &[], &[]));
    let f = caps.features.as_ref().unwrap();
    assert_eq!(f.backing_store_input.unwrap().supported, Support::No);
    assert_eq!(f.backup.unwrap().supported, Support::No);
    assert!(device_enum(&caps, "graphics", "type").is_empty());
    assert_eq!(device_enum(&caps, "channel", "type"), ["pty", "unix"]);
    assert_eq!(device_enum(&caps, "video", "modelType"), ["none"]);
}

#[test]
fn sev_parameters_from_qemu_and_host_asids() {
    let sev = json!({"pdh": "x", "cert-chain": "y", "cbitpos": 47, "reduced-phys-bits": 1});
    let t = transcript(&[("pc-q35-7.2", 288)], &[], &[("query-sev-capabilities", sev)]);
    let mut host = HostFacts::default();
    host.sev.cpuid_asids = Some((509, 100));
    let caps =
        domain_capabilities(&data(vec![(Accel::Kvm, t)], host), &query("x86_64", "pc-q35-7.2", Accel::Kvm)).unwrap();
    let s = caps.features.unwrap().sev.unwrap();
    assert_eq!(s.supported, Support::Yes);
    let p = s.params.unwrap();
    assert_eq!((p.cbitpos, p.reduced_phys_bits, p.max_guests, p.max_es_guests), (47, 1, Some(410), Some(99)));

    let none = derive_one("x86_64", "pc-q35-7.2", transcript(&[("pc-q35-7.2", 288)], &[], &[]));
    let s = none.features.unwrap().sev.unwrap();
    assert_eq!(s.supported, Support::No);
    assert!(s.params.is_none());
}

#[test]
fn hostdev_usb_needs_a_usb_controller_and_vfio_needs_the_host() {
    let bare = derive_one("cris", "axis-dev88", transcript(&[("axis-dev88", 1)], &[], &[]));
    assert_eq!(device_enum(&bare, "hostdev", "subsysType"), ["pci", "scsi"]);
    assert!(device_enum(&bare, "hostdev", "pciBackend").is_empty());
    // `usb-host` is not what libvirt looks at: without a USB host controller there is no
    // USB assignment ...
    let no_controller =
        derive_one("s390x", "s390-ccw-virtio-8.1", transcript(&[("s390-ccw-virtio-8.1", 248)], &["usb-host"], &[]));
    assert_eq!(device_enum(&no_controller, "hostdev", "subsysType"), ["pci", "scsi"]);
    // ... and with any controller there is, `usb-host` or not (libvirt's own recordings of
    // s390x QEMU 8.1/8.2 and ppc64 QEMU 6.2 list controllers and no `usb-host`).
    for controller in ["pci-ohci", "qemu-xhci", "nec-usb-xhci", "piix3-usb-uhci", "usb-ehci"] {
        let caps =
            derive_one("s390x", "s390-ccw-virtio-8.2", transcript(&[("s390-ccw-virtio-8.2", 248)], &[controller], &[]));
        assert_eq!(device_enum(&caps, "hostdev", "subsysType"), ["usb", "pci", "scsi"], "{controller}");
    }

    let t = transcript(&[("pc-q35-7.2", 288)], &["qemu-xhci", "vfio-pci"], &[]);
    let mut host = HostFacts::default();
    host.vfio.iommu_groups = true;
    host.vfio.dev_vfio = true;
    let caps =
        domain_capabilities(&data(vec![(Accel::Tcg, t)], host), &query("x86_64", "pc-q35-7.2", Accel::Tcg)).unwrap();
    assert_eq!(device_enum(&caps, "hostdev", "subsysType"), ["usb", "pci", "scsi"]);
    assert_eq!(device_enum(&caps, "hostdev", "pciBackend"), ["default", "vfio"]);
}

#[test]
fn tpm_versions_need_every_swtpm_tool() {
    let t = transcript(
        &[("pc-q35-7.2", 288)],
        &[],
        &[("query-tpm-models", json!(["tpm-tis"])), ("query-tpm-types", json!(["emulator"]))],
    );
    let host = HostFacts {
        swtpm: Some(crate::host::SwtpmFacts {
            swtpm: "/usr/bin/swtpm".into(),
            swtpm_setup: Some("/usr/bin/swtpm_setup".into()),
            swtpm_ioctl: None,
            swtpm_features: vec![],
            swtpm_setup_features: vec!["tpm-1.2".into(), "tpm-2.0".into()],
        }),
        ..Default::default()
    };
    let caps =
        domain_capabilities(&data(vec![(Accel::Tcg, t)], host), &query("x86_64", "pc-q35-7.2", Accel::Tcg)).unwrap();
    // libvirt offers the emulator backends and the versions only with swtpm, swtpm_setup and
    // swtpm_ioctl all present: without swtpm_ioctl neither is stated.
    let tpm = caps.devices.as_ref().unwrap().get("tpm").unwrap();
    assert!(tpm.enums.enum_values("backendVersion").is_none(), "no backendVersion enum");
    assert_eq!(device_enum(&caps, "tpm", "backendModel"), Vec::<String>::new());
    assert_eq!(device_enum(&caps, "tpm", "model"), ["tpm-tis"]);
}

#[test]
fn malformed_replies_are_ignored_not_trusted() {
    let t = Transcript {
        greeting: json!({}),
        exchanges: vec![
            Exchange {
                execute: "query-machines".into(),
                arguments: None,
                reply: Reply::ok(json!([{"name": "virt-7.2", "cpu-max": 512}, {"name": 7}, "junk", {"cpu-max": -1}])),
            },
            Exchange { execute: "qom-list-types".into(), arguments: None, reply: Reply::ok(json!({"not": "a list"})) },
            Exchange {
                execute: "query-qmp-schema".into(),
                arguments: None,
                reply: Reply::ok(json!([1, null, {"name": 3}])),
            },
            Exchange { execute: "query-tpm-types".into(), arguments: None, reply: Reply::ok(json!([42, "emulator"])) },
            Exchange {
                execute: "query-gic-capabilities".into(),
                arguments: None,
                reply: Reply::ok(json!([{"version": "two"}, {"version": 3, "emulated": true}])),
            },
            Exchange { execute: "query-sgx-capabilities".into(), arguments: None, reply: Reply::ok(json!("yes")) },
            Exchange {
                execute: "query-sev-capabilities".into(),
                arguments: None,
                reply: Reply::err(crate::probe_data::QmpError {
                    class: "GenericError".into(),
                    desc: "SEV not available".into(),
                }),
            },
        ],
    };
    let caps = derive_one("aarch64", "virt-7.2", t);
    assert_eq!(caps.vcpu.unwrap().max, 512);
    let f = caps.features.as_ref().unwrap();
    assert_eq!(f.gic.as_ref().unwrap().enums.enum_values("version").unwrap(), ["3"]);
    assert_eq!(f.sgx.as_ref().unwrap().supported, Support::No);
    assert_eq!(f.sev.as_ref().unwrap().supported, Support::No);
    // No TPM frontend listed (query-tpm-models not in this schema): not supported.
    assert_eq!(caps.devices.as_ref().unwrap().get("tpm").unwrap().supported, Support::No);
    assert_eq!(caps.iothreads.unwrap().supported, Support::No);
}

/// Derive for one libvirt release (`X.Y`).
fn derive_for(release: &str, arch: &str, machine: &str, t: Transcript) -> DomainCapabilities {
    let target = crate::libvirt::Target::new(release.parse().unwrap());
    let options = crate::cpu::CpuOptions { target, ..Default::default() };
    super::domain_capabilities_with(
        &data(vec![(Accel::Tcg, t)], HostFacts::default()),
        &query(arch, machine, Accel::Tcg),
        options,
    )
    .unwrap()
}

fn pc_transcript(extra_types: &[&str], extra: &[(&str, Value)]) -> Transcript {
    let mut types = vec!["pvpanic", "pvpanic-pci", "virtio-crypto-device", "nvme-ns", "isa-fdc"];
    types.extend_from_slice(extra_types);
    transcript(&[("pc-q35-10.0", 4096)], &types, extra)
}

#[test]
fn the_target_release_decides_which_elements_exist() {
    let old = derive_for("9.0", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[]));
    let new = derive_for("12.8", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[]));
    let (od, nd) = (old.devices.as_ref().unwrap(), new.devices.as_ref().unwrap());
    assert!(od.crypto.is_none() && od.interface.is_none() && od.panic.is_none() && od.console.is_none());
    assert_eq!(nd.crypto.as_ref().unwrap().enums.enum_values("model").unwrap(), ["virtio"]);
    assert_eq!(nd.panic.as_ref().unwrap().enums.enum_values("model").unwrap(), ["isa", "hyperv", "pvpanic"]);
    assert!(nd.console.is_some() && nd.interface.is_some());
    assert!(device_enum(&new, "disk", "bus").contains(&"nvme".to_string()));
    assert!(!device_enum(&old, "disk", "bus").contains(&"nvme".to_string()));
    assert!(device_enum(&old, "filesystem", "driverType").contains(&"handle".to_string()));
    assert!(!device_enum(&new, "filesystem", "driverType").contains(&"handle".to_string()));
    assert!(old.os.as_ref().unwrap().firmware_features.is_none());
    assert!(new.os.as_ref().unwrap().firmware_features.is_some());
    let (of, nf) = (old.features.as_ref().unwrap(), new.features.as_ref().unwrap());
    assert!(of.launch_security.is_none() && of.tdx.is_none() && of.s390_pv.is_none());
    assert_eq!(nf.launch_security.as_ref().unwrap().supported, Support::No);
    assert_eq!(nf.tdx.as_ref().unwrap().supported, Support::No);
    assert_eq!(nf.s390_pv.as_ref().unwrap().supported, Support::No, "12.x states s390-pv on every arch");
    // 11.3 is between: panic and crypto yes, console (11.5) and s390-pv everywhere not yet.
    let mid = derive_for("11.3", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[]));
    let md = mid.devices.as_ref().unwrap();
    assert!(md.panic.is_some() && md.console.is_none());
    assert!(mid.features.as_ref().unwrap().s390_pv.is_none());
}

/// libvirt (10.5 on) offers `sev-snp` when QEMU has the `sev-snp-guest` type and answers
/// `query-sev-capabilities`, whatever the host's `kvm_amd` module parameters say.
#[test]
fn sev_snp_is_decided_by_qemu() {
    let sev = json!({"pdh": "x", "cert-chain": "y", "cbitpos": 51, "reduced-phys-bits": 1});
    let types = ["sev-guest", "sev-snp-guest"];
    let sectypes = |t: Transcript, host: HostFacts| {
        let target = crate::libvirt::Target::new("11.3".parse().unwrap());
        let options = crate::cpu::CpuOptions { target, ..Default::default() };
        let caps = super::domain_capabilities_with(
            &data(vec![(Accel::Kvm, t)], host),
            &query("x86_64", "pc-q35-10.0", Accel::Kvm),
            options,
        )
        .unwrap();
        let ls = caps.features.unwrap().launch_security.unwrap();
        ls.enums.enum_values("sectype").map(<[String]>::to_vec).unwrap_or_default()
    };
    // The host's sev_snp parameter is not set (or not known): QEMU's answer decides.
    let with_caps = pc_transcript(&types, &[("query-sev-capabilities", sev.clone())]);
    assert_eq!(sectypes(with_caps, HostFacts::default()), ["sev", "sev-snp"]);
    // No sev-snp-guest type: SEV only, even on a host whose KVM runs SNP guests.
    let mut snp_host = HostFacts::default();
    snp_host.sev.snp = true;
    let sev_only = pc_transcript(&["sev-guest"], &[("query-sev-capabilities", sev)]);
    assert_eq!(sectypes(sev_only, snp_host.clone()), ["sev"]);
    // QEMU did not answer query-sev-capabilities: neither.
    assert!(sectypes(pc_transcript(&types, &[]), snp_host).is_empty());
}

#[test]
fn unread_qemu_facts_leave_new_features_out() {
    // Neither query-command-line-options nor the machine's properties were answered:
    // async-teardown and ps2 are left out, never stated "no".
    let caps = derive_for("12.8", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[]));
    let f = caps.features.as_ref().unwrap();
    assert!(f.async_teardown.is_none());
    assert!(f.ps2.is_none());
    let t = pc_transcript(
        &[],
        &[(
            "query-command-line-options",
            json!([{"option": "run-with", "parameters": [{"name": "async-teardown", "type": "boolean"}]}]),
        )],
    );
    let caps = derive_for("12.8", "x86_64", "pc-q35-10.0", t);
    assert_eq!(caps.features.as_ref().unwrap().async_teardown.as_ref().unwrap().supported, Support::Yes);
}

#[test]
fn spice_needs_qemus_spice_option_group() {
    let schema = json!([{"name": "query-spice", "meta-type": "command", "arg-type": "0", "ret-type": "1"}]);
    // The module is missing: QEMU still has query-spice in its schema, but no spice options.
    let without = pc_transcript(
        &[],
        &[
            ("query-qmp-schema", schema.clone()),
            ("query-command-line-options", json!([{"option": "vnc", "parameters": []}])),
        ],
    );
    let caps = derive_for("9.0", "x86_64", "pc-q35-10.0", without);
    assert!(!device_enum(&caps, "graphics", "type").contains(&"spice".to_string()));
    assert_eq!(device_enum(&caps, "channel", "type"), ["pty", "unix"]);
    let with = pc_transcript(
        &[],
        &[
            ("query-qmp-schema", schema.clone()),
            ("query-command-line-options", json!([{"option": "spice", "parameters": []}])),
        ],
    );
    let caps = derive_for("9.0", "x86_64", "pc-q35-10.0", with);
    assert!(device_enum(&caps, "graphics", "type").contains(&"spice".to_string()));
    // Recordings without the option list fall back to the schema.
    let caps = derive_for("9.0", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[("query-qmp-schema", schema)]));
    assert!(device_enum(&caps, "graphics", "type").contains(&"spice".to_string()));
}

#[test]
fn floppy_needs_a_controller_from_11_4() {
    let arm = || transcript(&[("virt-10.0", 512)], &["virtio-blk-pci"], &[]);
    assert!(device_enum(&derive_for("11.3", "aarch64", "virt-10.0", arm()), "disk", "bus").contains(&"fdc".to_string()));
    assert!(
        !device_enum(&derive_for("11.4", "aarch64", "virt-10.0", arm()), "disk", "bus").contains(&"fdc".to_string())
    );
    let pc = derive_for("12.8", "x86_64", "pc-q35-10.0", pc_transcript(&[], &[]));
    assert!(device_enum(&pc, "disk", "diskDevice").contains(&"floppy".to_string()));
}
