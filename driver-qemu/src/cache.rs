//! The on-disk probe cache: what QEMU told us ([`ProbeData`]), one file per emulator binary,
//! so that a warm query costs a file read instead of two QEMU runs.
//!
//! # What is stored
//! The probe, never the derived document: derivation can change (a capsd upgrade) without
//! re-probing, and the cache key says when the probe itself is stale. A file is
//!
//! ```text
//! capsd-probe-cache <file version> <header length> <header checksum>\n
//! <header: JSON, one line: probe format, invalidation key, segment table>
//! <segment "meta": ProbeData without its runs, JSON>
//! <segment "run:kvm": one Transcript, in the compact form of [`compact`]>
//! <segment "run:tcg": ...>
//! ```
//!
//! Each segment has its own checksum, checked only when the segment is read: a caller that
//! needs one accelerator's transcript ([`ProbeCache::get_or_probe_runs`]) reads only that
//! run. A run is not decoded into `serde_json::Value` trees when it is loaded: each reply
//! stays in the compact form of [`compact`] (length-prefixed, so loading steps over it) and
//! is decoded on first read ([`crate::probe_data::Reply`]), or read in place without a tree
//! ([`crate::probe_data::View`], for the QMP schema and the QOM type list). An x86_64 probe
//! is 1.3 MB (640 KB per run, most of it `query-qmp-schema` and, probed without libvirt's
//! cpu_map only, per-model CPU expansions): building and freeing every tree cost
//! about 8 ms per warm lookup; decoding what derivation reads costs about 1 ms.
//!
//! # When an entry is stale
//! The [`CacheKey`] is recomputed on every lookup and compared whole: the binary's identity
//! (size, mtime, ctime, inode, device), QEMU's module directories (listing with sizes and
//! mtimes), capsd's version, executable and probe user, [`PROBE_FORMAT_VERSION`], the kernel
//! release and build, the first CPU's signature, microcode and flags, `/dev/kvm` presence,
//! usability and access (mode, owner, group: a probe run as another user sees KVM through
//! them), KVM's `nested` parameters and VFIO's no-IOMMU mode (read, as they change at run time), the
//! firmware descriptor directories (listing with sizes and mtimes), and the
//! presence/identity of a few other host files the document depends on (swtpm, `/dev/sev`,
//! libvirt's default loader images, ...). Computing it reads no large file: about 100 µs.
//! The probe user enters as what it is chosen from (`CAPSD_PROBE_USER` or `host`, and the
//! stamps of `qemu.conf`, libvirt's QEMU driver module, `/etc/passwd`, `/etc/group`,
//! `/etc/nsswitch.conf`), so a lookup resolves no user. A header whose stored key is byte
//! for byte the current key's serialization is read without decoding that key.
//! Not covered: the firmware images a descriptor names (only the descriptors are stamped;
//! an image deleted or installed alone leaves the entry in place).
//!
//! # Damage
//! A file that does not parse, whose checksums disagree, or whose version differs is logged
//! (`tracing::warn!`) and re-probed; a lookup never returns data it could not verify.
//! Files are written atomically (temporary file, `fsync`, `rename`, `fsync` of the directory);
//! the temporary file of a writer killed midway is removed by a later store (at once when its
//! name's pid no longer runs, else after 10 minutes).
//!
//! # Trust
//! The cache is believed only when it is ours: the directory and each file must be owned by
//! this user or root and writable by nobody else (a world-writable directory, sticky or not,
//! is not ours; the checksums are not secret, so a file another user could write may say
//! anything). Files are opened relative to the checked directory, with `O_NOFOLLOW |
//! O_NONBLOCK`, and must be regular files (a symlink, FIFO or device in an entry's place is
//! refused at once instead of followed or blocked on). Anything refused is logged and
//! re-probed; a directory that is not ours is neither read nor written, and an entry is only
//! ever replaced by `rename` of a temporary file created `O_EXCL` in a directory that is.
//!
//! # Single flight
//! Concurrent lookups of one binary in this process probe once (a per-binary lock; the
//! waiters then read what the first one stored); different binaries probe in parallel.
//! Across processes an advisory `flock` on `<entry>.lock` does the same.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use capsd_core::DriverError;
use serde::{Deserialize, Serialize};

pub(crate) mod answer;
pub(crate) mod compact;

use crate::host::HostFacts;
use crate::probe_data::{Accel, ProbeData, PROBE_FORMAT_VERSION};

/// Version of the file layout (header and segments). Independent of
/// [`PROBE_FORMAT_VERSION`], which versions the content.
pub const CACHE_FILE_VERSION: u32 = 3;

const MAGIC: &str = "capsd-probe-cache";

/// Largest cache file read (a full x86_64 probe is under 1 MiB).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Whether an answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache (memory or disk), no probe.
    Hit,
    /// Probed (the cache was empty, stale or damaged) and stored.
    Miss,
}

/// Where the invalidation key reads the host. [`KeySources::host`] is the real host; tests
/// point the fields at temporary files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    /// QEMU module directories (`QEMU_MODULE_DIR` when set; Debian: `/usr/lib/<triplet>/qemu`).
    pub module_dirs: Vec<PathBuf>,
    /// Firmware descriptor directories, as QEMU's firmware.json spec lists them.
    pub firmware_dirs: Vec<PathBuf>,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
    /// `/proc/sys/kernel/osrelease` and `/proc/sys/kernel/version`.
    pub kernel_files: Vec<PathBuf>,
    /// `/dev/kvm`.
    pub kvm_device: PathBuf,
    /// Module parameters whose content decides part of the document and can change without
    /// a module reload: KVM's `nested`, VFIO's `enable_unsafe_noiommu_mode`.
    pub nested_params: Vec<PathBuf>,
    /// Other files whose presence or identity decides part of the document.
    pub other_files: Vec<PathBuf>,
    /// libvirt's cpu_map directory: every file of it counts (`index.xml` and the per-model
    /// files it includes, which an upgrade may change without touching the index).
    pub cpu_map_dir: PathBuf,
    /// The program itself (like libvirt watching its daemon's ctime): a rebuilt or upgraded
    /// capsd may ask QEMU more, so it re-probes even when its version string is unchanged.
    pub app_binary: Option<PathBuf>,
    /// Who probes run as, `None` when they run as capsd itself: whether a probe gets KVM
    /// depends on it, and processes with different settings share one cache directory.
    /// [`KeySources::host`] puts here what [`crate::process::choose_probe_user`] decides
    /// from ([`crate::process::probe_user_inputs`]: `CAPSD_PROBE_USER` or `host`), and the
    /// files it reads ([`crate::process::probe_user_files`]) in `other_files`, so a lookup
    /// resolves no user. (`QemuDriver::with_probe_user` is not seen here: a caller that
    /// sets it sets this too, e.g. to the user's name.)
    pub probe_user: Option<String>,
}

