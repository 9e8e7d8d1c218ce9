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

/// The host's cpu_map, `None` (logged) when the directory is absent or unreadable: the CPU
/// derivation then answers from QEMU alone.
pub fn read_cpu_map() -> Option<CpuMap> {
    let dir = cpu_map_dir();
    if !dir.join("index.xml").exists() {
        tracing::debug!(dir = %dir.display(), "no libvirt cpu_map; CPU models are derived from QEMU alone");
        return None;
    }
    match read_cpu_map_from(&dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "libvirt cpu_map unusable; CPU models are derived from QEMU alone");
            None
        }
    }
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
