//! Host facts that decide parts of the document and that QEMU cannot tell: read from the
//! real host by [`HostFacts::read`] (probe infrastructure), stored in recordings, replayed
//! in tests. Each field documents where it comes from and which element libvirt 9.0 decides
//! with it. Derivation reads only these fields, never the host.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::firmware::FirmwareDescriptor;

/// Facts about the host, as read at probe time. Every field is `Option`/empty/`false` when
/// the fact could not be established: derivation then omits what depends on it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// Host architecture (`uname -m`, normalized to libvirt's arch names: `i686`, `x86_64`,
    /// `aarch64`, `armv7l`, `ppc64`, `ppc64le`, `s390x`, ...).
    pub host_arch: String,
    /// `/dev/kvm` exists and can be opened read-write by the probing user.
    pub kvm_usable: bool,
    /// `KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)` on `/dev/kvm` (falling back to
    /// `KVM_CAP_NR_VCPUS`, then 4 as the kernel documents): libvirt caps `<vcpu max>` of a
    /// `kvm` domain with it. `None` when `/dev/kvm` cannot be opened.
    #[serde(default)]
    pub kvm_max_vcpus: Option<u32>,
    /// Firmware descriptors that apply (after override/masking), in preference order
    /// (`<os><loader>` values, `<enum name='firmware'>`).
    #[serde(default)]
    pub firmware: Vec<FirmwareDescriptor>,
    /// Device assignment with VFIO: decides `<hostdev><enum name='pciBackend'>`.
    #[serde(default)]
    pub vfio: VfioFacts,
    /// AMD SEV on the host (kernel side; QEMU's `query-sev-capabilities` says the rest).
    #[serde(default)]
    pub sev: SevFacts,
    /// s390 protected virtualization (secure execution) host support (`<s390-pv>`).
    #[serde(default)]
    pub s390_pv: S390PvFacts,
    /// Intel SGX device nodes (QEMU's `query-sgx-capabilities` says the rest).
    #[serde(default)]
    pub sgx: SgxFacts,
    /// The swtpm emulator, used by the TPM `emulator` backend (`<tpm>` backendModel /
    /// backendVersion). `None` when `swtpm` is not in `PATH`.
    #[serde(default)]
    pub swtpm: Option<SwtpmFacts>,
    /// libvirt's CPU model definitions (`/usr/share/libvirt/cpu_map`, or
    /// `$CAPSD_CPU_MAP_DIR`), parsed: host-model decoding and the custom model list/vendors
    /// use them when present (see `crate::cpu`). `None` when absent: QEMU alone then decides.
    /// LGPL data of the host: recordings committed to the repository must not carry it.
    #[serde(default)]
    pub cpu_map: Option<crate::cpu::cpumap::CpuMap>,
    /// `/sys/module/kvm_intel/parameters/tdx` is `Y` (KVM runs TDX guests).
    #[serde(default)]
    pub tdx: bool,
    /// A `qemu-rdp` program is in `PATH` (libvirt's RDP helper for the D-Bus display).
    #[serde(default)]
    pub qemu_rdp: bool,
    /// Why libvirt's cpu_map is there but could not be used (unreadable, or a format this
    /// capsd does not know). `cpu_map` is `None` then, and the CPU derivation omits what
    /// depends on the map instead of answering from QEMU alone (libvirt itself would
    /// answer from that map, so a QEMU-only answer would silently differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_map_error: Option<String>,
    /// The host CPU's physical address bits (`address sizes: N bits physical` in
    /// `/proc/cpuinfo`), `None` when not stated there: libvirt reports them as the
    /// host-model `<maxphysaddr mode='passthrough' limit='N'/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phys_addr_bits: Option<u32>,
    /// A ppc64 host's processor version register (`pvr` in `/proc/cpuinfo`): libvirt names
    /// the host CPU after the model of its ppc64 cpu_map that covers it, and prints that
    /// model (and its vendor) as the host-model CPU. `None` on other hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pvr: Option<u32>,
    /// The host CPU's model as libvirt's CPU driver names it, stated by a facts file instead
    /// of a [`cpu_pvr`](Self::cpu_pvr) (libvirt's test harness fakes the host CPU this way:
    /// a model without a vendor; `--host-facts` supplies it for replays). Never read from
    /// the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu_model: Option<String>,
    /// The images of [`DEFAULT_LOADERS`] that exist on the host, in that order: libvirt 9.0
    /// lists them as `<loader>` values when no firmware descriptor matches the arch and
    /// machine (its built-in loader list, used when `qemu.conf` sets no `nvram`).
    #[serde(default)]
    pub default_loaders_present: Vec<String>,
}

