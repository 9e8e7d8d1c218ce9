//! Reading libvirt's cpu_map directory from the host at probe time (the probe stores the
//! result in `HostFacts::cpu_map`). The directory is `$CAPSD_CPU_MAP_DIR` when set, else
//! `/usr/share/libvirt/cpu_map` (where libvirt's packages install it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cpumap::{self, CpuMap, CpuMapError};

/// Environment variable naming another cpu_map directory.
pub const CPU_MAP_DIR_ENV: &str = "CAPSD_CPU_MAP_DIR";

/// The cpu_map directory to read.
pub fn cpu_map_dir() -> PathBuf {
    std::env::var_os(CPU_MAP_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/share/libvirt/cpu_map"))
}

/// Error reading the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpuMapReadError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] CpuMapError),
}

/// Read and parse the cpu_map in `dir` (its `index.xml` and the x86/ppc64 files it includes).
pub fn read_cpu_map_from(dir: &Path) -> Result<CpuMap, CpuMapReadError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CpuMapReadError::Io { path, source })
    };
    let index = read("index.xml")?;
    let mut files = BTreeMap::new();
    for f in cpumap::included_files(&index)? {
        files.insert(f.clone(), read(&f)?);
    }
    files.insert("index.xml".to_owned(), index);
    Ok(cpumap::parse(&dir.display().to_string(), &files)?)
}

/// The host's cpu_map: `Ok(None)` when there is none (no `cpu_map` directory: libvirt is
/// not installed, and the CPU derivation answers from QEMU alone), `Err` (logged) when the
/// directory is there but its map cannot be read or is in a format this capsd does not
/// know: the CPU derivation then omits what depends on the map.
pub fn read_cpu_map() -> Result<Option<CpuMap>, String> {
    read_cpu_map_in(&cpu_map_dir())
}

/// [`read_cpu_map`] for the directory `dir`.
pub fn read_cpu_map_in(dir: &Path) -> Result<Option<CpuMap>, String> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "no libvirt cpu_map; CPU models are derived from QEMU alone");
            return Ok(None);
        }
        _ => {}
    }
    read_cpu_map_from(dir).map(Some).map_err(|e| {
        tracing::warn!(error = %e, "libvirt cpu_map unusable; the CPU modes that depend on it are omitted");
        e.to_string()
    })
}

/// The physical address bits `/proc/cpuinfo` (at `path`) states for the first processor
/// (`address sizes : 48 bits physical, 48 bits virtual`), `None` when it states none.
pub fn phys_addr_bits(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_phys_addr_bits(&text)
}

/// [`phys_addr_bits`] on the hosts where libvirt reads it (x86, SuperH and LoongArch hosts;
/// elsewhere it takes the size as unknown, and so do we).
pub fn phys_addr_bits_on(host_arch: &str, path: &Path) -> Option<u32> {
    let reads = matches!(host_arch, "i686" | "x86_64" | "sh4" | "sh4eb" | "loongarch64");
    reads.then(|| phys_addr_bits(path)).flatten()
}

/// A ppc64 host's processor version register, from the `revision` line of `/proc/cpuinfo`
/// (at `path`: `revision : 2.2 (pvr 004e 1202)`); `None` on other hosts or when it is not
/// stated. libvirt reads the register itself (`mfpvr`); the kernel prints the same value.
pub fn ppc64_pvr(host_arch: &str, path: &Path) -> Option<u32> {
    if !matches!(host_arch, "ppc64" | "ppc64le") {
        return None;
    }
    parse_pvr(&std::fs::read_to_string(path).ok()?)
}

fn parse_pvr(cpuinfo: &str) -> Option<u32> {
    let rest = cpuinfo.lines().find_map(|l| l.split_once("(pvr ").map(|(_, r)| r))?;
    let hex: String = rest.split(')').next()?.split_whitespace().collect();
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    u32::from_str_radix(&hex, 16).ok()
}

fn parse_phys_addr_bits(cpuinfo: &str) -> Option<u32> {
    let line = cpuinfo.lines().find(|l| l.get(..13).is_some_and(|k| k.eq_ignore_ascii_case("address sizes")))?;
    let value = line.split_once(':')?.1.trim_start();
    let digits = value.find(|c: char| !c.is_ascii_digit()).map_or(value, |end| &value[..end]);
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let e = read_cpu_map_from(Path::new("/nonexistent/cpu_map")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cpu_map/index.xml"), "{e}");
    }

    #[test]
    fn reads_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("index.xml"),
            "<cpus><arch name='ppc64'><include filename='p.xml'/></arch></cpus>",
        )
        .unwrap();
        std::fs::write(d.path().join("p.xml"), "<cpus><model name='POWER9'><vendor name='IBM'/></model></cpus>")
            .unwrap();
        let m = read_cpu_map_from(d.path()).unwrap();
        assert_eq!(m.ppc64.unwrap().models[0].name, "POWER9");
        assert!(m.x86.is_none());
    }

    #[test]
    fn absent_directory_is_no_map_and_unreadable_one_is_an_error() {
        assert_eq!(read_cpu_map_in(Path::new("/nonexistent/cpu_map")), Ok(None));
        let d = tempfile::tempdir().unwrap();
        // index.xml that cannot be read, even by root.
        std::fs::create_dir(d.path().join("index.xml")).unwrap();
        assert!(read_cpu_map_in(d.path()).unwrap_err().contains("index.xml"));
        // A directory without index.xml is a broken map, not an absent one.
        let d = tempfile::tempdir().unwrap();
        assert!(read_cpu_map_in(d.path()).is_err());
    }

    #[test]
    fn physical_address_bits() {
        let text = "processor\t: 0\naddress sizes\t: 48 bits physical, 48 bits virtual\npower management:\n\n\
                    processor\t: 1\naddress sizes\t: 40 bits physical, 48 bits virtual\n";
        assert_eq!(parse_phys_addr_bits(text), Some(48));
        assert_eq!(parse_phys_addr_bits("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        assert_eq!(parse_phys_addr_bits("address sizes\t: many\n"), None);
    }

    #[test]
    fn ppc64_processor_version() {
        let text = "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nclock\t\t: 2200.000000MHz\n\
                    revision\t: 2.2 (pvr 004e 1202)\n\nprocessor\t: 1\nrevision\t: 2.2 (pvr 004e 1202)\n";
        assert_eq!(parse_pvr(text), Some(0x004e_1202));
        assert_eq!(parse_pvr("revision\t: 2.2 (pvr zz)\n"), None);
        assert_eq!(parse_pvr("processor\t: 0\n"), None);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cpuinfo");
        std::fs::write(&f, text).unwrap();
        assert_eq!(ppc64_pvr("ppc64le", &f), Some(0x004e_1202));
        assert_eq!(ppc64_pvr("x86_64", &f), None);
        std::fs::write(&f, "address sizes\t: 46 bits physical, 48 bits virtual\n").unwrap();
        assert_eq!(phys_addr_bits_on("x86_64", &f), Some(46));
        assert_eq!(phys_addr_bits_on("aarch64", &f), None);
    }

    /// The real map, where libvirt is installed (CI installs it).
    #[test]
    fn reads_the_installed_map_when_present() {
        let dir = Path::new("/usr/share/libvirt/cpu_map");
        if !dir.exists() {
            return;
        }
        let m = read_cpu_map_from(dir).unwrap();
        let x = m.x86.unwrap();
        assert!(x.models.len() > 10 && x.features.len() > 100);
        assert!(x.vendor_by_string("GenuineIntel").is_some());
    }
}
