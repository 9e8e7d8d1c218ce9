//! The host facts driver-lxc decides from, read under a root directory (`/` on a real host,
//! a recorded tree in tests). Nothing here decides a capability; [`crate::caps`] does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a host fact could not be read (a file exists but is unreadable or malformed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LxcProbeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's contents do not have the expected form.
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
}

/// Namespaces a container can be given, in the order the document lists them.
pub const NAMESPACES: [&str; 8] = ["mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"];

/// cgroup v1 controllers, in the order the document lists them.
pub const V1_CONTROLLERS: [&str; 13] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "perf_event",
    "pids",
    "rdma",
];

/// How cgroups are mounted at `/sys/fs/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// The unified hierarchy (`/sys/fs/cgroup/cgroup.controllers` exists).
    V2,
    /// Per-controller hierarchies (`/sys/fs/cgroup/<controller>/`), possibly with an extra
    /// empty v2 mount (hybrid).
    V1,
}

/// cgroup facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroups {
    pub layout: CgroupLayout,
    /// v2: the words of `cgroup.controllers`; v1: the controller directories present.
    pub controllers: Vec<String>,
}

/// Everything driver-lxc knows about a host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LxcHost {
    /// `/proc/sys/kernel/arch`.
    pub arch: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub osrelease: Option<String>,
    /// Number of CPUs in `/sys/devices/system/cpu/online`.
    pub online_cpus: Option<u32>,
    /// Entries of `/proc/self/ns` that are in [`NAMESPACES`], in that order.
    pub namespaces: Vec<String>,
    /// cgroup layout and controllers; `None` when nothing is mounted at `/sys/fs/cgroup`.
    pub cgroups: Option<Cgroups>,
    /// `/proc/sys/user/max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian kernels only).
    pub unprivileged_userns_clone: Option<bool>,
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (Ubuntu kernels only).
    pub apparmor_restrict_unprivileged_userns: Option<bool>,
    /// File system types of `/proc/filesystems`; `None` when that file is absent.
    pub filesystems: Option<Vec<String>>,
    /// `/dev/fuse` exists.
    pub dev_fuse: bool,
    /// `/dev/loop-control` exists.
    pub dev_loop_control: bool,
    /// `/dev/ptmx` exists.
    pub dev_ptmx: bool,
    /// `/sys/bus/usb` exists.
    pub usb_bus: bool,
    /// Kernel build options (`CONFIG_X` -> `y`/`m`; unset options are absent) from
    /// `/proc/config.gz` or `/boot/config-<release>`; `None` when neither exists.
    pub kernel_config: Option<BTreeMap<String, String>>,
    /// Loaded modules: names in `/proc/modules` plus directories of `/sys/module`.
    pub loaded_modules: Vec<String>,
    /// Modules the kernel has built in or can load: `/lib/modules/<release>/modules.builtin`
    /// and `modules.dep`; `None` when that directory does not exist.
    pub installed_modules: Option<Vec<String>>,
    /// The libvirt container controller, path as seen on the host.
    pub libvirt_lxc: Option<String>,
    /// `qemu-nbd` (needed for `<driver type='nbd'>` file systems), path as seen on the host.
    pub qemu_nbd: Option<String>,
}

/// Where distributions install libvirt's container controller.
pub const LIBVIRT_LXC_PATHS: &[&str] =
    &["/usr/lib/libvirt/libvirt_lxc", "/usr/libexec/libvirt_lxc", "/usr/lib64/libvirt/libvirt_lxc"];

const QEMU_NBD_PATHS: &[&str] = &["/usr/bin/qemu-nbd", "/usr/local/bin/qemu-nbd"];

/// Host files under a root directory.
#[derive(Debug, Clone)]
struct Root(PathBuf);

impl Root {
    fn path(&self, host_path: &str) -> PathBuf {
        self.0.join(host_path.trim_start_matches('/'))
    }

    fn exists(&self, host_path: &str) -> bool {
        self.path(host_path).exists()
    }

