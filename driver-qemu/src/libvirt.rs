//! Which libvirt the document is for, and every way libvirt's QEMU document changed from
//! 9.0 on: one table ([`CHANGES`]), each row with the first release that has the change and
//! where that fact comes from. Derivation asks [`Target::has`]; no other place compares
//! libvirt versions.
//!
//! The rows are facts about libvirt's releases (its NEWS, its documentation and where the
//! code that prints each element lives); the real outputs of Debian's libvirt 9.0, 11.3 and
//! 12.x on one host (`../shared/tools/stack-oracle.sh`) confirm them in
//! `cargo xtask conformance`.

pub mod version;

pub use version::{Detected, LibvirtVersion, VersionParseError, VersionSource};

/// The newest libvirt release this capsd knows: the target when no libvirt is installed.
pub const NEWEST_KNOWN: LibvirtVersion = LibvirtVersion::new(12, 8, 0);

/// The oldest release whose document capsd reproduces; older targets are refused.
pub const OLDEST_KNOWN: LibvirtVersion = LibvirtVersion::new(9, 0, 0);

/// One change of libvirt's domain capabilities document (QEMU driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Change {
    /// `<cpu><mode name='custom'>`: an unusable model is followed by `<blockers model=...>`
    /// naming the features that keep it from running.
    CpuBlockers,
    /// cpu_map's `index.xml` groups models (`<group>`) and ships versioned models (`-vN`);
    /// custom models carry `canonical='NAME-vN'` for an alias of a versioned model.
    CpuVersionedModels,
    /// Custom models are listed sorted by name instead of in QEMU's order.
    CpuModelsSorted,
    /// host-model states `<maxphysaddr mode='passthrough' limit='N'/>` (KVM, where the host states
    /// its physical address size: x86).
    HostModelMaxPhysAddr,
    /// host-model features are listed sorted by name (every arch; before, x86 in cpu_map
    /// order and s390 in QEMU's order).
    HostModelFeaturesSorted,
    /// `<hyperv>`'s features enum may name `emsr_bitmap` and `xmm_input`.
    HypervEmsrXmm,
    /// `<hyperv>` states QEMU's defaults (`<defaults>`: spinlocks, stimer_direct, ...).
    HypervDefaults,
    /// libvirt has a CPU driver for riscv64: its custom mode lists QEMU's models.
    CpuDriverRiscv64,
    /// libvirt has a CPU driver for loongarch64: its custom mode lists QEMU's models.
    CpuDriverLoongArch64,
    /// s390 custom models of the machine generations (`z*`, `gen*`) say `vendor='IBM'`.
    S390ModelVendor,
    /// `<devices><crypto>` (virtio crypto device, qemu type, builtin backend).
    Crypto,
    /// `<devices><interface>` with the `backendType` enum (default, passt).
    Interface,
    /// `<devices><panic>` with the panic device models.
    Panic,
    /// `<devices><console>` with the character device types.
    Console,
    /// `<features><async-teardown>`.
    AsyncTeardown,
    /// `<features><ps2>`.
    Ps2,
    /// `<features><launchSecurity>` with the `sectype` enum.
    LaunchSecurity,
    /// `<features><tdx>`.
    Tdx,
    /// `<features><s390-pv>` is stated on every arch (`supported='no'` where it cannot be).
    S390PvEverywhere,
    /// `<os><firmwareFeatures>` (secureBoot / enrolledKeys).
    FirmwareFeatures,
    /// `<os><varstore>`.
    Varstore,
    /// `<devices><hostdev><enum name='iommufd'>`.
    HostdevIommufd,
    /// `<disk><enum name='bus'>` offers `nvme`.
    DiskBusNvme,
    /// `<filesystem><enum name='driverType'>` no longer offers `handle`.
    FilesystemNoHandle,
    /// A floppy drive (`floppy`, bus `fdc`) only on boards with a floppy controller.
    FloppyNeedsController,
    /// `<graphics>` may offer `rdp` (D-Bus display plus a `qemu-rdp` helper).
    GraphicsRdp,
    /// `<sev>` states `<cpu0Id>` when QEMU reports it.
    SevCpu0Id,
    /// With no machine asked, ARM and RISC-V guests get the `virt` board.
    VirtDefaultMachine,
    /// The `loongarch64` architecture is known.
    ArchLoongArch64,
}

