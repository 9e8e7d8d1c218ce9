//! The JSON form of the model (serde). It carries exactly what the XML carries, so
//! XML -> JSON -> XML is byte-identical.
//!
//! Field names follow the XML names in camelCase; optional elements are left out when
//! absent. Unknown fields are rejected (every model struct is `deny_unknown_fields`) so that
//! nothing is silently dropped, and inputs larger than [`crate::xml::MAX_INPUT_BYTES`] are
//! refused before parsing, as for XML.

use crate::model::DomainCapabilities;
use crate::xml::{ParseError, MAX_INPUT_BYTES};

/// Pretty-printed JSON with a trailing newline.
pub fn to_json(caps: &DomainCapabilities) -> String {
    // The model holds only strings, integers, booleans, enums with unit variants, options and
    // vectors, and no map with non-string keys: serializing it cannot fail.
    let mut s = serde_json::to_string_pretty(caps).expect("the model always serializes");
    s.push('\n');
    s
}

/// Read the JSON form. Unknown fields are rejected so that nothing is silently dropped.
pub fn from_json(input: &str) -> Result<DomainCapabilities, ParseError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(ParseError::json(
            0,
            format!(
                "input is {} bytes, larger than the {} MiB limit for a domain capabilities document",
                input.len(),
                MAX_INPUT_BYTES / (1024 * 1024)
            ),
        ));
    }
    serde_json::from_str(input).map_err(|e| ParseError::json(e.line(), e.to_string()))
}