impl KeySources {
    /// The real host's paths.
    pub fn host() -> Self {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        let mut firmware_dirs = vec![PathBuf::from("/usr/share/qemu/firmware"), PathBuf::from("/etc/qemu/firmware")];
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(c) = config {
            firmware_dirs.push(c.join("qemu/firmware"));
        }
        // QEMU also loads modules from `QEMU_MODULE_DIR` when the probe inherits it.
        let module_dirs = std::env::var_os("QEMU_MODULE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from(format!("/usr/lib/{triplet}/qemu")),
                PathBuf::from("/usr/lib64/qemu"),
                PathBuf::from("/usr/lib/qemu"),
            ])
            .collect();
        KeySources {
            module_dirs,
            firmware_dirs,
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            kernel_files: vec![PathBuf::from("/proc/sys/kernel/osrelease"), PathBuf::from("/proc/sys/kernel/version")],
            kvm_device: PathBuf::from("/dev/kvm"),
            nested_params: vec![
                PathBuf::from("/sys/module/kvm_intel/parameters/nested"),
                PathBuf::from("/sys/module/kvm_amd/parameters/nested"),
                // Writable at run time; with it VFIO passthrough is offered without an IOMMU.
                PathBuf::from("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"),
            ],
            other_files: [
                "/usr/bin/swtpm",
                "/usr/bin/swtpm_setup",
                "/usr/bin/swtpm_ioctl",
                "/usr/bin/qemu-rdp",
                "/usr/local/bin/qemu-rdp",
                "/dev/iommu",
                "/sys/module/kvm_amd/parameters/sev_snp",
                "/sys/module/kvm_intel/parameters/tdx",
                "/dev/sev",
                "/dev/vfio/vfio",
                "/dev/sgx_enclave",
                "/dev/sgx_provision",
                "/sys/firmware/uv/prot_virt_host",
                "/sys/module/kvm_amd/parameters/sev",
                "/sys/module/kvm/parameters/prot_virt",
            ]
            .iter()
            .map(PathBuf::from)
            // Who probes (libvirt's QEMU user and group) and that user's groups: the files
            // the choice is made from, so that a warm lookup looks no user up.
            .chain(crate::process::probe_user_files())
            // Listed as `<loader>` values when no firmware descriptor applies.
            .chain(crate::host::DEFAULT_LOADERS.iter().map(PathBuf::from))
            // The installed libvirt's library (its file name is the release the documents
            // are for when none is asked): an upgrade replaces it, and the agent's watcher,
            // which reads these sources too, then drops the documents it keeps.
            .chain(crate::libvirt::version::library_links(std::path::Path::new("/")))
            .collect(),
            cpu_map_dir: crate::cpu::host::cpu_map_dir(),
            app_binary: std::env::current_exe().ok(),
            // What the driver's choice is made from (with the files above), not the choice:
            // the user is looked up only when a probe runs.
            probe_user: crate::process::probe_user_inputs(),
        }
    }
}

/// Settings of a cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Where the key reads the host.
    pub sources: KeySources,
    /// capsd's version: a new capsd re-probes.
    pub app_version: String,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { sources: KeySources::host(), app_version: env!("CARGO_PKG_VERSION").to_owned() }
    }
}

/// Identity of one file or directory entry: changes when it is replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStamp {
    pub name: String,
    pub size: u64,
    pub mtime_ns: i128,
    #[serde(default)]
    pub ctime_ns: i128,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub dev: u64,
}

impl FileStamp {
    /// The same stamp as [`Self::of`], from a raw `stat`.
    fn of_stat(name: String, st: &nix::sys::stat::FileStat) -> Self {
        FileStamp {
            name,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
        }
    }

