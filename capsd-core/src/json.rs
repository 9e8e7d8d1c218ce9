//! The JSON form of the model (serde). It carries exactly what the XML carries, so
//! XML -> JSON -> XML is byte-identical.
//!
//! Field names follow the XML names in camelCase; optional elements are left out when
//! absent. Unknown fields are rejected (every model struct is `deny_unknown_fields`) so that
//! nothing is silently dropped, and inputs larger than [`crate::xml::MAX_INPUT_BYTES`] are
//! refused before parsing, as for XML. The two rules of the XML reader that the model's types
//! cannot express are checked too, so that every document read here can be written as XML
//! that reads back: enum names are unique within an element, and a custom model's blockers
//! name that model.

use crate::model::{DomainCapabilities, Enum};
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
    let caps: DomainCapabilities =
        serde_json::from_str(input).map_err(|e| ParseError::json(e.line(), e.to_string()))?;
    check(&caps).map_err(|m| ParseError::json(0, m))?;
    Ok(caps)
}

/// The XML reader's rules the types leave open; the error names the element and the value.
fn check(caps: &DomainCapabilities) -> Result<(), String> {
    let mut lists: Vec<(String, &[Enum])> = Vec::new();
    if let Some(os) = &caps.os {
        lists.push(("os".into(), &os.enums));
        if let Some(f) = &os.firmware_features {
            lists.push(("os.firmwareFeatures".into(), &f.enums));
        }
        if let Some(l) = &os.loader {
            lists.push(("os.loader".into(), &l.enums));
        }
    }
    if let Some(cpu) = &caps.cpu {
        if let Some(m) = &cpu.host_passthrough {
            lists.push(("cpu.hostPassthrough".into(), &m.enums));
        }
        if let Some(m) = &cpu.maximum {
            lists.push(("cpu.maximum".into(), &m.enums));
        }
        for m in cpu.custom.iter().flat_map(|c| &c.models) {
            if let Some(b) = m.blockers.as_ref().filter(|b| b.model != m.name) {
                return Err(format!("cpu.custom.models: the blockers of model {:?} name model {:?}", m.name, b.model));
            }
        }
    }
    if let Some(m) = &caps.memory_backing {
        lists.push(("memoryBacking".into(), &m.enums));
    }
    if let Some(d) = &caps.devices {
        lists.extend(d.iter().map(|(n, e)| (format!("devices.{n}"), e.enums.as_slice())));
    }
    if let Some(f) = &caps.features {
        if let Some(g) = &f.gic {
            lists.push(("features.gic".into(), &g.enums));
        }
        if let Some(h) = &f.hyperv {
            lists.push(("features.hyperv".into(), &h.enums));
        }
        if let Some(l) = &f.launch_security {
            lists.push(("features.launchSecurity".into(), &l.enums));
        }
    }
    for (at, enums) in lists {
        let mut seen = std::collections::HashSet::new();
        if let Some(e) = enums.iter().find(|e| !seen.insert(e.name.as_str())) {
            return Err(format!("{at}: duplicate enum {:?}", e.name));
        }
    }
    Ok(())
}
