//! The host side: find plugin libraries in a directory, refuse the ones that are not safe to
//! load ([`vet_dir`], in capsd, without loading anything), check the ABI handshake and wrap
//! a plugin as a [`DomainCapsDriver`] ([`load_vetted`], in the plugin's helper process).
//!
//! # What is refused, and why
//! Loading a library runs its code (initialisers, entry point) as capsd's user (often root),
//! so a file anyone else could have written is refused before `dlopen`:
//! - the directory (and, for symlinked plugins, the target's directory) must belong to root or
//!   to the running user and must not be writable by group or others; the same holds for
//!   every directory above it, except that a sticky one (`/tmp`) may be writable;
//! - the file must be a regular file with the same owner rule and no group/other write bit.
//!   The checks use `fstat` on the opened file; right before `dlopen` the path must still
//!   name that same file (device and inode).
//!
//! After loading: the `capsd_plugin_v1` symbol must exist, return a non-null table whose
//! `abi_version` is [`ABI_VERSION`], whose size covers the version-1 table, and whose name is
//! a valid, unused driver name. Every refusal is a [`PluginError`] naming the file; the
//! caller gets them all in [`LoadReport::refused`] (and each is logged with `tracing::warn!`).
//!
//! A loaded plugin keeps its [`Library`] loaded as long as the driver lives. capsd never
//! loads a plugin in its own process: it vets the file here and its helper process
//! ([`crate::hosted`]) loads that same file with [`load_vetted`] and makes the handshake.
//! [`load_file`] and [`load_dir`] load into the calling process (tests, benchmarks, other
//! hosts of the ABI).

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
use libloading::Library;
use nix::sys::stat::{fstat, lstat, stat, FileStat, Mode, SFlag};

use crate::abi::{
    CapsdPluginV1, CapsdReply, EntryPointV1, ABI_VERSION, ENTRY_SYMBOL, REPLY_AVAILABLE, REPLY_ERROR, REPLY_JSON,
    REPLY_NONE, REPLY_UNAVAILABLE, REPLY_XML, VTABLE_SIZE_V1,
};
use crate::wire::{decode_error, ErrorPayload};

/// Where capsd looks for plugins when no directory is given.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/capsd/plugins";

/// Largest reply accepted from a plugin (libvirt's documents are under 100 KiB).
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Why a plugin file (or the directory) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    #[error("cannot read plugin directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot inspect {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is owned by uid {owner}; plugins and their directories must belong to root or to the user running capsd (uid {euid})"
    )]
    Owner { path: PathBuf, owner: u32, euid: u32 },
    #[error("{path} is writable by {who} (mode {mode:04o}); plugins and their directories must not be group- or world-writable")]
    Writable { path: PathBuf, mode: u32, who: &'static str },
    #[error("{path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("cannot load {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: libloading::Error,
    },
    #[error("{path} has no `capsd_plugin_v1` entry point{hint}")]
    NoEntryPoint { path: PathBuf, hint: String },
    #[error("{path}: the plugin's entry point returned no driver (its initialisation failed)")]
    InitFailed { path: PathBuf },
    #[error("{path} speaks capsd plugin ABI version {found}; this capsd speaks version {expected}")]
    AbiVersion { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: the plugin's function table is {found} bytes, at least {expected} are needed")]
    VTableSize { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: invalid driver name: {reason}")]
    BadName { path: PathBuf, reason: String },
    #[error("{path}: driver name '{name}' is already taken by {taken_by}")]
    DuplicateName { path: PathBuf, name: String, taken_by: String },
    /// The plugin's helper process refused it (the handshake happens there): its message,
    /// which names the file.
    #[error("{message}")]
    InHelper { path: PathBuf, message: String },
}

impl PluginError {
    /// The file or directory the refusal is about.
    pub fn path(&self) -> &Path {
        match self {
            PluginError::ReadDir { path, .. }
            | PluginError::NotADirectory { path }
            | PluginError::Stat { path, .. }
            | PluginError::Owner { path, .. }
            | PluginError::Writable { path, .. }
            | PluginError::NotRegularFile { path }
            | PluginError::Load { path, .. }
            | PluginError::NoEntryPoint { path, .. }
            | PluginError::InitFailed { path }
            | PluginError::AbiVersion { path, .. }
            | PluginError::VTableSize { path, .. }
            | PluginError::BadName { path, .. }
            | PluginError::DuplicateName { path, .. }
            | PluginError::InHelper { path, .. } => path,
        }
    }
}

/// The outcome of loading a directory: the plugins that loaded and every refusal.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<PluginDriver>,
    pub refused: Vec<PluginError>,
}