    fn of(name: String, m: &fs::Metadata) -> Self {
        FileStamp {
            name,
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// What the host looks like, for every binary's entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostKey {
    pub app_version: String,
    /// Identity of the program's executable, when known.
    #[serde(default)]
    pub app_binary: Option<FileStamp>,
    /// [`KeySources::probe_user`].
    #[serde(default)]
    pub probe_user: Option<String>,
    pub probe_format: u32,
    /// Per module directory: `None` when absent, else its entries sorted by name.
    pub module_dirs: Vec<(String, Option<Vec<FileStamp>>)>,
    pub firmware_dirs: Vec<(String, Option<Vec<FileStamp>>)>,
    /// Kernel release and build string.
    pub kernel: Vec<String>,
    /// The first processor's `vendor_id`, `cpu family`, `model`, `model name`, `stepping`,
    /// `microcode` and `flags` lines.
    pub cpu: Vec<String>,
    pub kvm_present: bool,
    /// Whether this process can open `/dev/kvm` read-write.
    pub kvm_usable: bool,
    /// `/dev/kvm`'s permission bits, owner and group, `None` when absent. As root every
    /// open succeeds, but a probe run as another user (`CAPSD_PROBE_USER`) gets KVM or not
    /// by these: a `chmod`/`chown` must re-probe.
    #[serde(default)]
    pub kvm_access: Option<(u32, u32, u32)>,
    /// Per parameter file of [`KeySources::nested_params`]: its content, `None` when absent.
    pub nested: Vec<(String, Option<String>)>,
    /// Per other file: its stamp, `None` when absent.
    pub other_files: Vec<(String, Option<FileStamp>)>,
    /// [`KeySources::cpu_map_dir`]'s entries, `None` when it cannot be listed.
    #[serde(default)]
    pub cpu_map: Option<Vec<FileStamp>>,
}

/// The whole invalidation key of one binary's entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey {
    pub binary: FileStamp,
    pub host: HostKey,
}

impl HostKey {
    /// Read the host through `sources`. Never fails: what cannot be read is recorded as
    /// absent, so that it appearing later changes the key.
    pub fn read(sources: &KeySources, app_version: &str) -> Self {
        let dirs = |ds: &[PathBuf]| ds.iter().map(|d| (d.display().to_string(), dir_listing(d))).collect();
        let kernel =
            sources.kernel_files.iter().map(|f| fs::read_to_string(f).unwrap_or_default().trim().to_owned()).collect();
        let kvm_meta = fs::metadata(&sources.kvm_device).ok();
        let kvm_present = kvm_meta.is_some();
        let kvm_usable = kvm_present && OpenOptions::new().read(true).write(true).open(&sources.kvm_device).is_ok();
        let kvm_access = kvm_meta.map(|m| (m.mode() & 0o7777, m.uid(), m.gid()));
        HostKey {
            app_version: app_version.to_owned(),
            app_binary: sources
                .app_binary
                .as_ref()
                .and_then(|p| fs::metadata(p).ok())
                .map(|m| FileStamp::of(String::new(), &m)),
            probe_user: sources.probe_user.clone(),
            probe_format: PROBE_FORMAT_VERSION,
            module_dirs: dirs(&sources.module_dirs),
            firmware_dirs: dirs(&sources.firmware_dirs),
            kernel,
            cpu: cpu_signature(&sources.cpuinfo),
            kvm_present,
            kvm_usable,
            kvm_access,
            nested: sources
                .nested_params
                .iter()
                .map(|p| (p.display().to_string(), fs::read_to_string(p).ok().map(|s| s.trim().to_owned())))
                .collect(),
            other_files: sources
                .other_files
                .iter()
                .map(|p| (p.display().to_string(), fs::metadata(p).ok().map(|m| FileStamp::of(String::new(), &m))))
                .collect(),
            cpu_map: dir_listing(&sources.cpu_map_dir),
        }
    }
}

/// Sorted entries of a directory (following symlinks for sizes and times), `None` when the
/// directory cannot be read. Each entry is stat'ed relative to the open directory (no walk
/// of the whole path per entry).
fn dir_listing(dir: &Path) -> Option<Vec<FileStamp>> {
    use std::os::fd::AsRawFd;
    let rd = fs::read_dir(dir).ok()?;
    let dir_fd = File::open(dir).ok();
    let mut out: Vec<FileStamp> = rd
        .filter_map(Result::ok)
        .map(|e| {
            let name_os = e.file_name();
            let name = name_os.to_string_lossy().into_owned();
            let stat = match &dir_fd {
                Some(d) => {
                    nix::sys::stat::fstatat(Some(d.as_raw_fd()), name_os.as_os_str(), nix::fcntl::AtFlags::empty())
                        .ok()
                        .map(|st| FileStamp::of_stat(name.clone(), &st))
                }
                None => fs::metadata(e.path()).ok().map(|m| FileStamp::of(name.clone(), &m)),
            };
            // A dangling symlink: its name still counts.
            stat.unwrap_or(FileStamp { name, size: 0, mtime_ns: -1, ctime_ns: -1, ino: 0, dev: 0 })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

/// The lines of the first processor in `/proc/cpuinfo` that identify the CPU and its
/// microcode. Reads until the first processor's block has ended (the kernel writes the
/// text of each processor as it is read: reading 16 KiB at once had it write several), at
/// most 16 KiB.
fn cpu_signature(path: &Path) -> Vec<String> {
    const KEYS: [&str; 9] = [
        "vendor_id",
        "cpu family",
        "model",
        "model name",
        "stepping",
        "microcode",
        "flags",
        "CPU implementer",
        "address sizes",
    ];
    // The wanted lines of `text`, and whether the first block ended in it.
    let parse = |text: &str| {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() && !out.is_empty() {
                return (out, true);
            }
            if let Some((k, v)) = line.split_once(':') {
                if KEYS.contains(&k.trim()) {
                    out.push(format!("{}={}", k.trim(), v.trim()));
                }
            }
        }
        (out, false)
    };
    const MAX: usize = 16 * 1024;
    let mut buf = vec![0u8; MAX];
    let Ok(mut f) = File::open(path) else { return Vec::new() };
    let mut len = 0;
    loop {
        let n = match f.read(&mut buf[len..(len + 4096).min(MAX)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Vec::new(),
        };
        len += n;
        let last = n == 0 || len == MAX;
        // Whole lines only until the last read: a line cut by a read is not taken for what
        // its start looks like (blank, or a key with part of its value).
        let whole = if last { len } else { buf[..len].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) };
        let (out, ended) = parse(&String::from_utf8_lossy(&buf[..whole]));
        if ended || last {
            return out;
        }
    }
}

/// Counters of every cache in this process (the agent's `/metrics`).
#[derive(Debug)]
pub struct CacheStats {
    /// Answered from this process's memory.
    pub memory_hits: AtomicU64,
    /// Answered from a cache file.
    pub disk_hits: AtomicU64,
    /// Lookups that had to probe.
    pub misses: AtomicU64,
    /// Files found damaged (checksum, parse, truncation).
    pub damaged: AtomicU64,
    /// Files found stale (key changed).
    pub stale: AtomicU64,
    pub probes_ok: AtomicU64,
    pub probes_failed: AtomicU64,
    /// Probe durations: counts per bucket of [`PROBE_BUCKETS`] (upper bounds, seconds), plus
    /// one overflow bucket.
    pub probe_buckets: [AtomicU64; PROBE_BUCKETS.len() + 1],
    /// Sum of probe durations, microseconds.
    pub probe_micros_sum: AtomicU64,
}

/// Upper bounds (seconds) of the probe duration histogram.
pub const PROBE_BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

static STATS: CacheStats = CacheStats {
    memory_hits: AtomicU64::new(0),
    disk_hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    damaged: AtomicU64::new(0),
    stale: AtomicU64::new(0),
    probes_ok: AtomicU64::new(0),
    probes_failed: AtomicU64::new(0),
    probe_buckets: [const { AtomicU64::new(0) }; PROBE_BUCKETS.len() + 1],
    probe_micros_sum: AtomicU64::new(0),
};

/// The process-wide counters.
pub fn stats() -> &'static CacheStats {
    &STATS
}

fn record_probe(d: Duration, ok: bool) {
    let c = if ok { &STATS.probes_ok } else { &STATS.probes_failed };
    c.fetch_add(1, Ordering::Relaxed);
    let secs = d.as_secs_f64();
    let i = PROBE_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(PROBE_BUCKETS.len());
    STATS.probe_buckets[i].fetch_add(1, Ordering::Relaxed);
    STATS.probe_micros_sum.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The default cache directory: `/var/cache/capsd` for root, else `$XDG_CACHE_HOME/capsd` or
/// `~/.cache/capsd`. `None` when no home is known.
pub fn default_dir() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/capsd"));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("capsd"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache/capsd"))
}

/// Which runs a lookup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs<'a> {
    All,
    /// These runs, when the entry has any of them; an entry that has none (a KVM lookup of a
    /// binary probed with TCG alone) gives every run it has, which is what such a caller
    /// reads next.
    Only(&'a [Accel]),
}

struct MemoEntry {
    key: CacheKey,
    data: Arc<ProbeData>,
    /// Every run of the file is in `data` (else only those asked for).
    complete: bool,
}

/// Per-binary single-flight slot.
#[derive(Default)]
struct Slot {
    /// The last probe failure: when, and its message (waiters queued before it share it).
    last_failure: Option<(Instant, String)>,
}

struct Inner {
    dir: PathBuf,
    opts: CacheOptions,
    memo: Mutex<HashMap<PathBuf, MemoEntry>>,
    slots: Mutex<HashMap<PathBuf, Arc<Mutex<Slot>>>>,
}

/// Probe results per emulator binary, stored under a directory. Cheap to clone (clones share
/// the memory cache and the single-flight locks).
#[derive(Clone)]
pub struct ProbeCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProbeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeCache").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

