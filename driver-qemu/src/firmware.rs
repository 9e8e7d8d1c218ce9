//! Firmware descriptor files in QEMU's `docs/interop/firmware.json` format: where they are
//! looked up, which file wins, and their parsed content.
//!
//! Lookup (the same rules libvirt and QEMU document for these files): the directories
//! `/usr/share/qemu/firmware`, `/etc/qemu/firmware` and `$XDG_CONFIG_HOME/qemu/firmware`
//! (`~/.config/qemu/firmware` when unset) are read; a file in a later directory replaces the
//! file of the same name in an earlier one; an empty file masks the name altogether; only
//! `*.json` files count; the result is sorted by file name, which is the order of
//! preference.
//!
//! Reading is separate from parsing ([`parse_descriptor`] is pure) so that tests can feed
//! descriptors without touching the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The system-wide descriptor directories, lowest priority first (the user directory is
/// added by [`search_dirs`]).
pub const SYSTEM_DIRS: [&str; 2] = ["/usr/share/qemu/firmware", "/etc/qemu/firmware"];

/// Why one descriptor file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a firmware descriptor: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A file named by a descriptor (`executable`, `nvram-template`, a `memory` or `kernel`
/// image), and whether it exists on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFile {
    pub filename: String,
    /// `raw`, `qcow2`, ... (`raw` when the descriptor does not say).
    #[serde(default = "raw")]
    pub format: String,
    /// The file exists on this host (filled by [`read_descriptors`]; `false` when parsed only).
    #[serde(default)]
    pub exists: bool,
}

fn raw() -> String {
    "raw".to_owned()
}

/// How the firmware is presented to the guest (`mapping.device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "device", rename_all = "lowercase")]
pub enum FirmwareMapping {
    /// Pflash: `executable` and, in split mode, an `nvram-template`.
    Flash {
        /// `split` (default) or `combined` / `stateless`.
        #[serde(default = "split")]
        mode: String,
        executable: FirmwareFile,
        #[serde(default, rename = "nvram-template", skip_serializing_if = "Option::is_none")]
        nvram_template: Option<FirmwareFile>,
    },
    /// A ROM image loaded into memory (`-bios`).
    Memory {
        filename: String,
        #[serde(default)]
        exists: bool,
    },
    /// A kernel image (`-kernel`).
    Kernel {
        filename: String,
        #[serde(default)]
        exists: bool,
    },
}

fn split() -> String {
    "split".to_owned()
}

impl FirmwareMapping {
    /// The file the guest boots from.
    pub fn executable_path(&self) -> &str {
        match self {
            FirmwareMapping::Flash { executable, .. } => &executable.filename,
            FirmwareMapping::Memory { filename, .. } | FirmwareMapping::Kernel { filename, .. } => filename,
        }
    }
}

/// One `targets` entry: an architecture and glob patterns over machine type names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareTarget {
    pub architecture: String,
    #[serde(default)]
    pub machines: Vec<String>,
}

impl FirmwareTarget {
    /// Whether this target covers `arch` and the canonical machine name `machine`.
    pub fn matches(&self, arch: &str, machine: &str) -> bool {
        self.architecture == arch && self.machines.iter().any(|g| glob_match(g, machine))
    }
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareDescriptor {
    /// The descriptor file that was used (after override/masking).
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub description: String,
    /// `uefi`, `bios`, `openfirmware`, `uboot`.
    #[serde(rename = "interface-types")]
    pub interface_types: Vec<String>,
    pub mapping: FirmwareMapping,
    pub targets: Vec<FirmwareTarget>,
    /// `secure-boot`, `requires-smm`, `enrolled-keys`, `amd-sev`, `acpi-s3`, ...
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl FirmwareDescriptor {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
    /// Whether any target covers `arch` + `machine`.
    pub fn supports(&self, arch: &str, machine: &str) -> bool {
        self.targets.iter().any(|t| t.matches(arch, machine))
    }
}

/// Parse one descriptor's JSON text (no file existence checks).
pub fn parse_descriptor(path: &Path, text: &str) -> Result<FirmwareDescriptor, FirmwareError> {
    let mut d: FirmwareDescriptor =
        serde_json::from_str(text).map_err(|source| FirmwareError::Parse { path: path.to_owned(), source })?;
    d.path = path.display().to_string();
    Ok(d)
}

/// The directories searched, lowest priority first.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    let user = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => Some(PathBuf::from(x)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")),
    };
    if let Some(u) = user {
        dirs.push(u.join("qemu/firmware"));
    }
    dirs
}

