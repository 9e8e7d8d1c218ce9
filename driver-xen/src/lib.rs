//! driver-xen: being written. Placeholder so the workspace builds.

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

/// The xen driver.
#[derive(Debug, Default)]
pub struct XenDriver {}

impl XenDriver {
    pub fn new() -> Self {
        XenDriver {}
    }
}

impl DomainCapsDriver for XenDriver {
    fn name(&self) -> &str {
        "xen"
    }
    fn availability(&self) -> Availability {
        Availability::Unavailable { reason: "driver not written yet".into() }
    }
    fn domain_capabilities(&self, _query: &Query) -> Result<DomainCapabilities, DriverError> {
        Err(DriverError::Unavailable { driver: "xen".into(), reason: "driver not written yet".into() })
    }
}