    fn read(&self, host_path: &str) -> Result<Option<String>, LxcProbeError> {
        let p = self.path(host_path);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => Ok(None),
            Err(source) => Err(LxcProbeError::Io { path: p, source }),
        }
    }

    fn read_bytes(&self, host_path: &str) -> Result<Option<Vec<u8>>, LxcProbeError> {
        let p = self.path(host_path);
        match std::fs::read(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => Ok(None),
            Err(source) => Err(LxcProbeError::Io { path: p, source }),
        }
    }

    fn read_trimmed(&self, host_path: &str) -> Result<Option<String>, LxcProbeError> {
        Ok(self.read(host_path)?.map(|s| s.trim().to_owned()))
    }

    fn dir_names(&self, host_path: &str) -> Result<Option<Vec<String>>, LxcProbeError> {
        let p = self.path(host_path);
        let entries = match std::fs::read_dir(&p) {
            Ok(e) => e,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Ok(None)
            }
            Err(source) => return Err(LxcProbeError::Io { path: p, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| LxcProbeError::Io { path: p.clone(), source })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    fn parse_num<T: std::str::FromStr>(&self, host_path: &str) -> Result<Option<T>, LxcProbeError> {
        match self.read_trimmed(host_path)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| LxcProbeError::Malformed {
                path: self.path(host_path),
                message: format!("expected a number, found '{s}'"),
            }),
        }
    }
}

/// Count the CPUs of a kernel CPU list (`0-3,8,10-11`).
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                n = n.checked_add(b - a + 1)?;
            }
            None => {
                part.parse::<u32>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    Some(n)
}

/// Read `CONFIG_X=y|m` lines of a kernel config.
pub fn parse_kernel_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// The module name of a `modules.builtin` / `modules.dep` path (`kernel/drivers/net/veth.ko`
/// -> `veth`), with `-` normalised to `_` as the kernel does.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

impl LxcHost {
    /// Read every fact under `root`.
    pub fn probe(root: &Path) -> Result<Self, LxcProbeError> {
        let r = Root(root.to_path_buf());
        let osrelease = r.read_trimmed("/proc/sys/kernel/osrelease")?;
        let online_cpus = match r.read_trimmed("/sys/devices/system/cpu/online")? {
            None => None,
            Some(s) => Some(count_cpu_list(&s).ok_or_else(|| LxcProbeError::Malformed {
                path: r.path("/sys/devices/system/cpu/online"),
                message: format!("not a CPU list: '{s}'"),
            })?),
        };
        let ns_entries = r.dir_names("/proc/self/ns")?.unwrap_or_default();
        let namespaces =
            NAMESPACES.iter().filter(|n| ns_entries.iter().any(|e| e == *n)).map(|n| (*n).to_owned()).collect();
        let cgroups = if let Some(list) = r.read_trimmed("/sys/fs/cgroup/cgroup.controllers")? {
            Some(Cgroups {
                layout: CgroupLayout::V2,
                controllers: list.split_whitespace().map(str::to_owned).collect(),
            })
        } else {
            let present: Vec<String> = V1_CONTROLLERS
                .iter()
                .filter(|c| r.path(&format!("/sys/fs/cgroup/{c}")).is_dir())
                .map(|c| (*c).to_owned())
                .collect();
            (!present.is_empty()).then_some(Cgroups { layout: CgroupLayout::V1, controllers: present })
        };
        let filesystems = r
            .read("/proc/filesystems")?
            .map(|t| t.lines().filter_map(|l| l.split_whitespace().last().map(str::to_owned)).collect());
        let kernel_config = match r.read_bytes("/proc/config.gz")? {
            Some(gz) => {
                let mut text = String::new();
                flate2::read::GzDecoder::new(gz.as_slice()).read_to_string(&mut text).map_err(|e| {
                    LxcProbeError::Malformed { path: r.path("/proc/config.gz"), message: format!("not gzip text: {e}") }
                })?;
                Some(parse_kernel_config(&text))
            }
            None => match &osrelease {
                Some(rel) => r.read(&format!("/boot/config-{rel}"))?.map(|t| parse_kernel_config(&t)),
                None => None,
            },
        };
        let mut loaded_modules: Vec<String> = r
            .read("/proc/modules")?
            .map(|t| t.lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect())
            .unwrap_or_default();
        loaded_modules.extend(r.dir_names("/sys/module")?.unwrap_or_default());
        loaded_modules.sort();
        loaded_modules.dedup();
        let installed_modules = match &osrelease {
            Some(rel) if r.path(&format!("/lib/modules/{rel}")).is_dir() => {
                let mut mods = Vec::new();
                for f in ["modules.builtin", "modules.dep"] {
                    if let Some(t) = r.read(&format!("/lib/modules/{rel}/{f}"))? {
                        mods.extend(t.lines().filter_map(|l| module_name(l.split(':').next().unwrap_or(""))));
                    }
                }
                mods.sort();
                mods.dedup();
                Some(mods)
            }
            _ => None,
        };
        Ok(LxcHost {
            arch: r.read_trimmed("/proc/sys/kernel/arch")?,
            osrelease,
            online_cpus,
            namespaces,
            cgroups,
            max_user_namespaces: r.parse_num("/proc/sys/user/max_user_namespaces")?,
            unprivileged_userns_clone: r.parse_num::<u8>("/proc/sys/kernel/unprivileged_userns_clone")?.map(|v| v != 0),
            apparmor_restrict_unprivileged_userns: r
                .parse_num::<u8>("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")?
                .map(|v| v != 0),
            filesystems,
            dev_fuse: r.exists("/dev/fuse"),
            dev_loop_control: r.exists("/dev/loop-control"),
            dev_ptmx: r.exists("/dev/ptmx"),
            usb_bus: r.path("/sys/bus/usb").is_dir(),
            kernel_config,
            loaded_modules,
            installed_modules,
            libvirt_lxc: LIBVIRT_LXC_PATHS.iter().find(|p| r.path(p).is_file()).map(|p| (*p).to_owned()),
            qemu_nbd: QEMU_NBD_PATHS.iter().find(|p| r.path(p).is_file()).map(|p| (*p).to_owned()),
        })
    }