/// Why a cache file was not used (logged, then re-probed).
#[derive(Debug, thiserror::Error)]
enum FileProblem {
    #[error("no cache file")]
    Absent,
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("damaged: {0}")]
    Damaged(String),
    #[error("written by another file version ({0})")]
    OtherVersion(String),
    #[error("stale: {0} changed")]
    Stale(String),
    #[error("not trusted: {0}")]
    Untrusted(String),
    /// The record was stored before a run the lookup needs was probed ([`Header::pending`]).
    #[error("the {0} run was not probed yet")]
    Incomplete(&'static str),
    /// The record lacks answers its own host facts make derivation read
    /// ([`crate::cpu::lacks_cpu_models`]).
    #[error("its record lacks {0}")]
    Lacks(&'static str),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProbeCache {
    /// A cache under `dir` reading the real host.
    pub fn new(dir: PathBuf) -> Self {
        Self::with_options(dir, CacheOptions::default())
    }

    pub fn with_options(dir: PathBuf, opts: CacheOptions) -> Self {
        ProbeCache {
            inner: Arc::new(Inner { dir, opts, memo: Mutex::new(HashMap::new()), slots: Mutex::new(HashMap::new()) }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file that holds `binary`'s entry: `<dir>/<file name>-<hash of the path>.probe`.
    pub fn file_for(&self, binary: &Path) -> PathBuf {
        self.inner.dir.join(entry_name(binary))
    }

    /// The current invalidation key of `binary`.
    pub fn key(&self, binary: &Path) -> Result<CacheKey, DriverError> {
        let host = HostKey::read(&self.inner.opts.sources, &self.inner.opts.app_version);
        self.key_with(binary, host)
    }

    fn key_with(&self, binary: &Path, host: HostKey) -> Result<CacheKey, DriverError> {
        let m = fs::metadata(binary).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                DriverError::invalid("emulatorbin", binary.display().to_string(), "no such file")
            }
            _ => DriverError::io(binary, e),
        })?;
        if !m.is_file() {
            return Err(DriverError::invalid("emulatorbin", binary.display().to_string(), "not a regular file"));
        }
        Ok(CacheKey { binary: FileStamp::of(binary.display().to_string(), &m), host })
    }

    /// The cached probe of `binary` when still valid, else the result of `probe` (stored).
    ///
    /// The data is handed over, not kept in this process's memory (keeping it would cost a
    /// copy as large as a parse): right for one-shot callers such as the CLI. Long-lived
    /// callers that look the same binary up again use [`Self::get_or_probe_runs`].
    pub fn get_or_probe(
        &self,
        binary: &Path,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(ProbeData, CacheOutcome), DriverError> {
        let (d, o) = self.get_inner(binary, Runs::All, false, probe)?;
        Ok((Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()), o))
    }

    /// Like [`Self::get_or_probe`], parsing only the transcripts of `runs` on a warm lookup
    /// (the others are left out of the returned data; a probe returns and stores them all).
    /// Loading one accelerator's run halves a warm lookup of a binary probed with both.
    pub fn get_or_probe_owned_runs(
        &self,
        binary: &Path,
        runs: Runs<'_>,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(ProbeData, CacheOutcome), DriverError> {
        let (d, o) = self.get_inner(binary, runs, false, probe)?;
        Ok((Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()), o))
    }

    /// Like [`Self::get_or_probe`], shared: no copy of the data. `runs` says which transcripts
    /// the caller reads; a warm lookup then parses only those (the others are left out of the
    /// returned `ProbeData`). A probe always stores every run.
    pub fn get_or_probe_runs(
        &self,
        binary: &Path,
        runs: Runs<'_>,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(Arc<ProbeData>, CacheOutcome), DriverError> {
        self.get_inner(binary, runs, true, probe)
    }

    /// Like [`Self::get_or_probe_owned_runs`] for a binary opened once
    /// ([`crate::binary::Opened`]): the key's identity of the binary is `stat`, the
    /// descriptor's, not the path's, so an entry is only ever served for the inode that
    /// `probe` runs.
    pub fn get_or_probe_opened_runs(
        &self,
        binary: &Path,
        stat: &nix::sys::stat::FileStat,
        runs: Runs<'_>,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(ProbeData, CacheOutcome), DriverError> {
        let (d, o, _) = self.get_pinned(binary, Some(stat), runs, false, || probe().map(|d| (d, Vec::new())))?;
        Ok((Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()), o))
    }

    /// Like [`Self::get_or_probe_owned_runs`] (or [`Self::get_or_probe_opened_runs`] with
    /// `pinned`), also returning the key the data is valid for: the key under which an
    /// answer derived from it is kept ([`Self::store_answer`]).
    pub fn get_or_probe_keyed(
        &self,
        binary: &Path,
        pinned: Option<&nix::sys::stat::FileStat>,
        runs: Runs<'_>,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(ProbeData, CacheOutcome, CacheKey), DriverError> {
        self.get_or_probe_partial(binary, pinned, runs, || probe().map(|d| (d, Vec::new())))
    }

    /// Like [`Self::get_or_probe_keyed`], where `probe` may leave runs for later: it returns
    /// the data and the accelerators it did not probe yet (not ones that failed: those are
    /// simply absent from the data). The record is stored saying so, and a later lookup
    /// that needs one of those runs ([`Runs::All`], or [`Runs::Only`] naming it) is a miss
    /// and probes again; lookups of the runs it has are served from it.
    pub fn get_or_probe_partial(
        &self,
        binary: &Path,
        pinned: Option<&nix::sys::stat::FileStat>,
        runs: Runs<'_>,
        probe: impl FnOnce() -> Result<(ProbeData, Vec<Accel>), DriverError>,
    ) -> Result<(ProbeData, CacheOutcome, CacheKey), DriverError> {
        let (d, o, k) = self.get_pinned(binary, pinned, runs, false, probe)?;
        Ok((Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()), o, k))
    }

    /// The current invalidation key of `binary`, whose identity is `stat` when given (a
    /// binary opened once, [`crate::binary::Opened`]), else its path's.
    pub fn key_pinned(&self, binary: &Path, stat: Option<&nix::sys::stat::FileStat>) -> Result<CacheKey, DriverError> {
        match stat {
            None => self.key(binary),
            Some(st) => {
                let host = HostKey::read(&self.inner.opts.sources, &self.inner.opts.app_version);
                Ok(CacheKey { binary: FileStamp::of_stat(binary.display().to_string(), st), host })
            }
        }
    }

    fn get_inner(
        &self,
        binary: &Path,
        runs: Runs<'_>,
        keep: bool,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(Arc<ProbeData>, CacheOutcome), DriverError> {
        self.get_pinned(binary, None, runs, keep, || probe().map(|d| (d, Vec::new()))).map(|(d, o, _)| (d, o))
    }

    fn get_pinned(
        &self,
        binary: &Path,
        pinned: Option<&nix::sys::stat::FileStat>,
        runs: Runs<'_>,
        keep: bool,
        probe: impl FnOnce() -> Result<(ProbeData, Vec<Accel>), DriverError>,
    ) -> Result<(Arc<ProbeData>, CacheOutcome, CacheKey), DriverError> {
        let key = self.key_pinned(binary, pinned)?;
        if let Some(d) = self.lookup_with(binary, &key, runs, keep) {
            return Ok((d, CacheOutcome::Hit, key));
        }
        // Miss: one probe per binary at a time in this process.
        let slot = lock(&self.inner.slots).entry(binary.to_owned()).or_default().clone();
        let waited_from = Instant::now();
        let mut slot = lock(&slot);
        if let Some((at, msg)) = &slot.last_failure {
            if *at >= waited_from {
                return Err(DriverError::probe_failed(binary.display().to_string(), msg.clone()));
            }
        }
        // Someone may have probed while we waited; the key may have changed meanwhile too.
        let key = self.key_pinned(binary, pinned)?;
        if let Some(d) = self.lookup_with(binary, &key, runs, keep) {
            return Ok((d, CacheOutcome::Hit, key));
        }
        let file = self.file_for(binary);
        let _flock = self.lock_file(binary);
        // And across processes.
        if let Some(d) = self.lookup_with(binary, &key, runs, keep) {
            return Ok((d, CacheOutcome::Hit, key));
        }
        STATS.misses.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let result = probe();
        record_probe(t.elapsed(), result.is_ok());
        let (data, pending) = match result {
            Ok(d) => d,
            Err(e) => {
                slot.last_failure = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        slot.last_failure = None;
        tracing::info!(binary = %binary.display(), elapsed_ms = t.elapsed().as_millis() as u64, "probed");
        // The key as it was before probing: if the binary changed during the probe, the
        // next lookup sees a different key and probes again.
        if let Err(e) = self.store(binary, &key, &data, &pending) {
            tracing::warn!(file = %file.display(), problem = %e, "cannot write probe cache; answering without it")
        }
        let data = Arc::new(data);
        if keep {
            let complete = pending.iter().all(|a| data.runs.contains_key(a));
            lock(&self.inner.memo)
                .insert(binary.to_owned(), MemoEntry { key: key.clone(), data: data.clone(), complete });
        }
        Ok((data, CacheOutcome::Miss, key))
    }

    /// The cached probe of `binary` when present and valid, without probing.
    pub fn lookup(&self, binary: &Path) -> Result<Option<Arc<ProbeData>>, DriverError> {
        let key = self.key(binary)?;
        Ok(self.lookup_with(binary, &key, Runs::All, true))
    }

    /// Forget `binary`'s entry (memory and file).
    pub fn invalidate(&self, binary: &Path) -> Result<(), DriverError> {
        lock(&self.inner.memo).remove(binary);
        let file = self.file_for(binary);
        match fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(file, e)),
        }
    }

    /// The entry from memory or file; `keep`: remember what the file gave in memory.
    fn lookup_with(&self, binary: &Path, key: &CacheKey, runs: Runs<'_>, keep: bool) -> Option<Arc<ProbeData>> {
        {
            let memo = lock(&self.inner.memo);
            if let Some(e) = memo.get(binary) {
                let covers = e.complete
                    || match runs {
                        Runs::All => false,
                        Runs::Only(a) => a.iter().all(|r| e.data.runs.contains_key(r)),
                    };
                if e.key == *key && covers {
                    STATS.memory_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(e.data.clone());
                }
            }
        }
        let file = self.file_for(binary);
        let read = open_dir(&self.inner.dir, false).and_then(|d| read_file(&d, &entry_name(binary), key, runs));
        match read {
            Ok((data, complete)) => {
                STATS.disk_hits.fetch_add(1, Ordering::Relaxed);
                let data = Arc::new(data);
                if !keep {
                    return Some(data);
                }
                let mut memo = lock(&self.inner.memo);
                let keep_old = memo.get(binary).is_some_and(|e| e.key == *key && e.complete && !complete);
                if !keep_old {
                    memo.insert(binary.to_owned(), MemoEntry { key: key.clone(), data: data.clone(), complete });
                }
                Some(data)
            }
            Err(FileProblem::Absent) => None,
            Err(e @ (FileProblem::Incomplete(_) | FileProblem::Lacks(_))) => {
                tracing::info!(file = %file.display(), problem = %e, "probe cache entry lacks a run; probing");
                None
            }
            Err(FileProblem::Stale(what)) => {
                STATS.stale.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %file.display(), changed = %what, "probe cache entry is stale; re-probing");
                None
            }
            Err(e @ FileProblem::Untrusted(_)) => {
                STATS.damaged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %file.display(), problem = %e, "probe cache entry ignored; re-probing");
                None
            }
            Err(e @ FileProblem::OtherVersion(_)) => {
                tracing::info!(file = %file.display(), problem = %e, "probe cache entry not usable; re-probing");
                None
            }
            Err(e) => {
                STATS.damaged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %file.display(), problem = %e, "probe cache file is damaged; re-probing");
                None
            }
        }
    }

    /// An exclusive `flock` on `<entry>.lock`, or nothing when it cannot be taken (then
    /// processes may probe twice, never answer wrong). The lock file is opened like a cache
    /// file: in a trusted directory, never through a symlink, never blocking on a FIFO.
    fn lock_file(&self, binary: &Path) -> Option<nix::fcntl::Flock<File>> {
        use nix::fcntl::OFlag;
        let dir = match open_dir(&self.inner.dir, true) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(dir = %self.inner.dir.display(), problem = %e, "no cache directory to lock in");
                return None;
            }
        };
        let name = entry_name(binary).replace(".probe", ".lock");
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            flags,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .ok()?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        if let Err(e) = check_regular_and_ours(&f) {
            tracing::warn!(file = %self.inner.dir.join(&name).display(), problem = %e, "probe cache lock file ignored");
            return None;
        }
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
    }

    fn store(&self, binary: &Path, key: &CacheKey, data: &ProbeData, pending: &[Accel]) -> Result<(), FileProblem> {
        let dir = open_dir(&self.inner.dir, true)?;
        remove_abandoned_temporaries(&dir, &self.inner.dir);
        let bytes = encode(key, data, pending)?;
        Ok(write_atomic(&dir, &entry_name(binary), &bytes)?)
    }
}

