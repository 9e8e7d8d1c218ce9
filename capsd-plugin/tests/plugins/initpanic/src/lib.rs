//! Test plugin whose constructor panics: the entry point must return null and capsd must
//! refuse the file as "failed to initialise".

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

#[derive(Debug)]
struct NeverBuilt;

impl NeverBuilt {
    fn new() -> Self {
        panic!("deliberate test panic in the plugin constructor");
    }
}

impl DomainCapsDriver for NeverBuilt {
    fn name(&self) -> &str {
        "initpanic"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn domain_capabilities(&self, _: &Query) -> Result<DomainCapabilities, DriverError> {
        Err(DriverError::probe_failed("initpanic", "never reached"))
    }
}

capsd_plugin::export_driver!(NeverBuilt::new);