/// Where the host facts are read: the gathering below reads these, and derivation cites
/// them as evidence (`capsd explain`), so both name the same file.
pub mod source {
    pub const IOMMU_GROUPS: &str = "/sys/kernel/iommu_groups";
    pub const VFIO_NOIOMMU: &str = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode";
    pub const DEV_VFIO: &str = "/dev/vfio/vfio";
    pub const DEV_IOMMU: &str = "/dev/iommu";
    pub const KVM_AMD_SEV: &str = "/sys/module/kvm_amd/parameters/sev";
    pub const DEV_SEV: &str = "/dev/sev";
    pub const SEV_CPUID: &str = "CPUID 0x8000001F (ECX, EDX)";
    pub const PROT_VIRT_HOST: &str = "/sys/firmware/uv/prot_virt_host";
    pub const KVM_PROT_VIRT: &str = "/sys/module/kvm/parameters/prot_virt";
    pub const KVM_INTEL_TDX: &str = "/sys/module/kvm_intel/parameters/tdx";
    pub const KVM_MAX_VCPUS: &str = "/dev/kvm KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)";
    pub const UNAME: &str = "uname -m";
    pub const CPUINFO: &str = "/proc/cpuinfo";
}

/// libvirt's built-in firmware image list (the code halves of its default
/// `loader:nvram` pairs), in its order.
pub const DEFAULT_LOADERS: [&str; 4] = [
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/OVMF/OVMF_CODE.secboot.fd",
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/AAVMF/AAVMF32_CODE.fd",
];

/// VFIO facts; libvirt supports VFIO passthrough when the host has an IOMMU and
/// `/dev/vfio/vfio` exists.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VfioFacts {
    /// `/sys/kernel/iommu_groups` has at least one entry.
    pub iommu_groups: bool,
    /// `/sys/module/vfio/parameters/enable_unsafe_noiommu_mode` is `Y`.
    pub noiommu_mode: bool,
    /// `/dev/vfio/vfio` exists.
    pub dev_vfio: bool,
    /// `/sys/module/vfio` exists (module loaded or built in).
    pub module: bool,
    /// `/dev/iommu` exists (the kernel's IOMMUFD interface).
    #[serde(default)]
    pub iommufd_device: bool,
}

impl VfioFacts {
    /// libvirt's condition for offering the `vfio` PCI backend: IOMMU (groups, or the unsafe
    /// no-IOMMU mode) and `/dev/vfio/vfio`.
    pub fn passthrough_supported(&self) -> bool {
        (self.iommu_groups || self.noiommu_mode) && self.dev_vfio
    }
}

/// AMD SEV host facts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SevFacts {
    /// `/sys/module/kvm_amd/parameters/sev` is `1` or `Y`. `None` when the file is absent.
    pub kvm_amd_sev: Option<bool>,
    /// `/dev/sev` exists.
    pub dev_sev: bool,
    /// CPUID leaf 0x8000001F: ECX (highest SEV ASID) and EDX (lowest ASID for plain SEV
    /// guests). libvirt 9.0 prints `<maxGuests>` = ECX - EDX + 1 and `<maxESGuests>` =
    /// EDX - 1 from them (0 and 0 when either is 0). `None` off x86 or when the leaf is absent.
    #[serde(default)]
    pub cpuid_asids: Option<(u32, u32)>,
    /// `/sys/module/kvm_amd/parameters/sev_snp` is `Y` (KVM runs SEV-SNP guests). Recorded
    /// as a host fact; libvirt's document does not depend on it (`sev-snp` in
    /// `<launchSecurity>` is QEMU's answer, see `derive::features::launch_security`).
    #[serde(default)]
    pub snp: bool,
}