/// The name of `binary`'s entry in the cache directory (see [`ProbeCache::file_for`]).
fn entry_name(binary: &Path) -> String {
    let name: String = binary
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
                .collect()
        })
        .unwrap_or_else(|| "binary".to_owned());
    let h = checksum(binary.as_os_str().as_encoded_bytes());
    format!("{name}-{h:016x}.probe")
}

/// A temporary file this old was left by a writer that died between creating and renaming
/// it (a write takes milliseconds).
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Remove the temporary files of [`write_atomic`] that a killed process left in `dir`: those
/// whose writer has ended ([`crate::process::owner_gone`]), and any older than
/// [`ABANDONED_AFTER`] (an earlier naming). A live writer's stay. Runs only when storing
/// (after a probe), so it costs nothing on a lookup.
fn remove_abandoned_temporaries(dir: &File, path: &Path) {
    let Ok(rd) = fs::read_dir(path) else { return };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(tag) = name.strip_prefix(TMP_PREFIX).filter(|_| name.ends_with(TMP_SUFFIX)) else { continue };
        let old = || {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ABANDONED_AFTER)
        };
        if crate::process::owner_gone(tag) || old() {
            // Relative to the directory checked as ours; unlink never follows a symlink.
            let gone =
                nix::unistd::unlinkat(Some(dir.as_raw_fd()), name.as_ref(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            match gone {
                Ok(()) => tracing::info!(file = %e.path().display(), "removed an abandoned temporary cache file"),
                Err(err) => tracing::debug!(file = %e.path().display(), error = %err, "cannot remove"),
            }
        }
    }
}

const TMP_PREFIX: &str = ".tmp-";
const TMP_SUFFIX: &str = ".probe";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    probe_format: u32,
    key: CacheKey,
    segments: Vec<Segment>,
    /// Runs not probed yet (accelerator tags, `tcg`): a lookup needing one is a miss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<String>,
    /// Unix seconds when written (information only).
    written: u64,
}

