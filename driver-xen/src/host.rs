//! The Xen host facts driver-xen decides from, and how they are read: files under a root
//! directory (`/` on a real host, a recorded tree in tests) plus the output of `xl info`
//! obtained through a [`CommandRunner`].
//!
//! Nothing here decides a capability; [`crate::caps`] turns a [`XenHost`] into a document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runner::{CommandRunner, RunError};

/// Why the host facts could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XenProbeError {
    /// A line of `xl info` output is not `key : value`.
    #[error("xl info line {line}: expected 'key : value', got '{text}'")]
    XlInfoLine { line: usize, text: String },
    /// `xl info` lacks a field the driver needs.
    #[error("xl info output has no '{field}' field")]
    XlInfoMissing { field: &'static str },
    /// A numeric field of `xl info` is not a number.
    #[error("xl info field '{field}' is not a number: '{value}'")]
    XlInfoNumber { field: &'static str, value: String },
    /// Running `xl info` failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A host file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The fields of `xl info` the driver uses, plus every raw field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XlInfo {
    /// `machine`: the host architecture as uname reports it (`x86_64`, `aarch64`).
    pub machine: String,
    /// `nr_cpus`.
    pub nr_cpus: Option<u32>,
    /// `xen_major`.
    pub xen_major: u32,
    /// `xen_minor`.
    pub xen_minor: u32,
    /// `xen_version` (`4.17.3-pre`).
    pub xen_version: String,
    /// `xen_caps`, split on blanks (`xen-3.0-x86_64`, `hvm-3.0-x86_32p`, ...).
    pub xen_caps: Vec<String>,
    /// `virt_caps`, split on blanks (`pv`, `hvm`, `hvm_directio`, `pv_directio`, ...).
    pub virt_caps: Vec<String>,
    /// Every `key : value` line, as printed.
    pub fields: BTreeMap<String, String>,
}

impl XlInfo {
    /// Parse the text `xl info` prints: one `key<blanks>: value` per line, values may be
    /// empty and may contain `:` themselves (`xen_commandline`).
    pub fn parse(text: &str) -> Result<Self, XenProbeError> {
        let mut fields = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(XenProbeError::XlInfoLine { line: i + 1, text: line.to_owned() });
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(XenProbeError::XlInfoLine { line: i + 1, text: line.to_owned() });
            }
            fields.insert(key.to_owned(), value.trim().to_owned());
        }
        let get = |field: &'static str| fields.get(field).cloned().ok_or(XenProbeError::XlInfoMissing { field });
        let num = |field: &'static str| -> Result<u32, XenProbeError> {
            let v = get(field)?;
            v.parse().map_err(|_| XenProbeError::XlInfoNumber { field, value: v })
        };
        let words = |field: &str| -> Vec<String> {
            fields.get(field).map(|v| v.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
        };
        let nr_cpus = match fields.get("nr_cpus") {
            Some(v) => Some(v.parse().map_err(|_| XenProbeError::XlInfoNumber { field: "nr_cpus", value: v.clone() })?),
            None => None,
        };
        let xen_major = num("xen_major")?;
        let xen_minor = num("xen_minor")?;
        let xen_version = fields.get("xen_version").cloned().unwrap_or_else(|| {
            format!("{xen_major}.{xen_minor}{}", fields.get("xen_extra").map(String::as_str).unwrap_or(""))
        });
        if !fields.contains_key("xen_caps") {
            return Err(XenProbeError::XlInfoMissing { field: "xen_caps" });
        }
        Ok(XlInfo {
            machine: get("machine")?,
            nr_cpus,
            xen_major,
            xen_minor,
            xen_version,
            xen_caps: words("xen_caps"),
            virt_caps: words("virt_caps"),
            fields,
        })
    }
}

/// One guest flavour Xen reports in `xen_caps` (`hvm-3.0-x86_64` is `{hvm: true, arch:
/// "x86_64"}`). Architectures use libvirt's names (`x86_32` is `i686`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestCap {
    pub hvm: bool,
    pub arch: String,
}