/// A plugin file that passed the ownership and permission checks, not loaded: the path it
/// was found under and the file (device and inode) that was checked.
#[derive(Debug, Clone)]
pub struct Vetted {
    pub path: PathBuf,
    pub identity: FileIdentity,
}

/// The outcome of checking a directory: the files that may be loaded and every refusal.
#[derive(Debug, Default)]
pub struct VetReport {
    pub files: Vec<Vetted>,
    pub refused: Vec<PluginError>,
}

/// Log a refusal and keep it.
fn refuse(refused: &mut Vec<PluginError>, err: PluginError) {
    tracing::warn!(path = %err.path().display(), "plugin refused: {err}");
    refused.push(err);
}

/// Check every `*.so` (the platform's library suffix) in `dir`, in name order, without
/// loading any: what capsd does before its helpers load them ([`crate::hosted::start_dir`]).
/// Refusals are logged and returned, never fatal.
pub fn vet_dir(dir: &Path) -> VetReport {
    let mut report = VetReport::default();
    if let Err(e) = check_dir(dir) {
        refuse(&mut report.refused, e);
        return report;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(source) => {
            refuse(&mut report.refused, PluginError::ReadDir { path: dir.to_owned(), source });
            return report;
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.starts_with('.') && name.ends_with(std::env::consts::DLL_SUFFIX) {
                    files.push(e.path());
                } else {
                    tracing::debug!(file = %e.path().display(), "not a plugin library, skipped");
                }
            }
            Err(source) => refuse(&mut report.refused, PluginError::ReadDir { path: dir.to_owned(), source }),
        }
    }
    files.sort();
    for file in files {
        match vet_file(&file) {
            Ok(v) => report.files.push(v),
            Err(e) => refuse(&mut report.refused, e),
        }
    }
    report
}

/// Load every `*.so` in `dir` into this process, in name order, after [`vet_dir`]'s checks.
/// Names in `taken` (capsd's own drivers) cannot be claimed by a plugin; neither can a name
/// an earlier plugin of the directory already has. Refusals are logged and returned, never
/// fatal. (capsd itself never loads a plugin in its own process: it uses
/// [`crate::hosted::start_dir`].)
pub fn load_dir(dir: &Path, taken: &[&str]) -> LoadReport {
    let vetted = vet_dir(dir);
    let mut report = LoadReport { loaded: Vec::new(), refused: vetted.refused };
    for file in vetted.files {
        match load_checked(&file.path) {
            Ok(plugin) => {
                let clash = taken.iter().find(|t| **t == plugin.name()).map(|t| format!("capsd's own driver '{t}'"));
                let clash = clash.or_else(|| {
                    report.loaded.iter().find(|p| p.name() == plugin.name()).map(|p| p.path().display().to_string())
                });
                if let Some(taken_by) = clash {
                    let name = plugin.name().to_owned();
                    refuse(&mut report.refused, PluginError::DuplicateName { path: file.path, name, taken_by });
                    continue;
                }
                tracing::info!(driver = plugin.name(), path = %file.path.display(), "plugin loaded");
                report.loaded.push(plugin);
            }
            Err(e) => refuse(&mut report.refused, e),
        }
    }
    report
}

fn stat_err(path: &Path) -> impl FnOnce(nix::errno::Errno) -> PluginError + '_ {
    move |e| PluginError::Stat { path: path.to_owned(), source: std::io::Error::from(e) }
}