/// A [`Header`] read without its key (known equal: [`header_holds_key`]).
#[derive(Debug, Deserialize)]
struct HeaderSegments {
    segments: Vec<Segment>,
    #[serde(default)]
    pending: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Segment {
    name: String,
    len: u64,
    sum: String,
}

/// `ProbeData` without its runs: the "meta" segment.
#[derive(Serialize, Deserialize)]
struct Meta<H> {
    format_version: u32,
    binary: String,
    host: H,
}

/// The accelerator's name in segment names (`kvm`, `tcg`, as serialized).
fn accel_tag(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

fn run_segment_name(a: Accel) -> String {
    format!("run:{}", accel_tag(a))
}

fn accel_of(tag: &str) -> Option<Accel> {
    [Accel::Kvm, Accel::Tcg].into_iter().find(|a| accel_tag(*a) == tag)
}

/// A serialization error, naming the part that failed.
fn json_err(part: &str) -> impl Fn(serde_json::Error) -> io::Error + '_ {
    move |e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot serialize {part}: {e}"))
}

/// The file's bytes for `data` under `key`.
fn encode(key: &CacheKey, data: &ProbeData, pending: &[Accel]) -> io::Result<Vec<u8>> {
    let mut segs: Vec<(String, Vec<u8>)> = Vec::new();
    let meta = Meta { format_version: data.format_version, binary: data.binary.clone(), host: &data.host };
    segs.push(("meta".to_owned(), serde_json::to_vec(&meta).map_err(json_err("the host facts"))?));
    for (accel, t) in &data.runs {
        let name = run_segment_name(*accel);
        segs.push((name, compact::encode(t)));
    }
    let header = Header {
        probe_format: data.format_version,
        key: key.clone(),
        segments: segs
            .iter()
            .map(|(n, b)| Segment { name: n.clone(), len: b.len() as u64, sum: format!("{:016x}", checksum(b)) })
            .collect(),
        pending: pending.iter().filter(|a| !data.runs.contains_key(a)).map(|a| accel_tag(*a).to_owned()).collect(),
        written: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    let h = serde_json::to_vec(&header).map_err(json_err("the cache key"))?;
    let mut out = format!("{MAGIC} {CACHE_FILE_VERSION} {} {:016x}\n", h.len(), checksum(&h)).into_bytes();
    out.extend_from_slice(&h);
    for (_, b) in &segs {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Read and verify the cache file `name` of the directory `dir` against `key`; read the
/// segments `runs` asks for (each into its own buffer of exactly its size: the other runs are
/// never read). Returns the data and whether every run in the file was read.
fn read_file(dir: &File, name: &str, key: &CacheKey, runs: Runs<'_>) -> Result<(ProbeData, bool), FileProblem> {
    let f = match open_trusted(dir, name) {
        Ok(f) => f,
        Err(FileProblem::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Err(FileProblem::Absent),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    if size > MAX_FILE {
        return Err(FileProblem::Damaged(format!("larger than {MAX_FILE} bytes")));
    }
    // `size` fits in memory: it is at most MAX_FILE.
    let (data, complete) = decode(&f, usize::try_from(size).unwrap_or(usize::MAX), key, runs)?;
    if crate::cpu::lacks_cpu_models(&data) {
        return Err(FileProblem::Lacks("QEMU's definition of every x86 CPU model"));
    }
    Ok((data, complete))
}

/// Why a cache directory or file with this status is not ours to trust, `None` when it is:
/// owned by this user or root, and writable by nobody else (a world-writable directory, sticky
/// or not, lets anyone place or replace entries; a file another user owns or may write can say
/// anything, checksums included, since they are not secret).
fn distrust(st: &nix::sys::stat::FileStat) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me && st.st_uid != 0 {
        return Some(format!("owned by uid {}, not by this user ({me}) or root", st.st_uid));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!("writable by group or others (mode {:o})", st.st_mode & 0o7777));
    }
    None
}

/// The cache directory, opened, when it is ours ([`distrust`]); created (0755) when
/// `create` and absent. Files are then opened, created and renamed relative to it, so a
/// directory swapped after the check is never used.
fn open_dir(dir: &Path, create: bool) -> Result<File, FileProblem> {
    use std::os::unix::fs::DirBuilderExt;
    if create {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    let d = match OpenOptions::new().read(true).custom_flags(nix::libc::O_DIRECTORY).open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FileProblem::Absent),
        Err(e) => return Err(e.into()),
    };
    match distrust(&nix::sys::stat::fstat(d.as_raw_fd()).map_err(io::Error::from)?) {
        Some(why) => Err(FileProblem::Untrusted(format!("the directory is {why}"))),
        None => Ok(d),
    }
}

/// Open the regular file `name` of `dir` for reading without following a symlink and
/// without blocking (a FIFO or device in its place opens at once and is then refused), and
/// only when it is ours ([`distrust`]).
fn open_trusted(dir: &File, name: &str) -> Result<File, FileProblem> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let f = match nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, nix::sys::stat::Mode::empty()) {
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { File::from_raw_fd(fd) },
        Err(nix::errno::Errno::ELOOP) => return Err(FileProblem::Untrusted("it is a symbolic link".into())),
        Err(e) => return Err(io::Error::from(e).into()),
    };
    check_regular_and_ours(&f)?;
    Ok(f)
}

/// Refuse an open file that is not a regular file or not ours.
fn check_regular_and_ours(f: &File) -> Result<(), FileProblem> {
    let st = nix::sys::stat::fstat(f.as_raw_fd()).map_err(io::Error::from)?;
    let kind = st.st_mode & nix::libc::S_IFMT;
    if kind != nix::libc::S_IFREG {
        let what = match kind {
            nix::libc::S_IFIFO => "a FIFO",
            nix::libc::S_IFCHR | nix::libc::S_IFBLK => "a device",
            nix::libc::S_IFSOCK => "a socket",
            nix::libc::S_IFDIR => "a directory",
            _ => "not a regular file",
        };
        return Err(FileProblem::Untrusted(format!("it is {what}")));
    }
    match distrust(&st) {
        Some(why) => Err(FileProblem::Untrusted(format!("it is {why}"))),
        None => Ok(()),
    }
}

/// `len` bytes of `f` at `offset`; a file shorter than that is damaged.
fn read_at(f: &File, offset: usize, len: usize, what: &str) -> Result<Vec<u8>, FileProblem> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset as u64).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FileProblem::Damaged(format!("{what} truncated")),
        _ => FileProblem::Io(e),
    })?;
    Ok(buf)
}