impl GuestCap {
    /// Read one `xen_caps` token: `(xen|hvm)-MAJOR.MINOR-ARCH[p|be]`. Unknown tokens give
    /// `None` and are ignored, as libvirt does.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.splitn(3, '-');
        let kind = parts.next()?;
        let version = parts.next()?;
        let arch_raw = parts.next()?;
        let hvm = match kind {
            "hvm" => true,
            "xen" => false,
            _ => return None,
        };
        let (maj, min) = version.split_once('.')?;
        if maj.is_empty() || min.is_empty() || !maj.bytes().chain(min.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let arch = match arch_raw {
            "x86_32" | "x86_32p" => "i686",
            "x86_64" => "x86_64",
            "aarch64" => "aarch64",
            "armv7l" => "armv7l",
            "ia64" | "ia64be" => "ia64",
            "powerpc64" => "ppc64",
            _ => return None,
        };
        Some(GuestCap { hvm, arch: arch.to_owned() })
    }
}

/// Everything driver-xen knows about a host. Built by [`XenHost::probe`] from a root
/// directory and a command runner, or written by hand / deserialized for tests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct XenHost {
    /// Contents of `/sys/hypervisor/type` (`xen`), `None` when absent.
    pub hypervisor_type: Option<String>,
    /// Contents of `/proc/xen/capabilities` (`control_d` in dom0), `None` when absent.
    pub proc_xen_capabilities: Option<String>,
    /// `/sys/hypervisor/properties/capabilities`: the same list as `xen_caps`.
    pub sysfs_xen_caps: Option<String>,
    /// `/sys/hypervisor/version/{major,minor}`.
    pub sysfs_version: Option<(u32, u32)>,
    /// The `xl` tool (path as seen on the host), `None` when not installed.
    pub xl_path: Option<String>,
    /// Parsed `xl info`; `None` when it was not run or failed (see `xl_info_error`).
    pub xl_info: Option<XlInfo>,
    /// Why `xl info` gave nothing, when it was tried.
    pub xl_info_error: Option<String>,
    /// The device model (QEMU built for Xen), path as seen on the host.
    pub device_model: Option<String>,
    /// Firmware images found for HVM guests, hvmloader first, path as seen on the host.
    pub firmwares: Vec<String>,
}

/// Where upstream and distributions install the `xl` tool.
const XL_PATHS: &[&str] = &["/usr/sbin/xl", "/usr/bin/xl", "/sbin/xl", "/usr/local/sbin/xl"];

/// Device model locations: upstream default (`LIBXL_EXECBIN_DIR`), Debian's
/// `qemu-system-xen` package, Fedora/SUSE layouts.
const DEVICE_MODEL_PATHS: &[&str] = &[
    "/usr/lib/xen/bin/qemu-system-i386",
    "/usr/libexec/xen-qemu-system-i386",
    "/usr/libexec/xen/bin/qemu-system-i386",
    "/usr/lib64/xen/bin/qemu-system-i386",
    "/usr/local/lib/xen/bin/qemu-system-i386",
];

/// Firmware directories: upstream default (`LIBXL_FIRMWARE_DIR`), Fedora/SUSE layouts.
/// Debian's versioned `/usr/lib/xen-X.Y/boot` is added from the Xen version.
const FIRMWARE_DIRS: &[&str] = &["/usr/lib/xen/boot", "/usr/libexec/xen/boot", "/usr/lib64/xen/boot"];

/// OVMF built into Xen's tree is `ovmf.bin` in the firmware dir; Debian's libxl uses the
/// system OVMF package's image instead.
const SYSTEM_OVMF: &[&str] = &["/usr/share/ovmf/OVMF.fd"];

/// Host files under a root directory.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// The real path of a host path (`/sys/hypervisor/type` under the root).
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// Whether a regular file (or symlink to one) exists at a host path.
    pub fn is_file(&self, host_path: &str) -> bool {
        self.path(host_path).is_file()
    }

    /// Trimmed contents of a host file; `Ok(None)` when it does not exist.
    pub fn read_trimmed(&self, host_path: &str) -> Result<Option<String>, XenProbeError> {
        let p = self.path(host_path);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => Ok(None),
            Err(source) => Err(XenProbeError::Io { path: p, source }),
        }
    }
}