/// CPUID 0x8000001F (ECX, EDX), when the processor has that leaf.
#[cfg(target_arch = "x86_64")]
fn sev_cpuid_asids() -> Option<(u32, u32)> {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 processor and only reads identification
    // registers; leaves above the maximum extended leaf are not queried.
    let leaf = unsafe { (__cpuid(0x8000_0000).eax >= 0x8000_001F).then(|| __cpuid(0x8000_001F)) };
    leaf.map(|r| (r.ecx, r.edx))
}

#[cfg(not(target_arch = "x86_64"))]
fn sev_cpuid_asids() -> Option<(u32, u32)> {
    None
}

impl SevFacts {
    pub fn enabled(&self) -> bool {
        self.kvm_amd_sev == Some(true) && self.dev_sev
    }
}

/// s390 protected virtualization host facts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct S390PvFacts {
    /// `/sys/firmware/uv/prot_virt_host` is `1`. `None` when the file is absent.
    pub prot_virt_host: Option<bool>,
    /// `/sys/module/kvm/parameters/prot_virt` is `1` or `Y`. `None` when absent.
    pub kvm_prot_virt: Option<bool>,
}

impl S390PvFacts {
    pub fn enabled(&self) -> bool {
        self.prot_virt_host == Some(true) && self.kvm_prot_virt == Some(true)
    }
}

/// Intel SGX host facts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SgxFacts {
    /// `/dev/sgx_enclave` exists.
    pub dev_sgx_enclave: bool,
    /// `/dev/sgx_provision` exists.
    pub dev_sgx_provision: bool,
}

/// The swtpm binaries and what they say they support.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SwtpmFacts {
    /// `swtpm` found in `PATH`.
    pub swtpm: String,
    /// `swtpm_setup` found in `PATH`.
    #[serde(default)]
    pub swtpm_setup: Option<String>,
    /// `swtpm_ioctl` found in `PATH`.
    #[serde(default)]
    pub swtpm_ioctl: Option<String>,
    /// `features` of `swtpm socket --print-capabilities` (`tpm-1.2`, `tpm-2.0`, ...).
    #[serde(default)]
    pub swtpm_features: Vec<String>,
    /// `features` of `swtpm_setup --print-capabilities`.
    #[serde(default)]
    pub swtpm_setup_features: Vec<String>,
}

