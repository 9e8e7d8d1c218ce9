//! capsd-core: the neutral model of libvirt's `<domainCapabilities>` document, its byte-exact
//! XML form (libvirt's formatting), a lossless JSON form, and the [`DomainCapsDriver`] trait
//! every hypervisor backend implements.
//!
//! Architecture invariant: this crate knows nothing about QMP, Xen, LXC or any other
//! backend. Drivers convert their native data into [`model`] types.

pub mod arch;
pub mod driver;
pub mod evidence;
pub mod json;
pub mod machine;
pub mod model;
pub mod xml;

pub use driver::{Availability, DomainCapsDriver, DriverError, ErrorKind, Query};
pub use model::*;

/// Error from reading a document in either form.
pub use xml::ParseError;

/// Read a document in either form: JSON when the first non-blank character is `{`, XML
/// otherwise.
pub fn parse_any(input: &str) -> Result<DomainCapabilities, ParseError> {
    if input.trim_start().starts_with('{') {
        json::from_json(input)
    } else {
        xml::from_xml(input)
    }
}
