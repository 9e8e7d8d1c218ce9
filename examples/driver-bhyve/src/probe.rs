//! What the driver learns from the host, and where it learns it: by running `bhyve` with
//! probe arguments and reading the firmware directory ([`LiveHost`], on FreeBSD), or from a
//! recorded transcript of the same commands ([`ReplayHost`], anywhere).
//!
//! The probes (the same facts libvirt's bhyve driver relies on): `bhyve -h` lists `-u:` when
//! the RTC can keep UTC and shows `-c vcpus` only before CPU topology support; a device or
//! LPC option is supported unless bhyve's standard error carries its specific "unknown
//! device" / "invalid lpc device configuration" complaint.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsd_core::DriverError;

use crate::transcript::Transcript;
use crate::DRIVER;

/// Where bhyve's facts come from.
pub trait Host: Send + Sync {
    /// Standard error of `bhyve ARGS` (the exit status carries no information: bhyve exits
    /// non-zero whenever it is not given a VM to run).
    fn bhyve_stderr(&self, args: &[&str]) -> Result<String, DriverError>;
    /// The entries of `dir` without `.` and `..`, in directory order; `None` when the
    /// directory cannot be opened.
    fn list_dir(&self, dir: &Path) -> Result<Option<Vec<String>>, DriverError>;
    /// The text of the driver configuration (libvirt's `bhyve.conf`), `None` when absent.
    fn config(&self) -> Result<Option<String>, DriverError>;
    /// The bhyve binary the probes run.
    fn bhyve_path(&self) -> PathBuf;
}

/// Longest a probe run of bhyve may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The real host: `bhyve` from `PATH`, the real firmware directory and configuration file.
#[derive(Debug, Clone)]
pub struct LiveHost {
    pub bhyve: PathBuf,
    pub config: PathBuf,
}

impl LiveHost {
    /// `bhyve` as found in `PATH`, else `/usr/sbin/bhyve` if it exists, else `None`.
    pub fn find_bhyve() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("bhyve"))
            .chain(std::iter::once(PathBuf::from(crate::DEFAULT_EMULATOR)))
            .find(|p| p.is_file())
    }

    /// Probe `emulator` when the query names one (it must be an existing file), else the
    /// bhyve of [`LiveHost::find_bhyve`].
    pub fn for_query(emulator: Option<&Path>, config: &Path) -> Result<Self, DriverError> {
        let found = Self::find_bhyve()
            .ok_or_else(|| DriverError::Unavailable { driver: DRIVER.into(), reason: crate::no_bhyve_reason() })?;
        let bhyve = match emulator {
            None => found,
            Some(e) => match std::fs::metadata(e) {
                Ok(m) if m.is_file() => e.to_owned(),
                Ok(_) => return Err(DriverError::invalid("emulatorbin", e.display().to_string(), "not a file")),
                Err(err) => return Err(DriverError::invalid("emulatorbin", e.display().to_string(), err.to_string())),
            },
        };
        Ok(LiveHost { bhyve, config: config.to_owned() })
    }
}

impl Host for LiveHost {
    fn bhyve_stderr(&self, args: &[&str]) -> Result<String, DriverError> {
        let shown = format!("{} {}", self.bhyve.display(), args.join(" "));
        let mut child = Command::new(&self.bhyve)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DriverError::probe_failed(&shown, format!("cannot start: {e}")))?;
        let mut stderr = child.stderr.take().ok_or_else(|| DriverError::probe_failed(&shown, "no stderr pipe"))?;
        // bhyve's usage text is a few KiB: read it on a thread so the timeout below holds
        // even if the process hangs with the pipe open.
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stderr.by_ref().take(1024 * 1024).read_to_end(&mut buf).map(|_| buf)
        });
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() > PROBE_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(DriverError::probe_failed(&shown, format!("no exit after {PROBE_TIMEOUT:?}")));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(DriverError::probe_failed(&shown, format!("wait failed: {e}"))),
            }
        }
        let bytes = reader
            .join()
            .map_err(|_| DriverError::probe_failed(&shown, "stderr reader failed"))?
            .map_err(|e| DriverError::probe_failed(&shown, format!("reading stderr: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn list_dir(&self, dir: &Path) -> Result<Option<Vec<String>>, DriverError> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot open firmware directory: {e}");
                return Ok(None);
            }
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|e| DriverError::io(dir, e))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        Ok(Some(names))
    }

    fn bhyve_path(&self) -> PathBuf {
        self.bhyve.clone()
    }

    fn config(&self) -> Result<Option<String>, DriverError> {
        match std::fs::read_to_string(&self.config) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io(&self.config, e)),
        }
    }
}