/// A row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub change: Change,
    /// The first release that prints the document this way.
    pub since: LibvirtVersion,
    /// Where the fact comes from (NEWS entry, documentation, source file).
    pub source: &'static str,
}

const fn row(change: Change, major: u32, minor: u32, source: &'static str) -> Row {
    Row { change, since: LibvirtVersion::new(major, minor, 0), source }
}

/// Every version-dependent rule of the QEMU document, oldest first. Sources: libvirt's
/// NEWS (`NEWS vX.Y.0: ...`), its domain capabilities documentation (`formatdomaincaps`,
/// whose `since` markers date elements), the functions that fill each element in
/// `src/qemu/qemu_capabilities.c`, and Debian's 9.0 / 11.3 / 12.8 outputs on one host
/// (`stacks`). Where a release could only be bracketed, the row says so and takes the
/// release the other evidence points to.
pub const CHANGES: &[Row] = &[
    row(Change::Crypto, 9, 1, "NEWS v9.1.0 'qemu: Support crypto device'; virQEMUCapsFillDomainDeviceCryptoCaps"),
    row(
        Change::VirtDefaultMachine,
        9,
        3,
        "NEWS v9.3.0 'qemu: Change default machine type for ARM and RISC-V' (virt); stacks: 9.0 picks \
         integratorcp / spike, 11.3 virt",
    ),
    row(
        Change::HostModelMaxPhysAddr,
        9,
        5,
        "libvirt-go-xml-module 737591d 'Add domain capabilities CPU max phys addr element' (tag v1.9005.0); \
         NEWS v9.5.0 'Include maximum physical address size in baseline CPU'; 11.3's \
         virQEMUCapsFillDomainCPUCaps sets the host-model address size (absent in 9.0): \
         /proc/cpuinfo 'address sizes' of an x86 host, accelerated guests only; stacks: 11.3 prints it for kvm",
    ),
    row(
        Change::AsyncTeardown,
        9,
        6,
        "formatdomain 'async-teardown ... Since 9.6.0'; domCapsTuples maps it to QEMU's run-with async-teardown",
    ),
    row(
        Change::CpuDriverRiscv64,
        9,
        10,
        "src/cpu/cpu_riscv64.c (Copyright 2023 Ventana Micro; registered in cpu.c's driver table) is in \
         11.3, not in 9.0; stacks: 11.3 and 12.8 list riscv64 models, 9.0 says no; release not found \
         (bracket 9.1..10.2): the last 2023 release",
    ),
    row(
        Change::ArchLoongArch64,
        10,
        2,
        "NEWS v10.2.0 'qemu: Added support for the loongarch64 architecture' (virArch gains loongarch64)",
    ),
    row(
        Change::CpuDriverLoongArch64,
        10,
        2,
        "src/cpu/cpu_loongarch.c (Copyright 2024 Loongson, no model list) came with NEWS v10.2.0 'qemu: \
         Added support for the loongarch64 architecture'; stacks: 11.3 and 12.8 list its models",
    ),
    row(
        Change::LaunchSecurity,
        10,
        5,
        "NEWS v10.5.0 SEV-SNP support 'reported in domain capabilities'; formatdomaincaps launchSecurity since 10.5.0; \
         virQEMUCapsFillDomainLaunchSecurity: sev / sev-snp from QEMU's sev-guest / sev-snp-guest types, both cleared \
         when query-sev-capabilities gives GenericError (virQEMUCapsProbeQMPSEVCapabilities, 11.3); no kvm_amd \
         sev_snp parameter read (11.3's qemu_capabilities.c reads only kvm_amd/parameters/sev, for its cache; \
         stacks: 12.8's libvirt_driver_qemu.so names no other kvm_amd parameter path); \
         libvirt's qemu_9.2.0/10.0.0 +amdsev fixtures list sev-snp",
    ),
    row(
        Change::Interface,
        10,
        6,
        "NEWS v10.6.0: supported network backends reported in domain capabilities; virQEMUCapsFillDomainDeviceNetCaps (netdev user -> default, stream -> passt)",
    ),
    row(
        Change::Ps2,
        10,
        7,
        "NEWS v10.7.0 'ability to disable the built-in PS/2 controller'; virQEMUCapsFillDomainFeaturePS2Caps (generic-pc-machine's i8042 property)",
    ),
    row(
        Change::HypervEmsrXmm,
        10,
        7,
        "NEWS v10.7.0 'qemu: Add support for hyperv enlightenment feature hv-emsr-bitmap' and \
         '... hv-xmm-input'; virDomainHyperv enum in 11.3 ends with emsr_bitmap, xmm_input",
    ),
    row(
        Change::CpuBlockers,
        10,
        9,
        "NEWS v10.9.0 'Report CPU model blockers in domain capabilities'; formatdomaincaps.rst \
         <blockers> 'Since 10.9.0'",
    ),
    row(
        Change::CpuVersionedModels,
        10,
        10,
        "NEWS v10.10.0 'qemu: Add support for versioned CPU models' (cpu_map X-vN models, \
         index.xml <group>s); formatdomaincaps.rst canonical attribute 'since 10.10.0'; \
         virCPUx86GetCanonicalModel",
    ),
    row(
        Change::CpuModelsSorted,
        10,
        10,
        "virDomainCapsCPUModelsSort (models and each model's blockers, strcmp order, blockers \
         de-duplicated) called from virQEMUCapsCPUDefsToModels in 11.3, absent in 9.0; release \
         bracketed 10.5..11.3 (a June 2024 report of ~10.4 still lists QEMU's order), placed \
         with the versioned models of 10.10",
    ),
    row(
        Change::Panic,
        10,
        10,
        "virQEMUCapsFillDomainDevicePanicCaps (in 11.3, not in 9.0); libvirt-go-xml's panic element tagged v1.10010.0",
    ),
    row(Change::SevCpu0Id, 11, 1, "libvirt-go-xml's sev cpu0Id tagged v1.11001.0; upstream fixture qemu_9.2.0+amdsev"),
    row(
        Change::GraphicsRdp,
        11,
        2,
        "virQEMUCapsFillDomainDeviceGraphicsCaps offers rdp with the D-Bus display and qemuRdpAvailable (in 11.3); NEWS v11.3.0 fixes its probing; release approximate",
    ),
    row(
        Change::S390ModelVendor,
        11,
        3,
        "virCPUs390GetVendorForModel ('z*'/'gen*' -> IBM) in 11.3's cpu_s390.c, absent in 9.0; \
         first release not found (bracket 9.1..11.3): the newest bound, confirmed by 11.3's output",
    ),
    row(
        Change::FloppyNeedsController,
        11,
        4,
        "NEWS v11.4.0 'Improve accuracy of FDC/floppy device support statement in capabilities XML'; stacks: 12.8 drops floppy/fdc on aarch64 virt and s390",
    ),
    row(
        Change::Console,
        11,
        5,
        "NEWS v11.5.0 'Include supported console types in domain capabilities'; virQEMUCapsFillDomainDeviceConsoleCaps",
    ),
    row(Change::DiskBusNvme, 11, 5, "NEWS v11.5.0 'qemu: Add support for NVMe disks' (bus nvme with nvme-ns)"),
    row(
        Change::Tdx,
        11,
        6,
        "virQEMUCapsFillDomainFeatureTDXCaps; libvirt-go-xml's TDX feature tagged v1.11006.0; stacks: 12.8 prints it",
    ),
    row(
        Change::S390PvEverywhere,
        11,
        6,
        "stacks: 12.8 prints s390-pv on every arch, 11.3 only on s390; bracketed 11.4-12.8, taken with TDX (11.6)",
    ),
    row(
        Change::HypervDefaults,
        11,
        9,
        "formatdomaincaps.rst <hyperv> <defaults> '(since 11.9.0)'; NEWS v11.9.0 'Introduce \
         Hyper-V host-model mode'; libvirt-go-xml-module 029b57b (tag v1.11009.0)",
    ),
    row(
        Change::FirmwareFeatures,
        12,
        1,
        "NEWS v12.1.0 'Advertise firmware features in domain capabilities XML'; formatdomaincaps since 12.1.0",
    ),
    row(Change::Varstore, 12, 1, "NEWS v12.1.0 'Add support for uefi-vars device'; formatdomaincaps varstore since 12.1.0"),
    row(Change::HostdevIommufd, 12, 1, "formatdomaincaps iommufd since 12.1.0; NEWS v12.2.0 bug fix referring to it"),
    row(
        Change::FilesystemNoHandle,
        12,
        2,
        "NEWS v12.2.0 'Stop advertising support for handle backend of 9p filesystems'",
    ),
    row(
        Change::HostModelFeaturesSorted,
        12,
        5,
        "devel list series 'qemu_capabilities: Always sort features in host-model CPU' (with the \
         SUPPORTED_CPU_FEATURES flag of NEWS v12.5.0); virCPUDefSortFeatures is in 12.8's \
         libvirt.so, not in 11.3's; stacks: 12.8 sorts, 11.3 does not. Every arch: upstream's \
         qemu_10.0.0.s390x fixture lists the s390 host-model features sorted, 11.3's (and 9.0's) in \
         QEMU's expansion order",
    ),
];

