//! driver-test: being written. Placeholder so the workspace builds.

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

/// The test driver.
#[derive(Debug, Default)]
pub struct TestDriver {}

impl TestDriver {
    pub fn new() -> Self {
        TestDriver {}
    }
}

impl DomainCapsDriver for TestDriver {
    fn name(&self) -> &str {
        "test"
    }
    fn availability(&self) -> Availability {
        Availability::Unavailable { reason: "driver not written yet".into() }
    }
    fn domain_capabilities(&self, _query: &Query) -> Result<DomainCapabilities, DriverError> {
        Err(DriverError::Unavailable { driver: "test".into(), reason: "driver not written yet".into() })
    }
}

impl TestDriver {
    pub fn builtin() -> Self {
        TestDriver {}
    }
    pub fn from_dir(_dir: &std::path::Path) -> Result<Self, DriverError> {
        Ok(TestDriver {})
    }
}