impl HostFacts {
    /// Read every fact from the running host. Never fails: a fact that cannot be read is
    /// left at its "unknown" value (and logged).
    pub fn read() -> HostFacts {
        let firmware = match crate::firmware::read_descriptors(&crate::firmware::search_dirs()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading firmware descriptors");
                Vec::new()
            }
        };
        let (cpu_map, cpu_map_error) = match crate::cpu::host::read_cpu_map() {
            Ok(m) => (m, None),
            Err(e) => (None, Some(e)),
        };
        let host_arch = host_arch();
        let cpuinfo = Path::new("/proc/cpuinfo");
        HostFacts {
            phys_addr_bits: crate::cpu::host::phys_addr_bits_on(&host_arch, cpuinfo),
            cpu_pvr: crate::cpu::host::ppc64_pvr(&host_arch, cpuinfo),
            host_cpu_model: None,
            host_arch,
            kvm_usable: kvm_usable(),
            kvm_max_vcpus: kvm_max_vcpus(),
            firmware,
            vfio: VfioFacts {
                iommu_groups: dir_has_entries(Path::new(source::IOMMU_GROUPS)),
                noiommu_mode: read_flag(source::VFIO_NOIOMMU) == Some(true),
                dev_vfio: Path::new(source::DEV_VFIO).exists(),
                module: Path::new("/sys/module/vfio").exists(),
                iommufd_device: Path::new(source::DEV_IOMMU).exists(),
            },
            sev: SevFacts {
                kvm_amd_sev: read_flag(source::KVM_AMD_SEV),
                dev_sev: Path::new(source::DEV_SEV).exists(),
                cpuid_asids: sev_cpuid_asids(),
                snp: read_flag("/sys/module/kvm_amd/parameters/sev_snp") == Some(true),
            },
            s390_pv: S390PvFacts {
                prot_virt_host: read_flag(source::PROT_VIRT_HOST),
                kvm_prot_virt: read_flag(source::KVM_PROT_VIRT),
            },
            sgx: SgxFacts {
                dev_sgx_enclave: Path::new("/dev/sgx_enclave").exists(),
                dev_sgx_provision: Path::new("/dev/sgx_provision").exists(),
            },
            swtpm: swtpm(),
            cpu_map,
            cpu_map_error,
            tdx: read_flag(source::KVM_INTEL_TDX) == Some(true),
            qemu_rdp: find_in_path("qemu-rdp").is_some(),
            default_loaders_present: DEFAULT_LOADERS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// `uname -m`, in libvirt's names (`i386`..`i686` become `i686`, `arm*` little-endian stay
/// as reported, `amd64` becomes `x86_64`).
pub fn host_arch() -> String {
    let machine = nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
    normalize_arch(&machine)
}

/// Map a kernel machine name to libvirt's arch name.
pub fn normalize_arch(machine: &str) -> String {
    capsd_core::arch::from_uname_machine(machine)
}

/// Whether `/dev/kvm` can be opened read-write by this process.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The largest vCPU count KVM accepts for one VM, as libvirt asks it.
pub fn kvm_max_vcpus() -> Option<u32> {
    use std::os::fd::AsRawFd;
    // ioctl numbers from <linux/kvm.h>: KVM_CHECK_EXTENSION = _IO(KVMIO=0xAE, 0x03).
    const KVM_CHECK_EXTENSION: u64 = (0xAE << 8) | 0x03;
    const KVM_CAP_NR_VCPUS: i32 = 9;
    const KVM_CAP_MAX_VCPUS: i32 = 66;
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").ok()?;
    let check = |cap: i32| -> i32 {
        // SAFETY: KVM_CHECK_EXTENSION takes an integer argument by value and only reads it;
        // the fd is a valid open /dev/kvm descriptor for the duration of the call.
        unsafe { nix::libc::ioctl(f.as_raw_fd(), KVM_CHECK_EXTENSION as _, cap) }
    };
    let max = check(KVM_CAP_MAX_VCPUS);
    if max > 0 {
        return Some(max as u32);
    }
    let nr = check(KVM_CAP_NR_VCPUS);
    if nr > 0 {
        return Some(nr as u32);
    }
    Some(4)
}

fn dir_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// A sysfs boolean: `1`/`Y`/`y` true, `0`/`N`/`n` false, anything else/absent `None`.
fn read_flag(path: &str) -> Option<bool> {
    let s = std::fs::read_to_string(path).ok()?;
    match s.trim() {
        "1" | "Y" | "y" => Some(true),
        "0" | "N" | "n" => Some(false),
        _ => None,
    }
}

/// The first executable called `name` in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

fn swtpm() -> Option<SwtpmFacts> {
    let swtpm = find_in_path("swtpm")?;
    let setup = find_in_path("swtpm_setup");
    let ioctl = find_in_path("swtpm_ioctl");
    let swtpm_features = print_capabilities(&swtpm, &["socket", "--print-capabilities"]);
    let swtpm_setup_features =
        setup.as_deref().map(|s| print_capabilities(s, &["--print-capabilities"])).unwrap_or_default();
    Some(SwtpmFacts {
        swtpm: swtpm.display().to_string(),
        swtpm_setup: setup.map(|p| p.display().to_string()),
        swtpm_ioctl: ioctl.map(|p| p.display().to_string()),
        swtpm_features,
        swtpm_setup_features,
    })
}

/// The `features` list of a swtpm tool's `--print-capabilities` JSON (empty on failure).
/// Longest wait for `swtpm ... --print-capabilities` (it answers in milliseconds).
const PRINT_CAPABILITIES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn print_capabilities(bin: &Path, args: &[&str]) -> Vec<String> {
    print_capabilities_within(bin, args, PRINT_CAPABILITIES_TIMEOUT)
}

/// The `features` a program prints with `args`, or none when it fails, prints something
/// else or takes longer than `timeout` (then it is killed: a hung helper must not hold the
/// probe, and every query waiting for it, forever).
fn print_capabilities_within(bin: &Path, args: &[&str], timeout: std::time::Duration) -> Vec<String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let spawned = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(bin = %bin.display(), error = %e, "cannot run");
            return Vec::new();
        }
    };
    // Read on a thread, so that a full pipe cannot stall the child while we wait for it.
    let reader = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = o.read_to_end(&mut buf);
            buf
        })
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        // The group too: a wrapper script's children hold the pipe open.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        tracing::warn!(bin = %bin.display(), ?timeout, "--print-capabilities did not finish in time; killed");
        return Vec::new();
    };
    let out = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    if !status.success() {
        tracing::warn!(bin = %bin.display(), %status, "--print-capabilities failed");
        return Vec::new();
    }
    parse_features(&out)
}

