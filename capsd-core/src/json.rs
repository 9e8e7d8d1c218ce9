//! The JSON form of the model (serde). It carries exactly what the XML carries, so
//! XML -> JSON -> XML is byte-identical.

use crate::model::DomainCapabilities;
use crate::xml::ParseError;

/// Pretty-printed JSON with a trailing newline.
pub fn to_json(caps: &DomainCapabilities) -> String {
    let mut s = serde_json::to_string_pretty(caps).expect("the model always serializes");
    s.push('\n');
    s
}

/// Read the JSON form. Unknown fields are rejected so that nothing is silently dropped.
pub fn from_json(input: &str) -> Result<DomainCapabilities, ParseError> {
    serde_json::from_str(input).map_err(|e| ParseError::json(e.line(), e.to_string()))
}