/// The libvirt release a document is derived for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub version: LibvirtVersion,
}

impl Target {
    pub const fn new(version: LibvirtVersion) -> Self {
        Target { version }
    }

    /// Whether the target release prints the document with `change`.
    pub fn has(&self, change: Change) -> bool {
        let row = CHANGES.iter().find(|r| r.change == change);
        let applies = row.is_some_and(|r| self.version >= r.since);
        if let Some(r) = row {
            // Evidence (`capsd explain`): the row that decided, and for which release.
            capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Rule {
                change: format!("{change:?}"),
                since: r.since.to_string(),
                target: self.version.to_string(),
                applies,
                source: r.source.to_owned(),
            });
        }
        applies
    }
}

impl Default for Target {
    /// libvirt 9.0: the document capsd reproduced first (derivation's historical default).
    fn default() -> Self {
        Target::new(OLDEST_KNOWN)
    }
}

/// The target for a query: `requested` when given (it must be a release capsd knows how to
/// print, [`OLDEST_KNOWN`] or newer), else the libvirt installed under `root`, else
/// [`NEWEST_KNOWN`]. A target [`beyond_table`] is warned about once per process.
pub fn choose(requested: Option<&str>, root: &std::path::Path) -> Result<Detected, TargetError> {
    match requested {
        Some(s) => {
            let version: LibvirtVersion = s.parse()?;
            if version < OLDEST_KNOWN {
                return Err(TargetError::TooOld { version });
            }
            let d = Detected { version, source: VersionSource::Requested };
            warn_once_if_beyond_table(&d);
            Ok(d)
        }
        None => {
            let d = version::detect_or_newest(root);
            warn_once_if_beyond_table(&d);
            Ok(d)
        }
    }
}