/// Verify and decode the cache file `f` of `size` bytes. The run transcripts keep their
/// segment's buffer alive: their replies are decoded from it when first read.
fn decode(f: &File, size: usize, key: &CacheKey, runs: Runs<'_>) -> Result<(ProbeData, bool), FileProblem> {
    let damaged = |s: &str| FileProblem::Damaged(s.to_owned());
    // The header line is short; the header itself is a few KiB: one read usually has both.
    let head = read_at(f, 0, size.min(16 * 1024), "header")?;
    let nl = head.iter().position(|b| *b == b'\n').ok_or_else(|| damaged("no header line"))?;
    let first = std::str::from_utf8(&head[..nl]).map_err(|_| damaged("header line is not text"))?;
    let parts: Vec<&str> = first.split(' ').collect();
    let [magic, version, hlen, hsum] = parts[..] else { return Err(damaged("malformed header line")) };
    if magic != MAGIC {
        return Err(damaged("not a capsd probe cache file"));
    }
    if version != CACHE_FILE_VERSION.to_string() {
        return Err(FileProblem::OtherVersion(format!(
            "file version {version}, this capsd reads {CACHE_FILE_VERSION}"
        )));
    }
    let hlen: usize = hlen.parse().map_err(|_| damaged("bad header length"))?;
    let body = nl + 1;
    let header_end = body.checked_add(hlen).filter(|e| *e <= size).ok_or_else(|| damaged("truncated header"))?;
    let longer;
    let header_bytes = match head.get(body..header_end) {
        Some(h) => h,
        None => {
            longer = read_at(f, body, hlen, "header")?;
            &longer[..]
        }
    };
    if format!("{:016x}", checksum(header_bytes)) != hsum {
        return Err(damaged("header checksum mismatch"));
    }
    // The stored key is compared as the bytes [`encode`] wrote for it: when they are the
    // current key's serialization, the keys are equal and the header is read without
    // building the stored key (a few hundred file stamps). Anything else (another key, or
    // the same key serialized otherwise) takes the whole comparison.
    let (segments, pending) = if header_holds_key(header_bytes, key) {
        let header: HeaderSegments =
            serde_json::from_slice(header_bytes).map_err(|e| FileProblem::Damaged(format!("header: {e}")))?;
        (header.segments, header.pending)
    } else {
        let header: Header =
            serde_json::from_slice(header_bytes).map_err(|e| FileProblem::Damaged(format!("header: {e}")))?;
        if header.probe_format != PROBE_FORMAT_VERSION {
            return Err(FileProblem::OtherVersion(format!(
                "probe format {}, this capsd uses {PROBE_FORMAT_VERSION}",
                header.probe_format
            )));
        }
        if let Some(what) = key_difference(&header.key, key) {
            return Err(FileProblem::Stale(what));
        }
        (header.segments, header.pending)
    };
    // Segment table: name -> range of the file.
    let mut offset = header_end;
    let mut table: BTreeMap<&str, std::ops::Range<usize>> = BTreeMap::new();
    for s in &segments {
        let len = usize::try_from(s.len).map_err(|_| damaged("segment length"))?;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= size)
            .ok_or_else(|| FileProblem::Damaged(format!("segment {} truncated", s.name)))?;
        table.insert(s.name.as_str(), offset..end);
        offset = end;
    }
    if offset != size {
        return Err(damaged("trailing bytes after the last segment"));
    }
    let sums: HashMap<&str, &str> = segments.iter().map(|s| (s.name.as_str(), s.sum.as_str())).collect();
    let verified = |name: &str| -> Result<Vec<u8>, FileProblem> {
        let range = table.get(name).ok_or_else(|| FileProblem::Damaged(format!("segment {name} missing")))?;
        let bytes = match head.get(range.clone()) {
            Some(b) => b.to_vec(),
            None => read_at(f, range.start, range.len(), &format!("segment {name}"))?,
        };
        if sums.get(name).copied() != Some(format!("{:016x}", checksum(&bytes)).as_str()) {
            return Err(FileProblem::Damaged(format!("segment {name} checksum mismatch")));
        }
        Ok(bytes)
    };
    let meta: Meta<HostFacts> =
        serde_json::from_slice(&verified("meta")?).map_err(|e| FileProblem::Damaged(format!("segment meta: {e}")))?;
    if meta.format_version != PROBE_FORMAT_VERSION {
        return Err(FileProblem::OtherVersion(format!("probe data format {}", meta.format_version)));
    }
    let mut data =
        ProbeData { format_version: meta.format_version, binary: meta.binary, runs: BTreeMap::new(), host: meta.host };
    // The runs asked for: checked whole, their replies left to be decoded when read. None of
    // them in the file: every run (the caller would otherwise read the file again for them).
    let has_run = |a: Accel| table.contains_key(run_segment_name(a).as_str());
    let runs = match runs {
        Runs::Only(want) if !want.iter().any(|a| has_run(*a)) => Runs::All,
        r => r,
    };
    // Runs left for later: a lookup that needs one probes (and then stores every run).
    let mut complete = true;
    for tag in &pending {
        let accel = accel_of(tag).ok_or_else(|| FileProblem::Damaged(format!("unknown pending run {tag}")))?;
        if has_run(accel) {
            return Err(FileProblem::Damaged(format!("run {tag} both stored and pending")));
        }
        if runs == Runs::All || matches!(runs, Runs::Only(want) if want.contains(&accel)) {
            return Err(FileProblem::Incomplete(accel_tag(accel)));
        }
        complete = false;
    }
    for name in table.keys() {
        let Some(tag) = name.strip_prefix("run:") else { continue };
        let accel = accel_of(tag).ok_or_else(|| FileProblem::Damaged(format!("unknown run segment {name}")))?;
        if let Runs::Only(want) = runs {
            if !want.contains(&accel) {
                complete = false;
                continue;
            }
        }
        let bytes = Arc::new(verified(name)?);
        let len = bytes.len();
        let t = compact::decode(&bytes, 0..len).map_err(|e| FileProblem::Damaged(format!("segment {name}: {e}")))?;
        data.runs.insert(accel, t);
    }
    Ok((data, complete))
}

/// Whether `header` (a [`Header`] as [`encode`] serializes it) starts with this capsd's
/// probe format and exactly the serialization of `key`: then its key equals `key`.
fn header_holds_key(header: &[u8], key: &CacheKey) -> bool {
    let Ok(now) = serde_json::to_vec(key) else { return false };
    let prefix = format!("{{\"probe_format\":{PROBE_FORMAT_VERSION},\"key\":");
    header
        .strip_prefix(prefix.as_bytes())
        .and_then(|rest| rest.strip_prefix(now.as_slice()))
        .is_some_and(|rest| rest.starts_with(b",\"segments\":"))
}

/// The first part of the key that differs, for the log.
fn key_difference(stored: &CacheKey, now: &CacheKey) -> Option<String> {
    let (a, b) = (&stored.host, &now.host);
    let checks: [(&str, bool); 14] = [
        ("the emulator binary", stored.binary == now.binary),
        ("capsd's version", a.app_version == b.app_version),
        ("capsd's executable", a.app_binary == b.app_binary),
        ("the probe user", a.probe_user == b.probe_user),
        ("the probe format", a.probe_format == b.probe_format),
        ("the QEMU module directory", a.module_dirs == b.module_dirs),
        ("the firmware descriptors", a.firmware_dirs == b.firmware_dirs),
        ("the kernel", a.kernel == b.kernel),
        ("the CPU or its microcode", a.cpu == b.cpu),
        ("/dev/kvm", a.kvm_present == b.kvm_present && a.kvm_usable == b.kvm_usable && a.kvm_access == b.kvm_access),
        ("a module parameter (KVM nested, VFIO no-IOMMU)", a.nested == b.nested),
        ("a host file (swtpm, /dev/sev, ...)", a.other_files == b.other_files),
        ("libvirt's cpu_map", a.cpu_map == b.cpu_map),
        ("the key", stored == now),
    ];
    checks.iter().find(|(_, same)| !same).map(|(what, _)| (*what).to_owned())
}