/// The descriptor files that apply, by file name, after override and masking. A missing
/// directory is skipped; an unreadable one is an error.
pub fn effective_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, FirmwareError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(FirmwareError::Io { path: dir.clone(), source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| FirmwareError::Io { path: dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            by_name.insert(name, entry.path());
        }
    }
    let mut out = Vec::new();
    for path in by_name.into_values() {
        let len = std::fs::metadata(&path).map_err(|source| FirmwareError::Io { path: path.clone(), source })?.len();
        if len > 0 {
            out.push(path);
        }
    }
    Ok(out)
}

/// Read and parse every effective descriptor, in preference order, marking which named
/// files exist. A descriptor that does not parse is skipped with a warning (libvirt skips
/// it too), so one broken file does not hide the others.
pub fn read_descriptors(dirs: &[PathBuf]) -> Result<Vec<FirmwareDescriptor>, FirmwareError> {
    let mut out = Vec::new();
    for path in effective_files(dirs)? {
        let text = std::fs::read_to_string(&path).map_err(|source| FirmwareError::Io { path: path.clone(), source })?;
        match parse_descriptor(&path, &text) {
            Ok(mut d) => {
                mark_existing(&mut d);
                out.push(d);
            }
            Err(e) => tracing::warn!(error = %e, "skipping firmware descriptor"),
        }
    }
    Ok(out)
}

fn mark_existing(d: &mut FirmwareDescriptor) {
    let exists = |f: &str| Path::new(f).exists();
    match &mut d.mapping {
        FirmwareMapping::Flash { executable, nvram_template, .. } => {
            executable.exists = exists(&executable.filename);
            if let Some(n) = nvram_template {
                n.exists = exists(&n.filename);
            }
        }
        FirmwareMapping::Memory { filename, exists: e } | FirmwareMapping::Kernel { filename, exists: e } => {
            *e = exists(filename);
        }
    }
}

/// Shell-style glob with `*` and `?` (the only wildcards descriptors use).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("pc-q35-*", "pc-q35-7.2"));
        assert!(!glob_match("pc-q35-*", "pc-i440fx-7.2"));
        assert!(glob_match("virt-*", "virt-7.2"));
        assert!(!glob_match("virt-*", "virt"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*d", "abcxxd"));
        assert!(!glob_match("a?c*d", "abcxxe"));
    }

    #[test]
    fn parses_flash_descriptor() {
        let text = r#"{"description":"x","interface-types":["uefi"],
            "mapping":{"device":"flash","executable":{"filename":"/nonexistent/CODE.fd","format":"raw"},
                       "nvram-template":{"filename":"/nonexistent/VARS.fd","format":"raw"}},
            "targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],
            "features":["secure-boot","requires-smm"],"tags":[]}"#;
        let d = parse_descriptor(Path::new("/d/50-x.json"), text).unwrap();
        assert_eq!(d.path, "/d/50-x.json");
        assert!(d.supports("x86_64", "pc-q35-7.2"));
        assert!(!d.supports("x86_64", "pc-i440fx-7.2"));
        assert!(!d.supports("aarch64", "pc-q35-7.2"));
        assert!(d.has_feature("secure-boot"));
        assert_eq!(d.mapping.executable_path(), "/nonexistent/CODE.fd");
        match &d.mapping {
            FirmwareMapping::Flash { mode, nvram_template, .. } => {
                assert_eq!(mode, "split");
                assert_eq!(nvram_template.as_ref().unwrap().filename, "/nonexistent/VARS.fd");
            }
            other => panic!("wrong mapping {other:?}"),
        }
    }

    #[test]
    fn bad_descriptor_names_the_file() {
        let e = parse_descriptor(Path::new("/d/bad.json"), "{\"mapping\": 3}").unwrap_err();
        assert!(e.to_string().contains("/d/bad.json"), "{e}");
    }

    #[test]
    fn override_mask_and_order() {
        let sys = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let desc = |exe: &str| {
            format!(
                r#"{{"interface-types":["bios"],"mapping":{{"device":"memory","filename":"{exe}"}},
                   "targets":[{{"architecture":"x86_64","machines":["pc-*"]}}]}}"#
            )
        };
        std::fs::write(sys.path().join("60-b.json"), desc("/sys/b")).unwrap();
        std::fs::write(sys.path().join("50-a.json"), desc("/sys/a")).unwrap();
        std::fs::write(sys.path().join("70-masked.json"), desc("/sys/m")).unwrap();
        std::fs::write(sys.path().join("README"), "not json").unwrap();
        std::fs::write(etc.path().join("60-b.json"), desc("/etc/b")).unwrap();
        std::fs::write(etc.path().join("70-masked.json"), "").unwrap();
        let dirs = vec![sys.path().to_owned(), etc.path().to_owned(), PathBuf::from("/nonexistent-dir")];
        let ds = read_descriptors(&dirs).unwrap();
        let exes: Vec<&str> = ds.iter().map(|d| d.mapping.executable_path()).collect();
        assert_eq!(exes, ["/sys/a", "/etc/b"]);
    }
}
