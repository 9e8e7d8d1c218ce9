//! The libvirt release a document is for: parsed from the user (`--libvirt-version`,
//! `libvirt=`), detected from the installed library without running anything, or the newest
//! release this crate knows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A libvirt release, `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LibvirtVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl LibvirtVersion {
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        LibvirtVersion { major, minor, micro }
    }

    /// libvirt's packed form (`major * 1_000_000 + minor * 1_000 + micro`).
    pub fn packed(self) -> u64 {
        u64::from(self.major) * 1_000_000 + u64::from(self.minor) * 1_000 + u64::from(self.micro)
    }
}

impl fmt::Display for LibvirtVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// A version string that is not `X.Y` or `X.Y.Z` with decimal numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a libvirt version (expected X.Y or X.Y.Z, e.g. 11.3 or 9.0.0)")]
pub struct VersionParseError {
    pub input: String,
}

impl FromStr for LibvirtVersion {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionParseError { input: s.to_owned() };
        let parts: Vec<&str> = s.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(err());
        }
        let num = |p: &str| -> Result<u32, VersionParseError> {
            if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let major = num(parts[0])?;
        let minor = num(parts[1])?;
        let micro = match parts.get(2) {
            Some(p) => num(p)?,
            None => 0,
        };
        if minor > 999 || micro > 999 {
            return Err(err());
        }
        Ok(LibvirtVersion { major, minor, micro })
    }
}

/// How the target version was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VersionSource {
    /// Named by the caller (`--libvirt-version`, `libvirt=`).
    Requested,
    /// Read off the installed libvirt library's file name (`libvirt.so.0.MMMmmm.u`).
    Library { path: String },
    /// Read from the package manager's database (dpkg's status file).
    Package { package: String, path: String },
    /// No libvirt found: the newest release this capsd knows.
    NewestKnown,
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSource::Requested => write!(f, "requested"),
            VersionSource::Library { path } => write!(f, "library {path}"),
            VersionSource::Package { package, path } => write!(f, "package {package} in {path}"),
            VersionSource::NewestKnown => write!(f, "no libvirt installed: newest release known to capsd"),
        }
    }
}

/// A target version and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    pub version: LibvirtVersion,
    pub source: VersionSource,
}

/// Library directories searched for `libvirt.so.0*`, relative to the root (multiarch ones
/// are found by listing `usr/lib` for `*-linux-gnu*`).
const LIB_DIRS: [&str; 4] = ["usr/lib64", "usr/lib", "lib64", "lib"];

/// The installed libvirt under `root` (`/` on a host), without running it: the version
/// libvirt's build puts in its library's file name (`libvirt.so.0.11003.0` is 11.3.0), else
/// dpkg's record of `libvirt0`/`libvirt-daemon`. `None` when neither is found.
pub fn detect(root: &Path) -> Option<Detected> {
    from_library(root).or_else(|| from_dpkg(root))
}

/// [`detect`], else the newest known release.
pub fn detect_or_newest(root: &Path) -> Detected {
    detect(root).unwrap_or(Detected { version: super::NEWEST_KNOWN, source: VersionSource::NewestKnown })
}

fn lib_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // The host's own multiarch directory first (an i386 library beside it is not the daemon's).
    let triplet = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "powerpc64" => {
            if cfg!(target_endian = "little") {
                "powerpc64le-linux-gnu"
            } else {
                "powerpc64-linux-gnu"
            }
        }
        "s390x" => "s390x-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        other => other,
    };
    dirs.push(root.join("usr/lib").join(triplet));
    for d in LIB_DIRS {
        dirs.push(root.join(d));
    }
    dirs
}

/// The `libvirt.so.0` links [`detect`] looks at under `root`, whether they exist or not.
pub fn library_links(root: &Path) -> Vec<PathBuf> {
    lib_dirs(root).into_iter().map(|d| d.join("libvirt.so.0")).collect()
}

/// `libvirt.so.0.11003.0` -> 11.3.0.
fn version_of_library_name(name: &str) -> Option<LibvirtVersion> {
    let rest = name.strip_prefix("libvirt.so.0.")?;
    let (packed, micro) = rest.split_once('.')?;
    if packed.is_empty() || !packed.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let packed: u32 = packed.parse().ok()?;
    let micro: u32 = micro.parse().ok()?;
    Some(LibvirtVersion::new(packed / 1000, packed % 1000, micro))
}

