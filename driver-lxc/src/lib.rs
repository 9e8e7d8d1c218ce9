//! driver-lxc: being written. Placeholder so the workspace builds.

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

/// The lxc driver.
#[derive(Debug, Default)]
pub struct LxcDriver {}

impl LxcDriver {
    pub fn new() -> Self {
        LxcDriver {}
    }
}

impl DomainCapsDriver for LxcDriver {
    fn name(&self) -> &str {
        "lxc"
    }
    fn availability(&self) -> Availability {
        Availability::Unavailable { reason: "driver not written yet".into() }
    }
    fn domain_capabilities(&self, _query: &Query) -> Result<DomainCapabilities, DriverError> {
        Err(DriverError::Unavailable { driver: "lxc".into(), reason: "driver not written yet".into() })
    }
}