/// Owner is root or us, and no group/other write bit.
fn check_trust(path: &Path, st: &FileStat) -> Result<(), PluginError> {
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != 0 && st.st_uid != euid {
        return Err(PluginError::Owner { path: path.to_owned(), owner: st.st_uid, euid });
    }
    #[allow(clippy::unnecessary_cast)] // mode_t is u16 on the BSDs
    let mode = st.st_mode as u32 & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    Err(PluginError::Writable { path: path.to_owned(), mode, who })
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// The plugin directory must be trusted (it decides which files exist), and so must every
/// directory above it (each could rename it): owned by root or us, and not writable by group
/// or others. Ancestors may be writable when their sticky bit is set (like `/tmp`), since
/// then nobody else can rename or remove what we own in them.
fn check_dir(dir: &Path) -> Result<(), PluginError> {
    let st = stat(dir).map_err(|e| match e {
        nix::errno::Errno::ENOENT => PluginError::ReadDir { path: dir.to_owned(), source: std::io::Error::from(e) },
        e => stat_err(dir)(e),
    })?;
    if !is_kind(&st, SFlag::S_IFDIR) {
        return Err(PluginError::NotADirectory { path: dir.to_owned() });
    }
    let real = std::fs::canonicalize(dir).map_err(|source| PluginError::Stat { path: dir.to_owned(), source })?;
    check_trust(&real, &st)?;
    for ancestor in real.ancestors().skip(1) {
        let st = stat(ancestor).map_err(stat_err(ancestor))?;
        let sticky = Mode::from_bits_truncate(st.st_mode).contains(Mode::S_ISVTX);
        match check_trust(ancestor, &st) {
            Err(PluginError::Writable { .. }) if sticky => {}
            other => other?,
        }
    }
    Ok(())
}

/// Check one plugin file (and the directories holding it; for a symlink: holding its
/// target) without loading it.
pub fn vet_file(path: &Path) -> Result<Vetted, PluginError> {
    let (_, identity) = check_file(path)?;
    Ok(Vetted { path: path.to_owned(), identity })
}

/// The checks of [`vet_file`]: the path the file really is at, and its identity.
fn check_file(path: &Path) -> Result<(PathBuf, FileIdentity), PluginError> {
    // A symlink may point into another directory: that one must be trusted too.
    let lst = lstat(path).map_err(stat_err(path))?;
    let real = if is_kind(&lst, SFlag::S_IFLNK) {
        std::fs::canonicalize(path).map_err(|source| PluginError::Stat { path: path.to_owned(), source })?
    } else {
        path.to_owned()
    };
    if let Some(parent) = real.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_dir(parent)?;
    }
    let file = std::fs::File::open(&real).map_err(|source| PluginError::Stat { path: path.to_owned(), source })?;
    let st = fstat(file.as_raw_fd()).map_err(stat_err(path))?;
    if !is_kind(&st, SFlag::S_IFREG) {
        return Err(PluginError::NotRegularFile { path: path.to_owned() });
    }
    check_trust(path, &st)?;
    Ok((real, FileIdentity::of(&st)))
}

/// Load one plugin library into this process after the ownership and permission checks of
/// the file and of the directories holding it (for a symlink: holding its target). Its
/// initialisers and entry point run here: capsd itself loads plugins only in helper
/// processes ([`crate::hosted`]).
pub fn load_file(path: &Path) -> Result<PluginDriver, PluginError> {
    load_checked(path)
}

fn load_checked(path: &Path) -> Result<PluginDriver, PluginError> {
    let (real, identity) = check_file(path)?;
    // Load the file that was checked. Loading through `/proc/self/fd/N` would close the gap
    // between check and load, but the dynamic linker treats that name as the library's
    // identity, so a later plugin opened on a reused descriptor number would get the earlier
    // library back. The gap is harmless anyway: the directories were checked to be writable
    // only by root or by us, so nobody else can swap the file. What is checked is that the
    // path still names the same file right before loading.
    let again = stat(real.as_path()).map_err(stat_err(path))?;
    if FileIdentity::of(&again) != identity {
        return Err(PluginError::Stat {
            path: path.to_owned(),
            source: std::io::Error::other("the file was replaced while it was being checked"),
        });
    }
    let lib = open_library(path, &real)?;
    PluginDriver::from_library(path, lib, identity)
}

/// `dlopen` a vetted file (`name`: the path, or `/proc/self/fd/N` of the vetted descriptor).
fn open_library(path: &Path, name: &Path) -> Result<Library, PluginError> {
    // RTLD_NOW: a library with unresolved symbols is refused here rather than failing in the
    // middle of a query. RTLD_LOCAL: its symbols do not leak into other plugins.
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: loading a library runs its initialisers; that is what a plugin is. Both callers
    // checked the file to be a regular file owned by root or the running user and not writable
    // by anyone else, in a directory with the same properties, so its code is as trusted as
    // capsd's own.
    let lib = unsafe { libloading::os::unix::Library::open(Some(name), flags) }
        .map_err(|source| PluginError::Load { path: path.to_owned(), source })?;
    Ok(lib.into())
}

/// Which file (device and inode) a plugin was vetted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    fn of(st: &FileStat) -> Self {
        #[allow(clippy::unnecessary_cast)] // dev_t and ino_t differ in width across platforms
        FileIdentity { dev: st.st_dev as u64, ino: st.st_ino as u64 }
    }
}

