//! Test plugin `panicky`: says it is available, then panics on every query. capsd must report
//! the panic as an error of this driver and keep running.

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

#[derive(Debug)]
struct Panicky;

impl DomainCapsDriver for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        panic!("deliberate test panic for query {query}");
    }
}

capsd_plugin::export_driver!(|| Panicky);