    pub fn has_namespace(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == ns)
    }

    /// Whether `/proc/filesystems` lists `fs`; `None` when that file could not be read.
    pub fn has_filesystem(&self, fs: &str) -> Option<bool> {
        self.filesystems.as_ref().map(|l| l.iter().any(|f| f == fs))
    }

    /// Whether the kernel offers a feature that is a build option and/or a module:
    /// `Some(true)` when the module is loaded, the option is `y`/`m`, or the module is built
    /// in / installed; `Some(false)` when the kernel config says it is not set (or the
    /// module index, without a config, does not list it); `None` when nothing tells.
    pub fn kernel_feature(&self, option: &str, module: Option<&str>) -> Option<bool> {
        if let Some(m) = module {
            if self.loaded_modules.iter().any(|l| l == m) {
                return Some(true);
            }
        }
        if let Some(cfg) = &self.kernel_config {
            return Some(matches!(cfg.get(option).map(String::as_str), Some("y" | "m")));
        }
        match (module, &self.installed_modules) {
            (Some(m), Some(mods)) => Some(mods.iter().any(|x| x == m)),
            _ => None,
        }
    }

    /// cgroup controllers present, `&[]` when no cgroups.
    pub fn controllers(&self) -> &[String] {
        self.cgroups.as_ref().map(|c| c.controllers.as_slice()).unwrap_or(&[])
    }

    pub fn has_controller(&self, c: &str) -> bool {
        self.controllers().iter().any(|x| x == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("5"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }

    #[test]
    fn parses_kernel_config_and_module_paths() {
        let c = parse_kernel_config("# comment\nCONFIG_VETH=m\n# CONFIG_BLK_DEV_NBD is not set\nCONFIG_X=\"s\"\n");
        assert_eq!(c.get("CONFIG_VETH").map(String::as_str), Some("m"));
        assert!(!c.contains_key("CONFIG_BLK_DEV_NBD"));
        assert_eq!(c.get("CONFIG_X").map(String::as_str), Some("s"));
        assert_eq!(module_name("kernel/drivers/net/veth.ko.xz").as_deref(), Some("veth"));
        assert_eq!(module_name("kernel/drivers/block/nbd.ko").as_deref(), Some("nbd"));
        assert_eq!(module_name("kernel/fs/fuse/cuse-x.ko").as_deref(), Some("cuse_x"));
    }

    #[test]
    fn kernel_feature_prefers_loaded_then_config_then_index() {
        let mut h = LxcHost { loaded_modules: vec!["veth".into()], ..LxcHost::default() };
        assert_eq!(h.kernel_feature("CONFIG_VETH", Some("veth")), Some(true));
        assert_eq!(h.kernel_feature("CONFIG_MACVLAN", Some("macvlan")), None);
        h.installed_modules = Some(vec!["macvlan".into()]);
        assert_eq!(h.kernel_feature("CONFIG_MACVLAN", Some("macvlan")), Some(true));
        assert_eq!(h.kernel_feature("CONFIG_BLK_DEV_NBD", Some("nbd")), Some(false));
        h.kernel_config = Some(parse_kernel_config("CONFIG_BLK_DEV_NBD=m\n"));
        assert_eq!(h.kernel_feature("CONFIG_BLK_DEV_NBD", Some("nbd")), Some(true));
        assert_eq!(h.kernel_feature("CONFIG_MACVLAN", Some("macvlan")), Some(false));
    }

    #[test]
    fn malformed_number_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/user")).unwrap();
        std::fs::write(dir.path().join("proc/sys/user/max_user_namespaces"), "lots\n").unwrap();
        let err = LxcHost::probe(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_user_namespaces") && msg.contains("lots"), "{msg}");
    }
}