/// Load, in a plugin helper process, the file [`vet_file`] vetted in capsd as `identity`.
/// The file is opened once; its descriptor must still be that file (device and inode) with
/// the same owner and mode rules, and the library is loaded through that descriptor
/// (`/proc/self/fd/N`), so what runs is exactly what was checked even if the path has been
/// replaced since. (A helper loads one library only, so the descriptor-number aliasing that
/// keeps [`load_file`] from loading this way cannot happen there.)
pub fn load_vetted(path: &Path, identity: FileIdentity) -> Result<PluginDriver, PluginError> {
    let file = std::fs::File::open(path).map_err(|source| PluginError::Stat { path: path.to_owned(), source })?;
    let st = fstat(file.as_raw_fd()).map_err(stat_err(path))?;
    if FileIdentity::of(&st) != identity {
        return Err(PluginError::Stat {
            path: path.to_owned(),
            source: std::io::Error::other(
                "the file was replaced after capsd checked it (restart capsd to check the new one)",
            ),
        });
    }
    if !is_kind(&st, SFlag::S_IFREG) {
        return Err(PluginError::NotRegularFile { path: path.to_owned() });
    }
    check_trust(path, &st)?;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let lib = open_library(path, &by_fd)?;
    drop(file);
    PluginDriver::from_library(path, lib, identity)
}

/// The symbol name of the entry point of ABI version `v`.
fn entry_symbol(v: u32) -> Vec<u8> {
    format!("capsd_plugin_v{v}\0").into_bytes()
}

/// A loaded plugin, usable as any other driver (in this process: capsd itself runs each
/// plugin through a helper process, [`crate::hosted`]).
pub struct PluginDriver {
    id: PluginId,
    identity: FileIdentity,
    vtable: CapsdPluginV1,
    /// Declared last so the library is unloaded after everything else is dropped.
    _lib: Library,
}

// SAFETY: the plugin ABI (rule 8 in `abi`) requires every function of the table to be callable
// from any thread, concurrently; the raw pointers in `vtable` are only handed back to those
// functions, and the library they point into stays loaded as long as `_lib` lives.
unsafe impl Send for PluginDriver {}
// SAFETY: see `Send`: the struct is immutable after construction.
unsafe impl Sync for PluginDriver {}

impl std::fmt::Debug for PluginDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDriver").field("name", &self.id.name).field("path", &self.id.path).finish()
    }
}

/// A reply copied out of plugin memory (the plugin's buffer is already freed), or relayed by
/// a helper process: the `REPLY_*` kind, the `ERR_*` code and the bytes, or why the bytes
/// could not be taken.
#[derive(Debug)]
pub(crate) struct Received {
    pub kind: u32,
    pub code: u32,
    pub data: Result<Vec<u8>, String>,
}

/// A plugin's name and file: what its errors are reported under, and how its replies are
/// read (the same in capsd's process and behind a helper process).
#[derive(Debug, Clone)]
pub(crate) struct PluginId {
    pub name: String,
    pub path: PathBuf,
}

impl PluginId {
    pub fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// A failure of the plugin (not of the query), naming it and its file.
    pub fn failure(&self, reason: impl Into<String>) -> DriverError {
        DriverError::ProbeFailed {
            target: format!("plugin '{}' ({})", self.name, self.origin()),
            reason: reason.into(),
        }
    }

    fn error_from(&self, code: u32, data: &[u8]) -> DriverError {
        let payload: ErrorPayload = serde_json::from_slice(data).unwrap_or_else(|_| ErrorPayload {
            message: String::from_utf8_lossy(data).into_owned(),
            ..ErrorPayload::default()
        });
        decode_error(&self.name, &self.origin(), code, payload)
    }

    /// The answer to `availability`.
    pub fn availability_from(&self, got: Received) -> Availability {
        let data = match got.data {
            Ok(d) => d,
            Err(e) => return Availability::Unavailable { reason: self.failure(e).to_string() },
        };
        match got.kind {
            REPLY_AVAILABLE => Availability::Available,
            REPLY_UNAVAILABLE => Availability::Unavailable { reason: String::from_utf8_lossy(&data).into_owned() },
            REPLY_ERROR => Availability::Unavailable { reason: self.error_from(got.code, &data).to_string() },
            other => Availability::Unavailable {
                reason: self.failure(format!("availability answered with unknown reply kind {other}")).to_string(),
            },
        }
    }