fn from_library(root: &Path) -> Option<Detected> {
    for dir in lib_dirs(root) {
        let link = dir.join("libvirt.so.0");
        // The soname link names the real file; a missing link means no library here.
        let Ok(target) = std::fs::read_link(&link) else {
            // A library installed without its link (unusual): look for the file itself.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut found: Vec<(LibvirtVersion, PathBuf)> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let n = e.file_name();
                        version_of_library_name(n.to_str()?).map(|v| (v, e.path()))
                    })
                    .collect();
                found.sort();
                if let Some((v, p)) = found.pop() {
                    return Some(Detected {
                        version: v,
                        source: VersionSource::Library { path: p.display().to_string() },
                    });
                }
            }
            continue;
        };
        let Some(name) = target.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(v) = version_of_library_name(name) {
            let real = dir.join(&target);
            if real.exists() {
                return Some(Detected {
                    version: v,
                    source: VersionSource::Library { path: real.display().to_string() },
                });
            }
        }
    }
    None
}

/// dpkg's status file: the `Version:` of an installed `libvirt0` or `libvirt-daemon`
/// (`11.3.0-3+deb13u1` -> 11.3.0; an epoch is skipped).
fn from_dpkg(root: &Path) -> Option<Detected> {
    let path = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path).ok()?;
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        let Some(pkg) = field("Package") else { continue };
        if pkg != "libvirt0" && pkg != "libvirt-daemon" {
            continue;
        }
        if !field("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        let Some(ver) = field("Version") else { continue };
        let upstream = ver.split_once(':').map_or(ver, |(_, r)| r);
        let upstream = upstream.split(['-', '~', '+']).next().unwrap_or(upstream);
        if let Ok(v) = upstream.parse::<LibvirtVersion>() {
            return Some(Detected {
                version: v,
                source: VersionSource::Package { package: pkg.to_owned(), path: path.display().to_string() },
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!("9.0".parse::<LibvirtVersion>().unwrap(), LibvirtVersion::new(9, 0, 0));
        assert_eq!("11.3.0".parse::<LibvirtVersion>().unwrap(), LibvirtVersion::new(11, 3, 0));
        assert_eq!("12.10.1".parse::<LibvirtVersion>().unwrap(), LibvirtVersion::new(12, 10, 1));
        for bad in ["", "9", "9.", ".9", "9.0.0.0", "a.b", "9.0-rc1", "+9.0", "9.1000", "1234567.0", " 9.0"] {
            assert!(bad.parse::<LibvirtVersion>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn library_names() {
        assert_eq!(version_of_library_name("libvirt.so.0.9000.0"), Some(LibvirtVersion::new(9, 0, 0)));
        assert_eq!(version_of_library_name("libvirt.so.0.11003.0"), Some(LibvirtVersion::new(11, 3, 0)));
        assert_eq!(version_of_library_name("libvirt.so.0.12008.1"), Some(LibvirtVersion::new(12, 8, 1)));
        assert_eq!(version_of_library_name("libvirt.so.0"), None);
        assert_eq!(version_of_library_name("libvirt-qemu.so.0.9000.0"), None);
    }

    fn root_with(files: &[(&str, &str)], links: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        for (p, target) in links {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        d
    }

    #[test]
    fn detects_from_the_soname_link() {
        let d = root_with(
            &[("usr/lib/x86_64-linux-gnu/libvirt.so.0.11003.0", "")],
            &[("usr/lib/x86_64-linux-gnu/libvirt.so.0", "libvirt.so.0.11003.0")],
        );
        let got = detect(d.path()).unwrap();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(got.version, LibvirtVersion::new(11, 3, 0));
            assert!(matches!(got.source, VersionSource::Library { .. }));
        }
        let d =
            root_with(&[("usr/lib64/libvirt.so.0.9000.0", "")], &[("usr/lib64/libvirt.so.0", "libvirt.so.0.9000.0")]);
        assert_eq!(detect(d.path()).unwrap().version, LibvirtVersion::new(9, 0, 0));
    }

    #[test]
    fn detects_from_dpkg_and_falls_back_to_newest() {
        let status = "Package: foo\nStatus: install ok installed\nVersion: 1.0\n\n\
                      Package: libvirt0\nStatus: install ok installed\nVersion: 1:12.8.0-1\n";
        let d = root_with(&[("var/lib/dpkg/status", status)], &[]);
        let got = detect(d.path()).unwrap();
        assert_eq!(got.version, LibvirtVersion::new(12, 8, 0));
        assert!(matches!(got.source, VersionSource::Package { .. }));
        // Removed but not purged: not installed.
        let status = "Package: libvirt0\nStatus: deinstall ok config-files\nVersion: 9.0.0-4\n";
        let d = root_with(&[("var/lib/dpkg/status", status)], &[]);
        assert_eq!(detect(d.path()), None);
        let got = detect_or_newest(d.path());
        assert_eq!(got.version, crate::libvirt::NEWEST_KNOWN);
        assert_eq!(got.source, VersionSource::NewestKnown);
    }
}
