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
    /// host-model states `<maxphysaddr mode='passthrough' limit='N'/>` (x86 KVM).
    HostModelMaxPhysAddr,
    /// host-model features are listed sorted by name.
    HostModelFeaturesSorted,
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
    /// Without a firmware descriptor for the arch/machine, libvirt's built-in loader list is
    /// no longer reported.
    NoDefaultLoaders,
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

/// Every version-dependent rule of the QEMU document, oldest first.
pub const CHANGES: &[Row] = &[
    row(Change::Crypto, 9, 0, "provisional"),
    row(Change::Interface, 9, 0, "provisional"),
    row(Change::Panic, 9, 0, "provisional"),
    row(Change::AsyncTeardown, 9, 0, "provisional"),
    row(Change::Ps2, 9, 0, "provisional"),
    row(Change::LaunchSecurity, 9, 0, "provisional"),
    row(Change::HostModelMaxPhysAddr, 9, 0, "provisional"),
    row(Change::NoDefaultLoaders, 9, 1, "provisional"),
    row(Change::CpuBlockers, 10, 9, "provisional"),
    row(Change::CpuVersionedModels, 10, 10, "provisional"),
    row(Change::CpuModelsSorted, 10, 10, "provisional"),
    row(Change::Console, 11, 4, "provisional"),
    row(Change::Tdx, 11, 4, "provisional"),
    row(Change::S390PvEverywhere, 11, 4, "provisional"),
    row(Change::FirmwareFeatures, 11, 4, "provisional"),
    row(Change::Varstore, 11, 4, "provisional"),
    row(Change::HostdevIommufd, 11, 4, "provisional"),
    row(Change::DiskBusNvme, 11, 4, "provisional"),
    row(Change::FilesystemNoHandle, 11, 4, "provisional"),
    row(Change::HostModelFeaturesSorted, 11, 4, "provisional"),
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
        CHANGES.iter().find(|r| r.change == change).is_some_and(|r| self.version >= r.since)
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
/// [`NEWEST_KNOWN`].
pub fn choose(requested: Option<&str>, root: &std::path::Path) -> Result<Detected, TargetError> {
    match requested {
        Some(s) => {
            let version: LibvirtVersion = s.parse()?;
            if version < OLDEST_KNOWN {
                return Err(TargetError::TooOld { version });
            }
            Ok(Detected { version, source: VersionSource::Requested })
        }
        None => Ok(version::detect_or_newest(root)),
    }
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