    /// The answer to `domain_capabilities`: the document, read by capsd-core's strict
    /// readers (a plugin's bytes are never trusted), or the plugin's error.
    pub fn document_from(&self, got: Received) -> Result<DomainCapabilities, DriverError> {
        let data = got.data.map_err(|e| self.failure(e))?;
        let (form, parsed) = match got.kind {
            REPLY_XML => ("XML", std::str::from_utf8(&data).map(capsd_core::xml::from_xml)),
            REPLY_JSON => ("JSON", std::str::from_utf8(&data).map(capsd_core::json::from_json)),
            REPLY_ERROR => return Err(self.error_from(got.code, &data)),
            REPLY_NONE => return Err(self.failure("the plugin returned no reply")),
            other => return Err(self.failure(format!("unknown reply kind {other}"))),
        };
        match parsed {
            Err(e) => Err(self.failure(format!("returned a {form} document that is not UTF-8: {e}"))),
            Ok(Err(e)) => Err(self.failure(format!("returned an invalid {form} document: {e}"))),
            Ok(Ok(caps)) => Ok(caps),
        }
    }
}

impl PluginDriver {
    fn from_library(path: &Path, lib: Library, identity: FileIdentity) -> Result<Self, PluginError> {
        // SAFETY: `EntryPointV1` is the documented type of the `capsd_plugin_v1` symbol.
        let entry = match unsafe { lib.get::<EntryPointV1>(ENTRY_SYMBOL) } {
            Ok(sym) => *sym,
            Err(_) => {
                // Name a newer (or older) ABI the library does speak, if any.
                let other = (0..=16).filter(|v| *v != ABI_VERSION).find(|v| {
                    // SAFETY: only the symbol's presence is tested; it is never called.
                    unsafe { lib.get::<*const ()>(&entry_symbol(*v)) }.is_ok()
                });
                let hint = match other {
                    Some(v) => format!(
                        " (it exports capsd_plugin_v{v}: built for plugin ABI version {v}, this capsd speaks version {ABI_VERSION})"
                    ),
                    None => "; it is not a capsd plugin".to_owned(),
                };
                return Err(PluginError::NoEntryPoint { path: path.to_owned(), hint });
            }
        };
        // SAFETY: the entry point takes no arguments and returns a pointer, per the ABI; the
        // library stays loaded while `entry` is used.
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(PluginError::InitFailed { path: path.to_owned() });
        }
        // Read only the two leading header fields until the version is known to match.
        // SAFETY: every ABI version starts with `abi_version: u32, vtable_size: u32`; `table`
        // is non-null and points into the loaded library.
        let (found, size) = unsafe {
            (std::ptr::addr_of!((*table).abi_version).read(), std::ptr::addr_of!((*table).vtable_size).read())
        };
        if found != ABI_VERSION {
            return Err(PluginError::AbiVersion { path: path.to_owned(), found, expected: ABI_VERSION });
        }
        if size < VTABLE_SIZE_V1 {
            return Err(PluginError::VTableSize { path: path.to_owned(), found: size, expected: VTABLE_SIZE_V1 });
        }
        // SAFETY: version and size match the version-1 layout, so the whole table is readable.
        let vtable = unsafe { table.read() };
        if vtable.name.is_null() {
            return Err(PluginError::BadName { path: path.to_owned(), reason: "the name pointer is null".into() });
        }
        // SAFETY: the ABI requires a NUL-terminated string valid while the library is loaded;
        // it is copied at once.
        let raw = unsafe { CStr::from_ptr(vtable.name) };
        let name =
            validate_name(raw.to_bytes()).map_err(|reason| PluginError::BadName { path: path.to_owned(), reason })?;
        Ok(PluginDriver { id: PluginId { name, path: path.to_owned() }, identity, vtable, _lib: lib })
    }

    /// The library file the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.id.path
    }

    /// The file (device and inode) that was checked and loaded.
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    pub(crate) fn id(&self) -> &PluginId {
        &self.id
    }

    /// Copy a reply out of plugin memory and hand the buffer back to the plugin.
    fn receive(&self, reply: CapsdReply) -> Received {
        let data = if reply.data.is_null() {
            if reply.len == 0 {
                Ok(Vec::new())
            } else {
                Err(format!("reply of {} bytes with a null buffer", reply.len))
            }
        } else if reply.len > MAX_REPLY {
            Err(format!("reply of {} bytes is larger than the {MAX_REPLY}-byte limit", reply.len))
        } else {
            // SAFETY: the plugin put `len` readable bytes at `data` (ABI rule 4); they stay
            // valid until `free_buffer` below.
            Ok(unsafe { std::slice::from_raw_parts(reply.data, reply.len) }.to_vec())
        };
        if !reply.data.is_null() {
            // SAFETY: the buffer came from this plugin's reply and is freed exactly once.
            unsafe { (self.vtable.free_buffer)(reply.data, reply.len) };
        }
        Received { kind: reply.kind, code: reply.code, data }
    }
}

