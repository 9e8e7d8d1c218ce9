//! libvirt's XML form of the model: a writer that reproduces libvirt's formatting byte for
//! byte ([`to_xml`]) and a strict reader on quick-xml ([`from_xml`]).
//!
//! The writer follows the layout libvirt's domain capabilities formatter produces: two-space
//! indentation, single-quoted attributes in libvirt's order, `<x/>` for an element without
//! children, `<cpu>`, `<devices>` and `<features>` always written open/close, the five XML
//! special characters escaped everywhere and a trailing newline.
//!
//! The reader accepts what libvirt writes (and the element order variations the schema's
//! `interleave` allows) and rejects everything else with a [`ParseError`] naming the line,
//! the element path and the problem: malformed or truncated XML, unknown elements or
//! attributes, wrong values, duplicates, DTDs and entity declarations, oversized input.

mod read;
mod write;

pub use read::{MAX_ATTRIBUTES, MAX_ELEMENTS, MAX_INPUT_BYTES};

use crate::model::DomainCapabilities;

/// Why a document could not be read: the line, the element path and what was wrong.
///
/// Shown as `line 7: /domainCapabilities/devices/disk: invalid value ...`; the line or the
/// path is left out when unknown (line 0, empty path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location(*.line, .path))]
pub struct ParseError {
    /// 1-based line number (0 when unknown).
    pub line: usize,
    /// Element path such as `/domainCapabilities/devices/disk` (empty for JSON).
    pub path: String,
    pub message: String,
}

/// `line N: PATH: ` with the unknown parts left out.
fn location(line: usize, path: &str) -> String {
    let mut s = String::new();
    if line > 0 {
        s.push_str(&format!("line {line}: "));
    }
    if !path.is_empty() {
        s.push_str(path);
        s.push_str(": ");
    }
    s
}

impl ParseError {
    pub(crate) fn json(line: usize, message: String) -> Self {
        ParseError { line, path: String::new(), message }
    }
}

/// Format a document exactly as libvirt does (two-space indent, single quotes, trailing newline).
pub fn to_xml(caps: &DomainCapabilities) -> String {
    write::to_xml(caps)
}

/// Read a document. Inputs larger than [`MAX_INPUT_BYTES`] are rejected before parsing.
pub fn from_xml(input: &str) -> Result<DomainCapabilities, ParseError> {
    read::from_xml(input)
}