/// A recorded host: `DIR/transcript.txt` (see [`crate::transcript`]) and an optional
/// `DIR/bhyve.conf`. The recording names its bhyve binary (`$ command -v bhyve`); that is the
/// only emulator a query may name.
#[derive(Debug, Clone)]
pub struct ReplayHost {
    pub dir: PathBuf,
    transcript: Transcript,
    bhyve: PathBuf,
}

impl ReplayHost {
    pub fn open(dir: &Path) -> Result<Self, DriverError> {
        let path = dir.join("transcript.txt");
        let text = std::fs::read_to_string(&path).map_err(|e| DriverError::io(&path, e))?;
        let transcript = Transcript::parse(&path, &text)
            .map_err(|e| DriverError::probe_failed(path.display().to_string(), e.to_string()))?;
        let mut host = ReplayHost { dir: dir.to_owned(), transcript, bhyve: PathBuf::new() };
        let found = host.recorded(&["command", "-v", "bhyve"])?.trim();
        if !found.starts_with('/') || found.contains('\n') {
            return Err(DriverError::probe_failed(
                path.display().to_string(),
                format!("`command -v bhyve` must record one absolute path, found {found:?}"),
            ));
        }
        host.bhyve = PathBuf::from(found);
        Ok(host)
    }

    /// A query may only name the recorded bhyve binary.
    pub fn check_emulator(&self, emulator: &Path) -> Result<(), DriverError> {
        if emulator == self.bhyve {
            return Ok(());
        }
        Err(DriverError::invalid(
            "emulatorbin",
            emulator.display().to_string(),
            format!("not the bhyve binary of this recording ({})", self.bhyve.display()),
        ))
    }

    fn recorded(&self, argv: &[&str]) -> Result<&str, DriverError> {
        self.transcript.output(argv).ok_or_else(|| {
            DriverError::probe_failed(
                self.transcript.path.display().to_string(),
                format!("no recording of `{}`", argv.join(" ")),
            )
        })
    }
}

impl Host for ReplayHost {
    fn bhyve_stderr(&self, args: &[&str]) -> Result<String, DriverError> {
        let argv: Vec<&str> = std::iter::once("bhyve").chain(args.iter().copied()).collect();
        self.recorded(&argv).map(str::to_owned)
    }

    fn list_dir(&self, dir: &Path) -> Result<Option<Vec<String>>, DriverError> {
        let shown = dir.display().to_string();
        let out = self.recorded(&["ls", "-a", &shown])?;
        if out.starts_with("ls: ") {
            tracing::warn!(dir = %shown, "cannot open firmware directory (recorded): {}", out.trim_end());
            return Ok(None);
        }
        Ok(Some(out.lines().filter(|l| !matches!(*l, "." | ".." | "")).map(str::to_owned).collect()))
    }

    fn bhyve_path(&self) -> PathBuf {
        self.bhyve.clone()
    }

    fn config(&self) -> Result<Option<String>, DriverError> {
        let path = self.dir.join("bhyve.conf");
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io(&path, e)),
        }
    }
}

/// What the installed bhyve supports, one field per probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BhyveCaps {
    /// `-u`: the RTC keeps UTC.
    pub rtc_utc: bool,
    /// `-c` takes a CPU topology (sockets, cores, threads).
    pub cpu_topology: bool,
    /// AHCI controllers with up to 32 ports per slot.
    pub ahci32slot: bool,
    pub net_e1000: bool,
    /// `-l bootrom,FILE`: UEFI firmware boot.
    pub lpc_bootrom: bool,
    /// The `fbuf` framebuffer device (VNC graphics, GOP video).
    pub fbuf: bool,
    pub xhci: bool,
    pub sound_hda: bool,
    /// `fbuf,password=`.
    pub vnc_password: bool,
    pub virtio_9p: bool,
    pub virtio_rnd: bool,
}

/// `(argument list, the complaint bhyve prints when it lacks the feature, the flag)`.
type DeviceProbe = (&'static [&'static str], &'static str, fn(&mut BhyveCaps));