/// Driver names: 1 to 64 bytes of `[a-z0-9_-]`, starting with a letter or digit.
fn validate_name(raw: &[u8]) -> Result<String, String> {
    let name = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    if name.is_empty() || name.len() > 64 {
        return Err(format!("'{name}' must be 1 to 64 bytes long"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || name.starts_with(['-', '_'])
    {
        return Err(format!("'{name}' may only hold a-z, 0-9, '-' and '_' and must start with a letter or digit"));
    }
    Ok(name.to_owned())
}

impl PluginDriver {
    /// Call the plugin's `availability` and take its reply.
    pub(crate) fn call_availability(&self) -> Received {
        let mut reply = CapsdReply::empty();
        // SAFETY: the table was validated at load time; `reply` is a valid, writable reply
        // and `instance` is the plugin's own pointer.
        unsafe { (self.vtable.availability)(self.vtable.instance, &mut reply) };
        self.receive(reply)
    }

    /// Call the plugin's `domain_capabilities` with a query (JSON) and take its reply.
    pub(crate) fn call_domain_capabilities(&self, json: &[u8]) -> Received {
        let mut reply = CapsdReply::empty();
        // SAFETY: as in `call_availability`; `json` outlives the call.
        unsafe { (self.vtable.domain_capabilities)(self.vtable.instance, json.as_ptr(), json.len(), &mut reply) };
        self.receive(reply)
    }
}

/// The query as a plugin reads it (JSON).
pub(crate) fn query_json(query: &Query) -> Result<Vec<u8>, DriverError> {
    serde_json::to_vec(query).map_err(|e| DriverError::invalid("query", query.to_string(), e.to_string()))
}

impl DomainCapsDriver for PluginDriver {
    fn name(&self) -> &str {
        &self.id.name
    }

    fn availability(&self) -> Availability {
        self.id.availability_from(self.call_availability())
    }

    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let json = query_json(query)?;
        self.id.document_from(self.call_domain_capabilities(&json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name(b"bhyve").unwrap(), "bhyve");
        assert_eq!(validate_name(b"my-driver_2").unwrap(), "my-driver_2");
        for bad in [&b""[..], b"Bhyve", b"a b", b"-x", b"\xff", &[b'a'; 65]] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_directory_is_one_clear_refusal() {
        let r = load_dir(Path::new("/nonexistent/capsd-plugins"), &[]);
        assert!(r.loaded.is_empty());
        assert_eq!(r.refused.len(), 1);
        assert_eq!(
            r.refused[0].to_string(),
            "cannot read plugin directory /nonexistent/capsd-plugins: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn world_writable_directory_is_refused_before_any_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libx.so"), b"not a library").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let r = load_dir(dir.path(), &[]);
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert!(matches!(r.refused[0], PluginError::Writable { mode: 0o777, .. }), "{}", r.refused[0]);
    }

    #[test]
    fn a_group_writable_parent_directory_is_refused_unless_sticky() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        let r = load_dir(&dir, &[]);
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert!(matches!(&r.refused[0], PluginError::Writable { path, mode: 0o775, .. } if path == top.path()));
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let r = load_dir(&dir, &[]);
        assert!(r.refused.is_empty(), "{:?}", r.refused);
    }

    #[test]
    fn group_writable_file_is_refused_and_garbage_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let gw = dir.path().join("libgw.so");
        std::fs::write(&gw, b"x").unwrap();
        std::fs::set_permissions(&gw, std::fs::Permissions::from_mode(0o664)).unwrap();
        let junk = dir.path().join("libjunk.so");
        std::fs::write(&junk, b"not an ELF file").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.path().join("README"), b"ignored").unwrap();
        let r = load_dir(dir.path(), &[]);
        assert_eq!(r.refused.len(), 2, "{:?}", r.refused);
        assert!(matches!(&r.refused[0], PluginError::Writable { who: "its group", path, .. } if *path == gw));
        assert!(matches!(&r.refused[1], PluginError::Load { path, .. } if *path == junk), "{}", r.refused[1]);
    }
}