fn parse_features(json: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("features").and_then(|f| f.as_array()).cloned())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_capabilities_helper_is_killed_in_time() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let good = script("swtpm-good", "#!/bin/sh\necho '{\"type\": \"swtpm\", \"features\": [\"tpm-2.0\"]}'\n");
        let hung = script("swtpm-hung", "#!/bin/sh\nsleep 1000 &\nexec sleep 1000\n");
        // The good one answers at once; its limit only needs to survive a loaded machine.
        let generous = std::time::Duration::from_secs(60);
        assert_eq!(print_capabilities_within(&good, &["--print-capabilities"], generous), ["tpm-2.0"]);
        // The hung one and its background child hold the pipe for 1000 s: the limit ends it.
        let t0 = std::time::Instant::now();
        let t = std::time::Duration::from_millis(300);
        assert!(print_capabilities_within(&hung, &["--print-capabilities"], t).is_empty());
        assert!(t0.elapsed() < std::time::Duration::from_secs(120), "took {:?}", t0.elapsed());
    }

    #[test]
    fn arch_names() {
        assert_eq!(normalize_arch("i586"), "i686");
        assert_eq!(normalize_arch("x86_64"), "x86_64");
        assert_eq!(normalize_arch("arm64"), "aarch64");
    }

    #[test]
    fn swtpm_features_parse() {
        let f =
            parse_features(br#"{ "type": "swtpm_setup", "features": [ "tpm-1.2", "tpm-2.0" ], "version": "0.7.1" }"#);
        assert_eq!(f, ["tpm-1.2", "tpm-2.0"]);
        assert!(parse_features(b"garbage").is_empty());
    }

    #[test]
    fn vfio_condition() {
        let mut v = VfioFacts { iommu_groups: true, dev_vfio: false, ..Default::default() };
        assert!(!v.passthrough_supported());
        v.dev_vfio = true;
        assert!(v.passthrough_supported());
        v.iommu_groups = false;
        assert!(!v.passthrough_supported());
        v.noiommu_mode = true;
        assert!(v.passthrough_supported());
    }

    #[test]
    fn reads_this_host() {
        let h = HostFacts::read();
        assert!(!h.host_arch.is_empty());
        // Round trip through the recording format.
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HostFacts>(&j).unwrap(), h);
    }
}