impl XenHost {
    /// Read the cheap facts only (files; no command): enough for availability.
    pub fn probe_files(root: &Path) -> Result<Self, XenProbeError> {
        let r = HostRoot::new(root);
        let hypervisor_type = r.read_trimmed("/sys/hypervisor/type")?;
        let proc_xen_capabilities = r.read_trimmed("/proc/xen/capabilities")?;
        let sysfs_xen_caps = r.read_trimmed("/sys/hypervisor/properties/capabilities")?;
        let major = r.read_trimmed("/sys/hypervisor/version/major")?.and_then(|s| s.parse().ok());
        let minor = r.read_trimmed("/sys/hypervisor/version/minor")?.and_then(|s| s.parse().ok());
        let xl_path = XL_PATHS.iter().find(|p| r.is_file(p)).map(|p| (*p).to_owned());
        Ok(XenHost {
            hypervisor_type,
            proc_xen_capabilities,
            sysfs_xen_caps,
            sysfs_version: major.zip(minor),
            xl_path,
            ..XenHost::default()
        })
    }

    /// Read every fact: the files of [`XenHost::probe_files`], then `xl info` (when `xl`
    /// exists and this is dom0), the device model and the firmware images.
    pub fn probe(root: &Path, runner: &dyn CommandRunner) -> Result<Self, XenProbeError> {
        let mut host = Self::probe_files(root)?;
        let r = HostRoot::new(root);
        if let (Some(xl), true) = (&host.xl_path, host.is_dom0()) {
            match runner.run(&r.path(xl), &["info"]) {
                Ok(text) => host.xl_info = Some(XlInfo::parse(&text)?),
                Err(e) => {
                    tracing::warn!(error = %e, "xl info failed");
                    host.xl_info_error = Some(e.to_string());
                }
            }
        }
        host.device_model = DEVICE_MODEL_PATHS.iter().find(|p| r.is_file(p)).map(|p| (*p).to_owned());
        let mut dirs: Vec<String> = FIRMWARE_DIRS.iter().map(|d| (*d).to_owned()).collect();
        if let Some((maj, min)) = host.version() {
            dirs.insert(1, format!("/usr/lib/xen-{maj}.{min}/boot"));
        }
        let mut firmwares = Vec::new();
        for name in ["hvmloader", "ovmf.bin"] {
            for d in &dirs {
                let p = format!("{d}/{name}");
                if r.is_file(&p) && !firmwares.contains(&p) {
                    firmwares.push(p);
                }
            }
        }
        for p in SYSTEM_OVMF {
            // Only a Xen host whose firmware dir has no ovmf.bin of its own uses the
            // distribution's OVMF image (Debian builds libxl that way).
            if r.is_file(p) && !firmwares.iter().any(|f| f.ends_with("/ovmf.bin")) {
                firmwares.push((*p).to_owned());
            }
        }
        host.firmwares = firmwares;
        Ok(host)
    }

    /// `/sys/hypervisor/type` says `xen`.
    pub fn is_xen(&self) -> bool {
        self.hypervisor_type.as_deref() == Some("xen")
    }

    /// `/proc/xen/capabilities` lists `control_d`: this is the control domain.
    pub fn is_dom0(&self) -> bool {
        self.proc_xen_capabilities.as_deref().is_some_and(|c| c.split_whitespace().any(|w| w == "control_d"))
    }

    /// Xen version (major, minor) from `xl info`, else sysfs.
    pub fn version(&self) -> Option<(u32, u32)> {
        self.xl_info.as_ref().map(|i| (i.xen_major, i.xen_minor)).or(self.sysfs_version)
    }

    /// The guest flavours of `xen_caps` (from `xl info`, else sysfs), duplicates removed.
    pub fn guest_caps(&self) -> Vec<GuestCap> {
        let tokens: Vec<String> = match (&self.xl_info, &self.sysfs_xen_caps) {
            (Some(i), _) => i.xen_caps.clone(),
            (None, Some(s)) => s.split_whitespace().map(str::to_owned).collect(),
            (None, None) => Vec::new(),
        };
        let mut out: Vec<GuestCap> = Vec::new();
        for g in tokens.iter().filter_map(|t| GuestCap::parse(t)) {
            if !out.contains(&g) {
                out.push(g);
            }
        }
        out
    }