/// Whether `version` is a release after every one the table knows (a later major or minor
/// release than [`NEWEST_KNOWN`]; its maintenance releases change no document): capsd prints
/// it by [`NEWEST_KNOWN`]'s rules, and whatever that release changed is unknown to capsd.
pub fn beyond_table(version: LibvirtVersion) -> bool {
    (version.major, version.minor) > (NEWEST_KNOWN.major, NEWEST_KNOWN.minor)
}

/// The release whose rules the document for `version` follows: `version` itself, or
/// [`NEWEST_KNOWN`] for a release [`beyond_table`].
pub fn rules_of(version: LibvirtVersion) -> LibvirtVersion {
    if beyond_table(version) {
        NEWEST_KNOWN
    } else {
        version
    }
}

/// What a user is told about a release [`beyond_table`] (`None` for any other).
pub fn beyond_table_warning(version: LibvirtVersion) -> Option<String> {
    beyond_table(version).then(|| {
        format!(
            "libvirt {version} is newer than the newest release capsd knows ({NEWEST_KNOWN}): the document \
             follows {NEWEST_KNOWN}'s rules, and changes libvirt made after {NEWEST_KNOWN} are unknown to capsd"
        )
    })
}

/// Warn (once per process) when the target `d` is [`beyond_table`].
pub fn warn_once_if_beyond_table(d: &Detected) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(w) = beyond_table_warning(d.version) {
        WARNED.call_once(|| tracing::warn!(source = %d.source, "{w}"));
    }
}

/// How capsd drivers describes the target `d`: the release and where it came from, the
/// release whose rules apply, and the warning for a release [`beyond_table`].
pub fn describe_target(d: &Detected) -> Vec<(String, String)> {
    let mut v = vec![
        ("libvirt_version".to_owned(), d.version.to_string()),
        ("libvirt_version_source".to_owned(), d.source.to_string()),
        ("libvirt_rules".to_owned(), rules_of(d.version).to_string()),
    ];
    if let Some(w) = beyond_table_warning(d.version) {
        v.push(("libvirt_rules_warning".to_owned(), w));
    }
    v
}

