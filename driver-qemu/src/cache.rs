//! The on-disk probe cache (issue 4). PLACEHOLDER: probes every time. The signature is the
//! contract with `lib.rs`.

use std::path::{Path, PathBuf};

use capsd_core::DriverError;

use crate::probe_data::ProbeData;

/// Whether an answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

/// Probe results per emulator binary, stored under a directory.
#[derive(Debug, Clone)]
pub struct ProbeCache {
    dir: PathBuf,
}

impl ProbeCache {
    pub fn new(dir: PathBuf) -> Self {
        ProbeCache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached probe of `binary` when still valid, else the result of `probe` (stored).
    pub fn get_or_probe(
        &self,
        binary: &Path,
        probe: impl FnOnce() -> Result<ProbeData, DriverError>,
    ) -> Result<(ProbeData, CacheOutcome), DriverError> {
        let _ = binary;
        probe().map(|d| (d, CacheOutcome::Miss))
    }
}