/// Write `bytes` as the file `name` of the directory `dir` atomically: a new temporary file
/// (created exclusively, never through an existing name or symlink, named with this
/// process's [`crate::process::owner_tag`]), `fsync`, `rename` over `name` (which replaces
/// the directory entry, whatever it was, without following it), `fsync` of the directory.
/// On failure the temporary file is removed.
fn write_atomic(dir: &File, name: &str, bytes: &[u8]) -> io::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let (tmp, fd) = loop {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let tmp = format!(
            "{TMP_PREFIX}{}-{nanos:08x}{:x}{TMP_SUFFIX}",
            crate::process::owner_tag(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        match nix::fcntl::openat(Some(dir.as_raw_fd()), tmp.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => break (tmp, fd),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let unlink = |e: io::Error| {
        let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        e
    };
    f.write_all(bytes).map_err(unlink)?;
    // Readable by the group/others like any cache file, whatever the umask.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(unlink)?;
    f.sync_all().map_err(unlink)?;
    nix::fcntl::renameat(Some(dir.as_raw_fd()), tmp.as_str(), Some(dir.as_raw_fd()), name)
        .map_err(|e| unlink(e.into()))?;
    dir.sync_all()
}

/// A 64-bit checksum for damage detection (not for adversaries): eight bytes per step,
/// each step a bijection of the state, so one changed word always changes the result;
/// the length is mixed in, so truncation does too.
pub fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ (data.len() as u64).wrapping_mul(K);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(23) ^ w).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    let rem = chunks.remainder();
    last[..rem.len()].copy_from_slice(rem);
    h = (h.rotate_left(23) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_key_covers_what_host_facts_read_and_derivation_uses() {
        let s = KeySources::host();
        for loader in crate::host::DEFAULT_LOADERS {
            assert!(s.other_files.contains(&PathBuf::from(loader)), "{loader}");
        }
        for f in ["/sys/module/kvm/parameters/prot_virt", "/sys/firmware/uv/prot_virt_host", "/dev/vfio/vfio"] {
            assert!(s.other_files.contains(&PathBuf::from(f)), "{f}");
        }
        assert!(s.nested_params.contains(&PathBuf::from("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode")));
        // Who probes: what the choice is made from, every file it reads.
        assert_eq!(s.probe_user, crate::process::probe_user_inputs());
        for f in crate::process::probe_user_files() {
            assert!(s.other_files.contains(&f), "{}", f.display());
        }
        for f in [crate::process::LIBVIRT_QEMU_CONF, "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"] {
            assert!(s.other_files.contains(&PathBuf::from(f)), "{f}");
        }
    }

    #[test]
    fn a_header_is_read_without_its_key_exactly_when_the_key_is_equal() {
        let dir = tempfile::tempdir().unwrap();
        let sources = KeySources {
            module_dirs: vec![dir.path().to_owned()],
            firmware_dirs: vec![],
            cpuinfo: dir.path().join("cpuinfo"),
            kernel_files: vec![],
            kvm_device: dir.path().join("kvm"),
            nested_params: vec![],
            other_files: vec![dir.path().join("swtpm")],
            cpu_map_dir: dir.path().join("cpu_map"),
            app_binary: None,
            probe_user: None,
        };
        fs::write(dir.path().join("qemu"), b"binary").unwrap();
        let cache = ProbeCache::with_options(
            dir.path().join("cache"),
            CacheOptions { sources: sources.clone(), app_version: "1".into() },
        );
        let key = cache.key(&dir.path().join("qemu")).unwrap();
        let data = ProbeData {
            format_version: PROBE_FORMAT_VERSION,
            binary: "qemu".into(),
            runs: BTreeMap::new(),
            host: HostFacts::default(),
        };
        let bytes = encode(&key, &data, &[]).unwrap();
        let nl = bytes.iter().position(|b| *b == b'\n').unwrap();
        let header = &bytes[nl + 1..];
        assert!(header_holds_key(header, &key));
        // Any change of the key: the whole comparison (which then names what changed).
        let mut other = key.clone();
        other.host.probe_user = Some("capsd".into());
        assert!(!header_holds_key(header, &other));
        let mut other = key.clone();
        other.binary.size += 1;
        assert!(!header_holds_key(header, &other));
        fs::write(dir.path().join("swtpm"), b"").unwrap();
        let moved = cache.key(&dir.path().join("qemu")).unwrap();
        assert!(!header_holds_key(header, &moved));
    }

    #[test]
    fn checksum_changes_with_any_byte_and_length() {
        let base: Vec<u8> = (0..100u8).collect();
        let h = checksum(&base);
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 0x01;
            assert_ne!(checksum(&b), h, "flip at {i}");
        }
        assert_ne!(checksum(&base[..99]), h);
        assert_ne!(checksum(&[0u8; 8]), checksum(&[0u8; 9]));
    }

    #[test]
    fn dir_listing_stamps_entries_like_metadata_does() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("b.so"), b"module").unwrap();
        std::os::unix::fs::symlink(d.join("b.so"), d.join("a-link.so")).unwrap();
        std::os::unix::fs::symlink(d.join("gone"), d.join("c-dangling")).unwrap();
        let got = dir_listing(d).unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a-link.so", "b.so", "c-dangling"]);
        for s in &got[..2] {
            // Symlinks followed, as fs::metadata does.
            assert_eq!(*s, FileStamp::of(s.name.clone(), &fs::metadata(d.join(&s.name)).unwrap()));
        }
        assert_eq!((got[2].size, got[2].mtime_ns), (0, -1));
        assert!(dir_listing(&d.join("no-such-dir")).is_none());
    }

    #[test]
    fn cpu_signature_reads_first_processor_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cpuinfo");
        fs::write(
            &p,
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmicrocode\t: 0x5003\nflags\t\t: fpu vmx\n\nprocessor\t: 1\nmicrocode\t: 0x9999\n",
        )
        .unwrap();
        let s = cpu_signature(&p);
        assert_eq!(s, vec!["vendor_id=GenuineIntel", "model=85", "microcode=0x5003", "flags=fpu vmx"]);
    }

    /// Read a few KiB at a time, the first block is the same whether it ends early, late
    /// (past several reads), after leading blank lines, or not at all within 16 KiB.
    #[test]
    fn cpu_signature_is_the_first_block_however_long() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cpuinfo");
        let long_flags = "f ".repeat(3000);
        let block = format!("vendor_id\t: AuthenticAMD\nflags\t\t: {long_flags}\nmicrocode\t: 0x1\n");
        fs::write(&p, format!("\n\n{block}\nvendor_id\t: Other\n")).unwrap();
        let s = cpu_signature(&p);
        assert_eq!(s.len(), 3, "{:?}", s.iter().map(|l| &l[..l.len().min(20)]).collect::<Vec<_>>());
        assert_eq!((s[0].as_str(), s[2].as_str()), ("vendor_id=AuthenticAMD", "microcode=0x1"));
        assert_eq!(s[1], format!("flags={}", long_flags.trim()));
        // A read that ends inside a line starting with blanks does not end the block there.
        let head = "vendor_id\t: Y\n";
        let pad = format!("pad\t: {}\n", "p".repeat(4094 - head.len() - 7));
        fs::write(&p, format!("{head}{pad} \tfoo\t: bar\nmicrocode\t: 0x2\n\nvendor_id\t: Z\n")).unwrap();
        assert_eq!(cpu_signature(&p), vec!["vendor_id=Y", "microcode=0x2"]);
        // Never ending within 16 KiB: what the first 16 KiB hold, as before.
        fs::write(&p, format!("vendor_id\t: X\nflags\t\t: {}\n", "g ".repeat(10_000))).unwrap();
        let s = cpu_signature(&p);
        assert_eq!(s[0], "vendor_id=X");
        assert_eq!(s.len(), 2);
        assert!(s[1].starts_with("flags=g g") && s[1].len() < 16 * 1024, "{}", s[1].len());
    }
}