    /// Whether `virt_caps` lists `cap`.
    pub fn has_virt_cap(&self, cap: &str) -> bool {
        self.xl_info.as_ref().is_some_and(|i| i.virt_caps.iter().any(|c| c == cap))
    }

    /// The host architecture: `machine` of `xl info`.
    pub fn host_arch(&self) -> Option<&str> {
        self.xl_info.as_ref().map(|i| i.machine.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XL_INFO: &str = "host                   : h\nmachine                : x86_64\nnr_cpus                : 8\n\
virt_caps              : pv hvm hvm_directio pv_directio hap shadow\nxen_major              : 4\n\
xen_minor              : 17\nxen_extra              : .3-pre\nxen_version            : 4.17.3-pre\n\
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64\n\
xen_commandline        : placeholder dom0_mem=4G,max:4G console=com1\nxen_changeset          : \n";

    #[test]
    fn parses_xl_info_fields() {
        let i = XlInfo::parse(XL_INFO).unwrap();
        assert_eq!(i.machine, "x86_64");
        assert_eq!(i.nr_cpus, Some(8));
        assert_eq!((i.xen_major, i.xen_minor), (4, 17));
        assert_eq!(i.xen_version, "4.17.3-pre");
        assert_eq!(i.xen_caps.len(), 4);
        assert!(i.virt_caps.contains(&"hvm_directio".to_owned()));
        assert_eq!(i.fields["xen_commandline"], "placeholder dom0_mem=4G,max:4G console=com1");
        assert_eq!(i.fields["xen_changeset"], "");
    }

    #[test]
    fn rejects_garbage_lines_naming_the_line() {
        let err = XlInfo::parse("machine : x86_64\nthis is not a field\n").unwrap_err();
        assert_eq!(err.to_string(), "xl info line 2: expected 'key : value', got 'this is not a field'");
    }

    #[test]
    fn rejects_missing_and_bad_fields() {
        let err = XlInfo::parse("machine : x86_64\nxen_minor : 1\n").unwrap_err();
        assert!(matches!(err, XenProbeError::XlInfoMissing { field: "xen_major" }), "{err}");
        let err = XlInfo::parse("machine : x86_64\nxen_major : four\nxen_minor : 1\nxen_caps : \n").unwrap_err();
        assert_eq!(err.to_string(), "xl info field 'xen_major' is not a number: 'four'");
        let err = XlInfo::parse("machine : x86_64\nxen_major : 4\nxen_minor : 1\n").unwrap_err();
        assert!(matches!(err, XenProbeError::XlInfoMissing { field: "xen_caps" }), "{err}");
    }

    #[test]
    fn parses_guest_caps_tokens() {
        assert_eq!(GuestCap::parse("hvm-3.0-x86_32p"), Some(GuestCap { hvm: true, arch: "i686".into() }));
        assert_eq!(GuestCap::parse("xen-3.0-x86_64"), Some(GuestCap { hvm: false, arch: "x86_64".into() }));
        assert_eq!(GuestCap::parse("xen-3.0-aarch64"), Some(GuestCap { hvm: false, arch: "aarch64".into() }));
        assert_eq!(GuestCap::parse("hvm-x-x86_64"), None);
        assert_eq!(GuestCap::parse("foo-3.0-x86_64"), None);
        assert_eq!(GuestCap::parse("xen-3.0-sparc"), None);
    }

    #[test]
    fn guest_caps_are_deduplicated() {
        let host = XenHost { xl_info: Some(XlInfo::parse(XL_INFO).unwrap()), ..XenHost::default() };
        let caps = host.guest_caps();
        assert_eq!(
            caps,
            vec![
                GuestCap { hvm: false, arch: "x86_64".into() },
                GuestCap { hvm: true, arch: "i686".into() },
                GuestCap { hvm: true, arch: "x86_64".into() },
            ]
        );
    }
}
