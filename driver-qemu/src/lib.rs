//! driver-qemu: being written. Placeholder so the workspace builds.

pub mod cache;
pub mod derive;
pub mod firmware;
pub mod host;
pub mod plan;
pub mod probe;
pub mod probe_data;
pub mod process;
pub mod qmp;

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

/// The qemu driver.
#[derive(Debug, Default)]
pub struct QemuDriver {}

impl QemuDriver {
    pub fn new() -> Self {
        QemuDriver {}
    }
}

impl DomainCapsDriver for QemuDriver {
    fn name(&self) -> &str {
        "qemu"
    }
    fn availability(&self) -> Availability {
        Availability::Unavailable { reason: "driver not written yet".into() }
    }
    fn domain_capabilities(&self, _query: &Query) -> Result<DomainCapabilities, DriverError> {
        Err(DriverError::Unavailable { driver: "qemu".into(), reason: "driver not written yet".into() })
    }
}