/// A requested target capsd cannot print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error(transparent)]
    Parse(#[from] VersionParseError),
    #[error("libvirt {version} is older than the oldest release capsd reproduces ({OLDEST_KNOWN})")]
    TooOld { version: LibvirtVersion },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_after_the_table_is_named_with_the_rules_it_gets() {
        let v = |s: &str| s.parse::<LibvirtVersion>().unwrap();
        for known in ["9.0", "11.3.0", "12.8", "12.8.3"] {
            assert!(!beyond_table(v(known)), "{known}");
            assert_eq!(rules_of(v(known)), v(known));
            assert_eq!(beyond_table_warning(v(known)), None);
        }
        for newer in ["12.9", "13.0.0", "99.1"] {
            assert!(beyond_table(v(newer)), "{newer}");
            assert_eq!(rules_of(v(newer)), NEWEST_KNOWN);
            let w = beyond_table_warning(v(newer)).unwrap();
            assert!(
                w.starts_with(&format!("libvirt {} is newer than the newest release capsd knows (12.8.0)", v(newer))),
                "{w}"
            );
        }
        // A newer release gets every rule of the table, exactly as the newest known one.
        for r in CHANGES {
            assert!(Target::new(v("99.1")).has(r.change) && Target::new(NEWEST_KNOWN).has(r.change));
        }
    }

    #[test]
    fn a_newer_installed_release_is_described_with_its_rules_and_the_warning() {
        // trixie-backports' libvirt 12.9, as its library's file name says.
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("usr/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libvirt.so.0.12009.0"), b"").unwrap();
        std::os::unix::fs::symlink("libvirt.so.0.12009.0", lib.join("libvirt.so.0")).unwrap();
        let d = choose(None, root.path()).unwrap();
        assert_eq!(d.version, LibvirtVersion::new(12, 9, 0), "{d:?}");
        let rows = describe_target(&d);
        let get = |k: &str| rows.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("libvirt_version"), Some("12.9.0"));
        assert_eq!(get("libvirt_rules"), Some("12.8.0"));
        assert!(get("libvirt_rules_warning").unwrap().contains("changes libvirt made after 12.8.0 are unknown"));
        let known = describe_target(&choose(Some("11.3"), root.path()).unwrap());
        assert!(known.iter().any(|(k, v)| k == "libvirt_rules" && v == "11.3.0"));
        assert!(!known.iter().any(|(k, _)| k == "libvirt_rules_warning"));
    }

    #[test]
    fn every_change_has_exactly_one_row_and_rows_are_ordered() {
        let mut seen = std::collections::HashSet::new();
        for r in CHANGES {
            assert!(seen.insert(r.change), "{:?} has two rows", r.change);
            assert!(r.since >= OLDEST_KNOWN && r.since <= NEWEST_KNOWN, "{:?}: {}", r.change, r.since);
            assert!(!r.source.is_empty());
        }
        for w in CHANGES.windows(2) {
            assert!(w[0].since <= w[1].since, "{:?} is listed after a newer row", w[1].change);
        }
    }

    #[test]
    fn target_has_a_change_from_its_release_on() {
        let before = Target::new(LibvirtVersion::new(10, 8, 0));
        let at = Target::new(LibvirtVersion::new(10, 9, 0));
        let since = CHANGES.iter().find(|r| r.change == Change::CpuBlockers).unwrap().since;
        assert_eq!(before.has(Change::CpuBlockers), before.version >= since);
        assert_eq!(at.has(Change::CpuBlockers), at.version >= since);
        assert!(Target::new(NEWEST_KNOWN).has(Change::CpuBlockers));
        assert!(!Target::default().has(Change::CpuBlockers));
    }

    #[test]
    fn choose_refuses_bad_and_too_old_requests() {
        let root = std::path::Path::new("/nonexistent-root");
        assert!(matches!(choose(Some("eleven"), root), Err(TargetError::Parse(_))));
        assert!(matches!(choose(Some("8.10"), root), Err(TargetError::TooOld { .. })));
        let d = choose(Some("11.3"), root).unwrap();
        assert_eq!((d.version, d.source), (LibvirtVersion::new(11, 3, 0), VersionSource::Requested));
        assert_eq!(choose(None, root).unwrap().source, VersionSource::NewestKnown);
    }
}
