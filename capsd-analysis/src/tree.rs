//! A small, strict XML element tree on quick-xml, for the documents this crate reads that are
//! not domain capabilities: libvirt domain definitions (`<domain type=...>`), and the generic
//! flattening of capabilities documents into facts ([`crate::diff`](mod@crate::diff)).
//!
//! Strict means: DTDs and entity declarations are refused, only the five predefined entities
//! and character references are expanded, input size, nesting depth, element and attribute
//! counts and the total length of the element paths are bounded (so neither time nor memory
//! grows faster than the input), and every error names the line and the element path where
//! it happened.

use std::collections::HashMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Largest document accepted (libvirt domain definitions are a few KiB).
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most attributes accepted on one element (libvirt's have a few dozen at most); quick-xml's
/// duplicate check costs time quadratic in the count.
pub const MAX_ATTRIBUTES: usize = 256;
/// Most elements accepted in one document (libvirt domain definitions have hundreds).
pub const MAX_ELEMENTS: usize = 100_000;
/// Most bytes of element paths (each element's path repeats its ancestors' names) built for
/// one document: without it, long names nested deep above many children would make a small
/// input take gigabytes.
pub const MAX_PATH_BYTES: usize = 32 * 1024 * 1024;

/// Why an XML document could not be read: the line, the element path and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {path}: {message}")]
pub struct XmlError {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// Element path such as `/domain/devices/disk[2]` (`/` before the root element).
    pub path: String,
    pub message: String,
}

/// One element: name, attributes in document order, child elements, and its own text
/// (concatenated, trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    /// 1-based line of the start tag.
    pub line: usize,
    /// XPath-like location, with a `[n]` index when the parent has several children of this
    /// name (as libxml2's `xmlGetNodePath` writes it): `/domain/devices/disk[2]`.
    pub path: String,
}

impl Element {
    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    /// All children with this name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    /// The path of one of this element's attributes.
    pub fn attr_path(&self, attr: &str) -> String {
        format!("{}/@{attr}", self.path)
    }
}

struct Open {
    el: Element,
    /// Per child name: how many children of that name so far.
    counts: HashMap<String, usize>,
}

/// Parse a whole document into its root element.
pub fn parse(input: &str) -> Result<Element, XmlError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(XmlError {
            line: 0,
            path: "/".into(),
            message: format!(
                "input is {} bytes, larger than the {} MiB limit",
                input.len(),
                MAX_INPUT_BYTES / (1024 * 1024)
            ),
        });
    }
    let mut reader = Reader::from_str(input);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    let mut path_bytes = 0usize;
    // Count one more element and its path against the limits.
    let budget = |el: &Element, elements: &mut usize, path_bytes: &mut usize| -> Result<(), XmlError> {
        *elements += 1;
        *path_bytes += el.path.len();
        let message = if *elements > MAX_ELEMENTS {
            format!("more than {MAX_ELEMENTS} elements in one document")
        } else if *path_bytes > MAX_PATH_BYTES {
            format!("element paths longer than {} MiB in all (long names nested deep)", MAX_PATH_BYTES / (1024 * 1024))
        } else {
            return Ok(());
        };
        Err(XmlError { line: el.line, path: el.path.clone(), message })
    };
    // Line counting: bytes consumed so far and newlines seen in them.
    let mut counted_to = 0usize;
    let mut line = 1usize;
    let line_at = |pos: usize, counted_to: &mut usize, line: &mut usize| {
        let pos = pos.min(input.len());
        if pos > *counted_to {
            *line += input.as_bytes()[*counted_to..pos].iter().filter(|b| **b == b'\n').count();
            *counted_to = pos;
        }
        *line
    };
    loop {
        let start = reader.buffer_position() as usize;
        let here = line_at(start, &mut counted_to, &mut line);
        let cur_path = |stack: &Vec<Open>| stack.last().map(|o| o.el.path.clone()).unwrap_or_else(|| "/".into());
        let ev = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let pos = reader.error_position() as usize;
                let l = line_at(pos, &mut counted_to, &mut line);
                return Err(XmlError { line: l, path: cur_path(&stack), message: format!("malformed XML: {e}") });
            }
        };
        match ev {
            Event::DocType(_) => {
                return Err(XmlError {
                    line: here,
                    path: cur_path(&stack),
                    message: "DTDs and entity declarations are not accepted".into(),
                })
            }
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                return Err(XmlError {
                    line: here,
                    path: "/".into(),
                    message: format!("element <{name}> after the root element"),
                });
            }
            Event::Start(s) => {
                let el = open(&s, &mut stack, here)?;
                budget(&el, &mut elements, &mut path_bytes)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError {
                        line: here,
                        path: el.path,
                        message: format!("elements nested deeper than {MAX_DEPTH} levels"),
                    });
                }
                stack.push(Open { el, counts: HashMap::new() });
            }
            Event::Empty(s) => {
                let el = open(&s, &mut stack, here)?;
                budget(&el, &mut elements, &mut path_bytes)?;
                close(el, &mut stack, &mut root);
            }
            Event::End(_) => {
                let Some(o) = stack.pop() else {
                    return Err(XmlError { line: here, path: "/".into(), message: "unexpected end tag".into() });
                };
                let mut el = o.el;
                el.text = el.text.trim().to_owned();
                close(el, &mut stack, &mut root);
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| XmlError {
                    line: here,
                    path: cur_path(&stack),
                    message: format!(
                        "bad text or entity reference (only the XML predefined entities are accepted): {e}"
                    ),
                })?;
                match stack.last_mut() {
                    Some(o) => o.el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => {
                        return Err(XmlError {
                            line: here,
                            path: "/".into(),
                            message: "text outside the root element".into(),
                        })
                    }
                }
            }
            Event::CData(c) => {
                if let Some(o) = stack.last_mut() {
                    o.el.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
                }
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(o) = stack.last() {
        return Err(XmlError {
            line: line_at(input.len(), &mut counted_to, &mut line),
            path: o.el.path.clone(),
            message: format!("document ends inside <{}> (truncated?)", o.el.name),
        });
    }
    root.ok_or(XmlError { line: 1, path: "/".into(), message: "no root element (empty document?)".into() })
}