const DEVICE_PROBES: [DeviceProbe; 9] = [
    (&["-s", "0,ahci"], "pci slot 0:0: unknown device \"ahci\"", |c| c.ahci32slot = true),
    (&["-s", "0,e1000"], "pci slot 0:0: unknown device \"e1000\"", |c| c.net_e1000 = true),
    (&["-l", "bootrom"], "bhyve: invalid lpc device configuration 'bootrom'", |c| c.lpc_bootrom = true),
    (&["-s", "0,fbuf"], "pci slot 0:0: unknown device \"fbuf\"", |c| c.fbuf = true),
    (&["-s", "0,xhci"], "pci slot 0:0: unknown device \"xhci\"", |c| c.xhci = true),
    (&["-s", "0,hda"], "pci slot 0:0: unknown device \"hda\"", |c| c.sound_hda = true),
    (&["-s", "0,fbuf,password="], "Invalid fbuf emulation \"password\"", |c| c.vnc_password = true),
    (&["-s", "0,virtio-9p"], "pci slot 0:0: unknown device \"virtio-9p\"", |c| c.virtio_9p = true),
    (&["-s", "0,virtio-rnd"], "pci slot 0:0: unknown device \"virtio-rnd\"", |c| c.virtio_rnd = true),
];

/// Run every probe.
#[tracing::instrument(skip_all, fields(driver = DRIVER, bhyve = %host.bhyve_path().display()))]
pub fn probe_caps(host: &dyn Host) -> Result<BhyveCaps, DriverError> {
    let mut caps = BhyveCaps::default();
    let help = host.bhyve_stderr(&["-h"])?;
    if !help.contains("Usage") && !help.contains("usage") {
        return Err(DriverError::probe_failed(
            "bhyve -h",
            format!("no usage text in its output: {:?}", first_line(&help)),
        ));
    }
    caps.rtc_utc = help.contains("-u:");
    caps.cpu_topology = !help.contains("-c vcpus");
    for (args, complaint, set) in DEVICE_PROBES {
        if !host.bhyve_stderr(args)?.contains(complaint) {
            set(&mut caps);
        }
    }
    // Without fbuf, bhyve complains about the unknown device rather than the password option;
    // a password needs the framebuffer anyway.
    caps.vnc_password &= caps.fbuf;
    tracing::debug!(driver = DRIVER, ?caps, "bhyve probed");
    Ok(caps)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// libvirt's default firmware directory for bhyve on FreeBSD.
pub const DEFAULT_FIRMWARE_DIR: &str = "/usr/local/share/uefi-firmware";

/// The `firmware_dir` setting of a libvirt-style `bhyve.conf` (`key = "value"` lines, `#`
/// comments), or [`DEFAULT_FIRMWARE_DIR`].
pub fn firmware_dir(config: Option<&str>, origin: &Path) -> Result<PathBuf, DriverError> {
    let Some(text) = config else { return Ok(PathBuf::from(DEFAULT_FIRMWARE_DIR)) };
    let mut dir = PathBuf::from(DEFAULT_FIRMWARE_DIR);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(DriverError::invalid(
                "bhyve.conf",
                format!("{}:{}", origin.display(), i + 1),
                format!("expected `key = \"value\"`, found {line:?}"),
            ));
        };
        if key.trim() != "firmware_dir" {
            continue;
        }
        let value = value.trim();
        let unquoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).filter(|v| !v.is_empty());
        match unquoted {
            Some(v) => dir = PathBuf::from(v),
            None => {
                return Err(DriverError::invalid(
                    "bhyve.conf firmware_dir",
                    value,
                    format!("{}:{}: expected a non-empty double-quoted path", origin.display(), i + 1),
                ))
            }
        }
    }
    Ok(dir)
}

/// Firmware images: every entry of the firmware directory, as `DIR/NAME`, in directory order.
pub fn firmwares(host: &dyn Host, dir: &Path) -> Result<Vec<String>, DriverError> {
    let shown = dir.display().to_string();
    let base = shown.trim_end_matches('/');
    Ok(host.list_dir(dir)?.unwrap_or_default().into_iter().map(|n| format!("{base}/{n}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys() {
        let o = Path::new("bhyve.conf");
        assert_eq!(firmware_dir(None, o).unwrap(), PathBuf::from(DEFAULT_FIRMWARE_DIR));
        assert_eq!(firmware_dir(Some("# c\nfirmware_dir = \"/foo\"\n"), o).unwrap(), PathBuf::from("/foo"));
        assert_eq!(firmware_dir(Some("other = 1\n"), o).unwrap(), PathBuf::from(DEFAULT_FIRMWARE_DIR));
        let e = firmware_dir(Some("firmware_dir = /foo\n"), o).unwrap_err();
        assert!(e.to_string().contains("bhyve.conf:1: expected a non-empty double-quoted path"), "{e}");
        let e = firmware_dir(Some("junk\n"), o).unwrap_err();
        assert!(e.to_string().contains("bhyve.conf:1"), "{e}");
    }
}