fn open(s: &BytesStart<'_>, stack: &mut [Open], line: usize) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    let path = match stack.last_mut() {
        None => format!("/{name}"),
        Some(parent) => {
            let n = match parent.counts.get_mut(&name) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => {
                    parent.counts.insert(name.clone(), 1);
                    1
                }
            };
            // Provisional (for error messages): the final paths are set once the whole tree
            // is known (see `fix_paths`).
            if n > 1 {
                format!("{}/{name}[{n}]", parent.el.path)
            } else {
                format!("{}/{name}", parent.el.path)
            }
        }
    };
    let mut attrs = Vec::new();
    for a in s.attributes().with_checks(true) {
        if attrs.len() == MAX_ATTRIBUTES {
            return Err(XmlError { line, path, message: format!("more than {MAX_ATTRIBUTES} attributes") });
        }
        let a = a.map_err(|e| XmlError { line, path: path.clone(), message: format!("bad attribute: {e}") })?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(|e| XmlError {
            line,
            path: path.clone(),
            message: format!("attribute {key}: bad value or entity reference: {e}"),
        })?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element { name, attrs, children: Vec::new(), text: String::new(), line, path })
}

fn close(el: Element, stack: &mut [Open], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.el.children.push(el),
        None => {
            let mut el = el;
            fix_paths(&mut el);
            *root = Some(el);
        }
    }
}

/// Drop the `[1]` index of children that are the only one of their name, recursively.
fn fix_paths(el: &mut Element) {
    let mut totals: HashMap<String, usize> = HashMap::new();
    for c in &el.children {
        *totals.entry(c.name.clone()).or_default() += 1;
    }
    let base = el.path.clone();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for c in &mut el.children {
        let total = totals.get(&c.name).copied().unwrap_or(1);
        let idx = seen.entry(c.name.clone()).or_default();
        *idx += 1;
        c.path = if total > 1 { format!("{base}/{}[{idx}]", c.name) } else { format!("{base}/{}", c.name) };
        fix_paths(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_index_only_repeated_names() {
        let t =
            parse("<domain type='kvm'><devices><disk/><disk><target bus='sata'/></disk><video/></devices></domain>")
                .unwrap();
        let dev = t.child("devices").unwrap();
        let paths: Vec<&str> = dev.children.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/domain/devices/disk[1]", "/domain/devices/disk[2]", "/domain/devices/video"]);
        assert_eq!(dev.children[1].child("target").unwrap().path, "/domain/devices/disk[2]/target");
    }

    #[test]
    fn refuses_dtd_entities_and_truncation() {
        let e = parse("<?xml version='1.0'?>\n<!DOCTYPE d [<!ENTITY x 'y'>]>\n<domain/>").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("DTD"), "{e}");
        let e = parse("<domain>\n<name>&x;</name></domain>").unwrap_err();
        assert!(e.message.contains("entity"), "{e}");
        assert_eq!(e.path, "/domain/name");
        assert_eq!(e.line, 2);
        let e = parse("<domain>\n  <devices>\n").unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        let e = parse("<domain><a></b></domain>").unwrap_err();
        assert!(e.message.contains("malformed"), "{e}");
        assert!(parse("").unwrap_err().message.contains("no root"));
        assert!(parse("<a/><b/>").unwrap_err().message.contains("after the root"));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let big = format!("<a>{}</a>", " ".repeat(MAX_INPUT_BYTES));
        assert!(parse(&big).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn element_count_and_path_lengths_are_bounded() {
        // Many siblings of one name: read in linear time, each with its index.
        let n = 20_000;
        let t = parse(&format!("<d>{}</d>", "<b/>".repeat(n))).unwrap();
        assert_eq!(t.children.len(), n);
        assert_eq!(t.children[n - 1].path, format!("/d/b[{n}]"));
        // More elements than any domain definition: refused, naming where.
        let e = parse(&format!("<d>{}</d>", "<b/>".repeat(MAX_ELEMENTS))).unwrap_err();
        assert!(e.message.contains("more than 100000 elements"), "{e}");
        assert_eq!(e.path, format!("/d/b[{MAX_ELEMENTS}]"));
        // Long names nested deep above many children: every child's path would repeat the
        // 480 KiB of names above it (a 1 MiB input needing over 20 GiB of paths).
        let name = "n".repeat(8192);
        let doc = format!(
            "<d>{}{}{}</d>",
            format!("<{name}>").repeat(60),
            "<b/>".repeat(50_000),
            format!("</{name}>").repeat(60)
        );
        assert!(doc.len() < MAX_INPUT_BYTES);
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("element paths longer than 32 MiB"), "{e}");
        // Attributes: quick-xml's duplicate check is quadratic (30,000 took 10 s).
        let attrs: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}=''")).collect();
        let e = parse(&format!("<d><e{attrs}/></d>")).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("/d/e", "more than 256 attributes"));
    }

    #[test]
    fn text_and_entities() {
        let t = parse("<domain><name> a &amp; b &#65; </name></domain>").unwrap();
        assert_eq!(t.child("name").unwrap().text, "a & b A");
    }
}
