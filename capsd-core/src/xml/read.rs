//! The strict reader: quick-xml events -> a small element tree (with line numbers) -> the
//! model, checking every element and attribute against the schema.
//!
//! Two passes keep the checks simple and the error messages precise: the first pass checks
//! well-formedness (balanced tags, quoting, entities, no DTD, nesting depth) and records the
//! 1-based line of every start tag; the second walks the tree with the element path and
//! converts it, rejecting unknown or duplicate elements, unknown attributes and bad values.
//! Only the five predefined entities and numeric character references are expanded; a
//! `<!DOCTYPE>` (and with it any `<!ENTITY>` declaration) is rejected outright. Line ends and
//! attribute values are normalised as XML prescribes (`\r\n` -> `\n`; literal tab, newline
//! in attributes -> space). Input size, element count, attributes per element and nesting
//! depth are bounded ([`MAX_INPUT_BYTES`], [`MAX_ELEMENTS`], [`MAX_ATTRIBUTES`], 16 levels),
//! and every check is linear in the input (duplicate enums are found through a set).

use std::borrow::Cow;
use std::collections::HashSet;

use quick_xml::events::attributes::Attributes;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::ParseError;
use crate::model::*;

/// The largest document the reader accepts (16 MiB); libvirt's own are under 200 KiB.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// Most elements accepted in one document. libvirt's largest documents hold about 2,000; the
/// limit bounds the memory a hostile 16 MiB input can make the reader use.
pub const MAX_ELEMENTS: usize = 250_000;

/// Most attributes accepted on one element. libvirt writes at most 6; quick-xml's duplicate
/// check costs time quadratic in the count, so the limit keeps a hostile element cheap.
pub const MAX_ATTRIBUTES: usize = 256;

/// Deepest element nesting accepted. The schema needs 5 levels; the limit keeps hostile input
/// from building a deep tree.
const MAX_DEPTH: usize = 16;

pub(super) fn from_xml(input: &str) -> Result<DomainCapabilities, ParseError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(ParseError {
            line: 0,
            path: String::new(),
            message: format!(
                "input is {} bytes, larger than the {} MiB limit for a domain capabilities document",
                input.len(),
                MAX_INPUT_BYTES / (1024 * 1024)
            ),
        });
    }
    if let Some(pos) = find_forbidden_char(input.as_bytes()) {
        let line = 1 + memchr_count(&input.as_bytes()[..pos]);
        let c = input[pos..].chars().next().map_or(0, u32::from);
        return Err(ParseError {
            line,
            path: String::new(),
            message: format!("character U+{c:04X} is not allowed in XML"),
        });
    }
    let root = build_tree(input)?;
    tracing::trace!(line = root.line, "XML tree built");
    document(&root)
}

fn is_forbidden_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

/// Position of the first character XML cannot carry: a control character other than tab,
/// newline and carriage return, or U+FFFE / U+FFFF (UTF-8 `EF BF BE` / `EF BF BF`). Scans in
/// blocks without early exit inside a block so the compiler can vectorise the common case
/// (this runs over the whole input).
fn find_forbidden_char(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 64;
    for (i, block) in bytes.chunks(BLOCK).enumerate() {
        let suspect = block.iter().fold(0u8, |acc, &b| {
            acc | (u8::from(b < 0x20) & u8::from(b != b'\t') & u8::from(b != b'\n') & u8::from(b != b'\r'))
                | u8::from(b == 0xEF)
        });
        if suspect == 0 {
            continue;
        }
        for (j, &b) in block.iter().enumerate() {
            let at = i * BLOCK + j;
            let noncharacter = b == 0xEF && matches!(bytes.get(at + 1..at + 3), Some([0xBF, 0xBE | 0xBF]));
            if is_forbidden_control(b) || noncharacter {
                return Some(at);
            }
        }
    }
    None
}

fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn is_xml_space(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// One element of the document: name, attributes in order, children, concatenated text.
/// Names, attribute values and text borrow from the input unless unescaping changed them.
#[derive(Debug)]
struct Node<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, Cow<'a, str>)>,
    children: Vec<Node<'a>>,
    text: Cow<'a, str>,
    line: usize,
}

/// Incremental byte offset -> 1-based line number.
struct Lines<'a> {
    input: &'a [u8],
    pos: usize,
    line: usize,
}

impl Lines<'_> {
    fn at(&mut self, pos: usize) -> usize {
        let pos = pos.min(self.input.len());
        if pos < self.pos {
            self.pos = 0;
            self.line = 1;
        }
        self.line += memchr_count(&self.input[self.pos..pos]);
        self.pos = pos;
        self.line
    }
}

fn stack_path(stack: &[Node]) -> String {
    let mut s = String::new();
    for n in stack {
        s.push('/');
        s.push_str(n.name);
    }
    s
}

fn tree_err(line: usize, stack: &[Node], message: impl Into<String>) -> ParseError {
    ParseError { line, path: stack_path(stack), message: message.into() }
}

/// Reject characters XML 1.0 cannot carry (they can still arrive as `&#1;`).
fn check_chars(s: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|&c| (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') || matches!(c, '\u{FFFE}' | '\u{FFFF}'))
    {
        Some(c) => Err(format!("character U+{:04X} is not allowed in XML", c as u32)),
        None => Ok(()),
    }
}

/// `raw`, which the reader handed out as a slice of `input`, as a `str` borrowed for the
/// input's lifetime; `None` if it is not such a slice.
fn slice_of<'a>(input: &'a str, raw: &[u8]) -> Option<&'a str> {
    let offset = (raw.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    input.get(offset..offset.wrapping_add(raw.len())).filter(|c| c.as_ptr() == raw.as_ptr())
}

/// XML end-of-line handling: `\r\n` and a lone `\r` become `\n` (as in any conforming parser).
fn normalize_newlines(s: &str) -> Cow<'_, str> {
    if s.contains('\r') {
        Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Attribute-value normalisation: after end-of-line handling, each literal tab, newline or
/// carriage return becomes a space (character references such as `&#10;` are kept).
fn normalize_attr(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| matches!(b, b'\t' | b'\n' | b'\r')) {
        Cow::Owned(s.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

/// Expand the predefined entities and character references of `raw`, keeping the borrow
/// when nothing changes.
fn unescape_cow(raw: Cow<'_, str>) -> Result<Cow<'_, str>, quick_xml::escape::EscapeError> {
    match raw {
        Cow::Borrowed(s) => quick_xml::escape::unescape(s),
        Cow::Owned(s) => Ok(Cow::Owned(quick_xml::escape::unescape(&s)?.into_owned())),
    }
}

fn start_node<'a>(input: &'a str, e: &BytesStart<'a>, line: usize, stack: &[Node<'_>]) -> Result<Node<'a>, ParseError> {
    // The reader works on `input` directly, so the tag's bytes are a slice of it: find that
    // slice again to borrow the name and attributes for the input's lifetime.
    let Some(content) = slice_of(input, e) else {
        return Err(tree_err(line, stack, "internal error: tag is not a slice of the input"));
    };
    let name_len = e.name().as_ref().len();
    let name = &content[..name_len];
    let mut attrs = Vec::new();
    for a in Attributes::new(content, name_len) {
        if attrs.len() == MAX_ATTRIBUTES {
            return Err(tree_err(line, stack, format!("more than {MAX_ATTRIBUTES} attributes in <{name}>")));
        }
        let a = a.map_err(|err| tree_err(line, stack, format!("malformed attribute in <{name}>: {err}")))?;
        let (Some(key), Some(raw)) = (slice_of(input, a.key.into_inner()), slice_of(input, &a.value)) else {
            return Err(tree_err(line, stack, "internal error: attribute is not a slice of the input"));
        };
        if raw.contains('<') {
            return Err(tree_err(
                line,
                stack,
                format!("'<' is not allowed in the value of attribute '{key}' of <{name}>"),
            ));
        }
        let value = unescape_cow(normalize_attr(raw))
            .map_err(|err| tree_err(line, stack, format!("bad escape in attribute '{key}' of <{name}>: {err}")))?;
        if let Cow::Owned(v) = &value {
            // Character references may produce what the raw input scan could not see.
            check_chars(v).map_err(|m| tree_err(line, stack, format!("attribute '{key}' of <{name}>: {m}")))?;
        }
        attrs.push((key, value));
    }
    Ok(Node { name, attrs, children: Vec::new(), text: Cow::Borrowed(""), line })
}

/// First pass: well-formedness and the element tree.
fn build_tree(input: &str) -> Result<Node<'_>, ParseError> {
    let mut reader = Reader::from_str(input);
    {
        let cfg = reader.config_mut();
        cfg.trim_text(false);
        cfg.check_end_names = true;
        cfg.check_comments = true;
        cfg.expand_empty_elements = false;
        cfg.allow_unmatched_ends = false;
    }
    let mut lines = Lines { input: input.as_bytes(), pos: 0, line: 1 };
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut elements = 0usize;
    loop {
        let start = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let line = lines.at(reader.error_position() as usize);
                return Err(tree_err(line, &stack, format!("malformed XML: {e}")));
            }
        };
        let line = lines.at(start);
        if matches!(event, Event::Start(_) | Event::Empty(_)) {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(tree_err(line, &stack, format!("more than {MAX_ELEMENTS} elements in one document")));
            }
        }
        let closed = match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(tree_err(line, &stack, format!("elements nested deeper than {MAX_DEPTH} levels")));
                }
                let node = start_node(input, &e, line, &stack)?;
                if root.is_some() {
                    return Err(tree_err(line, &stack, format!("content after the root element: <{}>", node.name)));
                }
                stack.push(node);
                None
            }
            Event::Empty(e) => {
                if root.is_some() {
                    return Err(tree_err(line, &stack, "content after the root element"));
                }
                Some(start_node(input, &e, line, &stack)?)
            }
            Event::End(_) => match stack.pop() {
                Some(n) => Some(n),
                None => return Err(tree_err(line, &stack, "closing tag without an opening tag")),
            },
            Event::Text(t) => {
                let Some(raw) = slice_of(input, &t) else {
                    return Err(tree_err(line, &stack, "internal error: text is not a slice of the input"));
                };
                let text = unescape_cow(normalize_newlines(raw))
                    .map_err(|e| tree_err(line, &stack, format!("bad text or entity reference: {e}")))?;
                if let Cow::Owned(t) = &text {
                    check_chars(t).map_err(|m| tree_err(line, &stack, m))?;
                }
                match stack.last_mut() {
                    // Indentation between child elements carries nothing: not stored.
                    Some(top) if !top.children.is_empty() && is_xml_space(&text) => {}
                    Some(top) if top.text.is_empty() => top.text = text,
                    Some(top) => top.text.to_mut().push_str(&text),
                    None if is_xml_space(&text) => {}
                    None => {
                        let lead = t.iter().take_while(|b| b.is_ascii_whitespace()).count();
                        let line = lines.at(start + lead);
                        return Err(tree_err(line, &stack, "text outside the root element"));
                    }
                }
                None
            }
            Event::CData(t) => {
                let Some(raw) = slice_of(input, &t) else {
                    return Err(tree_err(line, &stack, "internal error: CDATA is not a slice of the input"));
                };
                match stack.last_mut() {
                    Some(top) => top.text.to_mut().push_str(&normalize_newlines(raw)),
                    None => return Err(tree_err(line, &stack, "CDATA outside the root element")),
                }
                None
            }
            Event::Comment(_) => None,
            Event::Decl(_) => {
                if start != 0 {
                    return Err(tree_err(line, &stack, "the XML declaration must be at the very start"));
                }
                None
            }
            Event::PI(_) => return Err(tree_err(line, &stack, "processing instructions are not allowed")),
            Event::DocType(_) => {
                return Err(tree_err(
                    line,
                    &stack,
                    "DTD (<!DOCTYPE ...>) is not allowed: entity declarations are never expanded",
                ))
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    let line = lines.at(input.len());
                    let msg = format!("document truncated: <{}> (line {}) is not closed", open.name, open.line);
                    return Err(tree_err(line, &stack, msg));
                }
                return root.ok_or_else(|| tree_err(lines.at(input.len()), &stack, "empty document: no root element"));
            }
        };
        if let Some(node) = closed {
            match stack.last_mut() {
                Some(parent) => parent.children.push(node),
                None => root = Some(node),
            }
        }
    }
}

/// An element path, built on the stack while walking the tree; rendered only for errors.
#[derive(Clone, Copy)]
struct P<'a> {
    parent: Option<&'a P<'a>>,
    name: &'a str,
}

impl<'a> P<'a> {
    fn child(&'a self, name: &'a str) -> P<'a> {
        P { parent: Some(self), name }
    }

    fn render(&self) -> String {
        let mut parts = vec![self.name];
        let mut cur = self.parent;
        while let Some(p) = cur {
            parts.push(p.name);
            cur = p.parent;
        }
        let mut s = String::new();
        for part in parts.iter().rev() {
            s.push('/');
            s.push_str(part);
        }
        s
    }
}

type R<T> = Result<T, ParseError>;

fn err<T>(line: usize, p: &P<'_>, message: impl Into<String>) -> R<T> {
    Err(ParseError { line, path: p.render(), message: message.into() })
}

impl Node<'_> {
    /// The attributes named in `names`, in that order; any other attribute is an error.
    fn attrs<const N: usize>(&self, p: &P<'_>, names: [&str; N]) -> R<[Option<&str>; N]> {
        let mut out = [None; N];
        for (k, v) in &self.attrs {
            match names.iter().position(|n| n == k) {
                Some(i) => out[i] = Some(v.as_ref()),
                None => {
                    let allowed = if N == 0 {
                        "none".to_owned()
                    } else {
                        names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                    };
                    return err(self.line, p, format!("unknown attribute '{k}' (allowed: {allowed})"));
                }
            }
        }
        Ok(out)
    }

    fn required<'v>(&self, p: &P<'_>, name: &str, v: Option<&'v str>) -> R<&'v str> {
        match v {
            Some(v) => Ok(v),
            None => err(self.line, p, format!("missing attribute '{name}'")),
        }
    }

    /// An element with only element children: text must be whitespace.
    fn no_text(&self, p: &P<'_>) -> R<()> {
        if is_xml_space(&self.text) {
            Ok(())
        } else {
            err(self.line, p, format!("unexpected text {:?}", shorten(self.text.trim())))
        }
    }

    /// An element with no content at all.
    fn empty(&self, p: &P<'_>) -> R<()> {
        self.no_text(p)?;
        match self.children.first() {
            Some(c) => {
                err(c.line, &p.child(c.name), format!("unknown element <{}>: <{}> has no children", c.name, self.name))
            }
            None => Ok(()),
        }
    }

    /// A text-only element: its text, exactly.
    fn leaf_text(&self, p: &P<'_>) -> R<&str> {
        match self.children.first() {
            Some(c) => {
                err(c.line, &p.child(c.name), format!("unknown element <{}>: <{}> holds only text", c.name, self.name))
            }
            None => Ok(&self.text),
        }
    }

    /// A text-only element without attributes.
    fn plain_text(&self, p: &P<'_>) -> R<String> {
        self.attrs(p, [])?;
        Ok(self.leaf_text(p)?.to_owned())
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        let mut t: String = s.chars().take(40).collect();
        t.push_str("...");
        t
    } else {
        s.to_owned()
    }
}

fn unknown_child<T>(c: &Node, p: &P<'_>, parent: &str) -> R<T> {
    err(c.line, &p.child(c.name), format!("unknown element <{}> in <{parent}>", c.name))
}

fn set_once<T>(slot: &mut Option<T>, value: T, c: &Node, p: &P<'_>) -> R<()> {
    if slot.is_some() {
        return err(c.line, p, format!("duplicate <{}> element", c.name));
    }
    *slot = Some(value);
    Ok(())
}

fn missing<T>(node: &Node, p: &P<'_>, what: &str) -> R<T> {
    err(node.line, p, format!("missing <{what}> element"))
}

fn bad_value<T>(line: usize, p: &P<'_>, what: &str, value: &str, expected: &str) -> R<T> {
    err(line, p, format!("invalid value '{}' for {what} (expected {expected})", shorten(value)))
}

fn support(node: &Node, p: &P<'_>, v: Option<&str>) -> R<Support> {
    match node.required(p, "supported", v)? {
        "yes" => Ok(Support::Yes),
        "no" => Ok(Support::No),
        other => bad_value(node.line, p, "attribute 'supported'", other, "'yes' or 'no'"),
    }
}

fn yes_no(line: usize, p: &P<'_>, what: &str, v: &str) -> R<bool> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bad_value(line, p, what, other, "'yes' or 'no'"),
    }
}

fn on_off(line: usize, p: &P<'_>, what: &str, v: &str) -> R<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        other => bad_value(line, p, what, other, "'on' or 'off'"),
    }
}

fn parse_u64(line: usize, p: &P<'_>, what: &str, v: &str, max: u64) -> R<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return bad_value(line, p, what, v, "an unsigned decimal integer");
    }
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => bad_value(line, p, what, v, &format!("an integer no larger than {max}")),
    }
}

fn parse_u32(line: usize, p: &P<'_>, what: &str, v: &str) -> R<u32> {
    parse_u64(line, p, what, v, u32::MAX.into()).map(|n| n as u32)
}

/// Text of a child element as an unsigned 32-bit number.
fn u32_elem(c: &Node, p: &P<'_>) -> R<u32> {
    let t = c.plain_text(p)?;
    parse_u32(c.line, p, "the element text", &t)
}

fn enum_(node: &Node, p: &P<'_>) -> R<Enum> {
    let [name] = node.attrs(p, ["name"])?;
    let name = node.required(p, "name", name)?.to_owned();
    node.no_text(p)?;
    let mut values = Vec::with_capacity(node.children.len());
    for c in &node.children {
        let cp = p.child(c.name);
        if c.name != "value" {
            return unknown_child(c, p, "enum");
        }
        values.push(c.plain_text(&cp)?);
    }
    Ok(Enum { name, values })
}

/// Append an `<enum>` child to `enums`, rejecting a second enum of the same name. `seen`
/// holds the names already in `enums` (one set per element, so the check stays linear).
fn push_enum(enums: &mut Vec<Enum>, seen: &mut HashSet<String>, c: &Node, p: &P<'_>) -> R<()> {
    let cp = p.child("enum");
    let e = enum_(c, &cp)?;
    if !seen.insert(e.name.clone()) {
        return err(c.line, &cp, format!("duplicate <enum name='{}'>", e.name));
    }
    enums.push(e);
    Ok(())
}

fn enum_element(node: &Node, p: &P<'_>) -> R<EnumElement> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut enums = Vec::new();
    let mut seen = HashSet::new();
    for c in &node.children {
        if c.name != "enum" {
            return unknown_child(c, p, node.name);
        }
        push_enum(&mut enums, &mut seen, c, p)?;
    }
    Ok(EnumElement { supported, enums })
}

fn flag(node: &Node, p: &P<'_>) -> R<Flag> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.empty(p)?;
    Ok(Flag { supported })
}

fn document(root: &Node) -> R<DomainCapabilities> {
    let p = P { parent: None, name: root.name };
    if root.name != "domainCapabilities" {
        return err(root.line, &p, format!("root element is <{}>, expected <domainCapabilities>", root.name));
    }
    root.attrs(&p, [])?;
    root.no_text(&p)?;
    let mut path = None;
    let mut domain = None;
    let mut machine = None;
    let mut arch = None;
    let mut caps = DomainCapabilities::default();
    for c in &root.children {
        let cp = p.child(c.name);
        match c.name {
            "path" => set_once(&mut path, c.plain_text(&cp)?, c, &cp)?,
            "domain" => set_once(&mut domain, c.plain_text(&cp)?, c, &cp)?,
            "machine" => set_once(&mut machine, c.plain_text(&cp)?, c, &cp)?,
            "arch" => set_once(&mut arch, c.plain_text(&cp)?, c, &cp)?,
            "vcpu" => {
                let [max] = c.attrs(&cp, ["max"])?;
                let max = c.required(&cp, "max", max)?;
                let max = parse_u32(c.line, &cp, "attribute 'max'", max)?;
                c.empty(&cp)?;
                set_once(&mut caps.vcpu, Vcpu { max }, c, &cp)?;
            }
            "iothreads" => set_once(&mut caps.iothreads, flag(c, &cp)?, c, &cp)?,
            "os" => set_once(&mut caps.os, os(c, &cp)?, c, &cp)?,
            "cpu" => set_once(&mut caps.cpu, cpu(c, &cp)?, c, &cp)?,
            "memoryBacking" => set_once(&mut caps.memory_backing, enum_element(c, &cp)?, c, &cp)?,
            "devices" => set_once(&mut caps.devices, devices(c, &cp)?, c, &cp)?,
            "features" => set_once(&mut caps.features, features(c, &cp)?, c, &cp)?,
            _ => return unknown_child(c, &p, "domainCapabilities"),
        }
    }
    caps.path = path;
    caps.machine = machine;
    caps.domain = match domain {
        Some(d) => d,
        None => return missing(root, &p, "domain"),
    };
    caps.arch = match arch {
        Some(a) => a,
        None => return missing(root, &p, "arch"),
    };
    Ok(caps)
}

fn os(node: &Node, p: &P<'_>) -> R<Os> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut os = Os { supported, enums: Vec::new(), firmware_features: None, loader: None, varstore: None };
    let mut seen = HashSet::new();
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "enum" => push_enum(&mut os.enums, &mut seen, c, p)?,
            "firmwareFeatures" => set_once(&mut os.firmware_features, enum_element(c, &cp)?, c, &cp)?,
            "loader" => set_once(&mut os.loader, loader(c, &cp)?, c, &cp)?,
            "varstore" => set_once(&mut os.varstore, flag(c, &cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "os"),
        }
    }
    Ok(os)
}

fn loader(node: &Node, p: &P<'_>) -> R<Loader> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut l = Loader { supported, values: Vec::new(), enums: Vec::new() };
    let mut seen = HashSet::new();
    for c in &node.children {
        match c.name {
            "value" => l.values.push(c.plain_text(&p.child("value"))?),
            "enum" => push_enum(&mut l.enums, &mut seen, c, p)?,
            _ => return unknown_child(c, p, "loader"),
        }
    }
    Ok(l)
}

fn cpu(node: &Node, p: &P<'_>) -> R<Cpu> {
    node.attrs(p, [])?;
    node.no_text(p)?;
    let mut cpu = Cpu::default();
    for c in &node.children {
        let cp = p.child(c.name);
        if c.name != "mode" {
            return unknown_child(c, p, "cpu");
        }
        let name = c.attrs.iter().find(|(k, _)| *k == "name").map(|(_, v)| v.as_ref());
        match c.required(&cp, "name", name)? {
            "host-passthrough" => set_once(&mut cpu.host_passthrough, mode_enums(c, &cp)?, c, &cp)?,
            "maximum" => set_once(&mut cpu.maximum, mode_enums(c, &cp)?, c, &cp)?,
            "host-model" => set_once(&mut cpu.host_model, host_model(c, &cp)?, c, &cp)?,
            "custom" => set_once(&mut cpu.custom, custom(c, &cp)?, c, &cp)?,
            other => {
                return bad_value(
                    c.line,
                    &cp,
                    "attribute 'name'",
                    other,
                    "host-passthrough, maximum, host-model or custom",
                )
            }
        }
    }
    Ok(cpu)
}

fn mode_enums(node: &Node, p: &P<'_>) -> R<CpuModeEnums> {
    let [_, s] = node.attrs(p, ["name", "supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut enums = Vec::new();
    let mut seen = HashSet::new();
    for c in &node.children {
        if c.name != "enum" {
            return unknown_child(c, p, "mode");
        }
        push_enum(&mut enums, &mut seen, c, p)?;
    }
    Ok(CpuModeEnums { supported, enums })
}

fn host_model(node: &Node, p: &P<'_>) -> R<HostModel> {
    let [_, s] = node.attrs(p, ["name", "supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut hm = HostModel { supported, model: None, vendor: None, maxphysaddr: None, features: Vec::new() };
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "model" => {
                let [fallback, vendor_id] = c.attrs(&cp, ["fallback", "vendor_id"])?;
                let fallback = match fallback {
                    None => None,
                    Some("allow") => Some(Fallback::Allow),
                    Some("forbid") => Some(Fallback::Forbid),
                    Some(other) => return bad_value(c.line, &cp, "attribute 'fallback'", other, "'allow' or 'forbid'"),
                };
                let name = c.leaf_text(&cp)?.to_owned();
                let m = CpuModelName { name, fallback, vendor_id: vendor_id.map(str::to_owned) };
                set_once(&mut hm.model, m, c, &cp)?;
            }
            "vendor" => set_once(&mut hm.vendor, c.plain_text(&cp)?, c, &cp)?,
            "maxphysaddr" => {
                let [mode, bits, limit] = c.attrs(&cp, ["mode", "bits", "limit"])?;
                let mode = match c.required(&cp, "mode", mode)? {
                    "emulate" => MaxPhysAddrMode::Emulate,
                    "passthrough" => MaxPhysAddrMode::Passthrough,
                    other => return bad_value(c.line, &cp, "attribute 'mode'", other, "'emulate' or 'passthrough'"),
                };
                let bits = bits.map(|v| parse_u32(c.line, &cp, "attribute 'bits'", v)).transpose()?;
                let limit = limit.map(|v| parse_u32(c.line, &cp, "attribute 'limit'", v)).transpose()?;
                c.empty(&cp)?;
                set_once(&mut hm.maxphysaddr, MaxPhysAddr { mode, bits, limit }, c, &cp)?;
            }
            "feature" => {
                let [policy, name] = c.attrs(&cp, ["policy", "name"])?;
                let policy = match c.required(&cp, "policy", policy)? {
                    "force" => FeaturePolicy::Force,
                    "require" => FeaturePolicy::Require,
                    "optional" => FeaturePolicy::Optional,
                    "disable" => FeaturePolicy::Disable,
                    "forbid" => FeaturePolicy::Forbid,
                    other => {
                        return bad_value(
                            c.line,
                            &cp,
                            "attribute 'policy'",
                            other,
                            "force, require, optional, disable or forbid",
                        )
                    }
                };
                let name = c.required(&cp, "name", name)?.to_owned();
                c.empty(&cp)?;
                hm.features.push(CpuFeature { policy, name });
            }
            _ => return unknown_child(c, p, "mode"),
        }
    }
    Ok(hm)
}

fn custom(node: &Node, p: &P<'_>) -> R<CustomModels> {
    let [_, s] = node.attrs(p, ["name", "supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut models: Vec<CustomModel> = Vec::with_capacity(node.children.len());
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "model" => {
                let [usable, deprecated, vendor, canonical] =
                    c.attrs(&cp, ["usable", "deprecated", "vendor", "canonical"])?;
                let usable = match c.required(&cp, "usable", usable)? {
                    "yes" => Usable::Yes,
                    "no" => Usable::No,
                    "unknown" => Usable::Unknown,
                    other => return bad_value(c.line, &cp, "attribute 'usable'", other, "'yes', 'no' or 'unknown'"),
                };
                let deprecated = deprecated.map(|v| yes_no(c.line, &cp, "attribute 'deprecated'", v)).transpose()?;
                // Written since libvirt 8.9.0; older documents have no vendor.
                let vendor = vendor.map(str::to_owned);
                let name = c.leaf_text(&cp)?.to_owned();
                models.push(CustomModel {
                    name,
                    usable,
                    deprecated,
                    canonical: canonical.map(str::to_owned),
                    vendor,
                    blockers: None,
                });
            }
            "blockers" => {
                let [model] = c.attrs(&cp, ["model"])?;
                let model = c.required(&cp, "model", model)?.to_owned();
                c.no_text(&cp)?;
                let mut features = Vec::with_capacity(c.children.len());
                for f in &c.children {
                    let fp = cp.child(f.name);
                    if f.name != "feature" {
                        return unknown_child(f, &cp, "blockers");
                    }
                    let [name] = f.attrs(&fp, ["name"])?;
                    features.push(f.required(&fp, "name", name)?.to_owned());
                    f.empty(&fp)?;
                }
                let Some(prev) = models.last_mut() else {
                    return err(c.line, &cp, "<blockers> must follow the <model> it belongs to");
                };
                if prev.blockers.is_some() {
                    return err(c.line, &cp, format!("duplicate <blockers> for model {:?}", prev.name));
                }
                if prev.name != model {
                    return err(
                        c.line,
                        &cp,
                        format!(
                            "<blockers model={model:?}> does not follow its <model> (the one before is {:?})",
                            prev.name
                        ),
                    );
                }
                prev.blockers = Some(Blockers { model, features });
            }
            _ => return unknown_child(c, p, "mode"),
        }
    }
    Ok(CustomModels { supported, models })
}

fn devices(node: &Node, p: &P<'_>) -> R<Devices> {
    node.attrs(p, [])?;
    node.no_text(p)?;
    let mut d = Devices::default();
    for c in &node.children {
        let cp = p.child(c.name);
        let e = match d.slot_mut(c.name) {
            Some(_) => enum_element(c, &cp)?,
            None => return unknown_child(c, p, "devices"),
        };
        if let Some(slot) = d.slot_mut(c.name) {
            set_once(slot, e, c, &cp)?;
        }
    }
    Ok(d)
}

fn features(node: &Node, p: &P<'_>) -> R<Features> {
    node.attrs(p, [])?;
    node.no_text(p)?;
    let mut f = Features::default();
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "gic" => set_once(&mut f.gic, enum_element(c, &cp)?, c, &cp)?,
            "vmcoreinfo" => set_once(&mut f.vmcoreinfo, flag(c, &cp)?, c, &cp)?,
            "genid" => set_once(&mut f.genid, flag(c, &cp)?, c, &cp)?,
            "backingStoreInput" => set_once(&mut f.backing_store_input, flag(c, &cp)?, c, &cp)?,
            "backup" => set_once(&mut f.backup, flag(c, &cp)?, c, &cp)?,
            "async-teardown" => set_once(&mut f.async_teardown, flag(c, &cp)?, c, &cp)?,
            "s390-pv" => set_once(&mut f.s390_pv, flag(c, &cp)?, c, &cp)?,
            "ps2" => set_once(&mut f.ps2, flag(c, &cp)?, c, &cp)?,
            "tdx" => set_once(&mut f.tdx, flag(c, &cp)?, c, &cp)?,
            "sev" => set_once(&mut f.sev, sev(c, &cp)?, c, &cp)?,
            "sgx" => set_once(&mut f.sgx, sgx(c, &cp)?, c, &cp)?,
            "cca" => set_once(&mut f.cca, cca(c, &cp)?, c, &cp)?,
            "hyperv" => set_once(&mut f.hyperv, hyperv(c, &cp)?, c, &cp)?,
            "launchSecurity" => set_once(&mut f.launch_security, enum_element(c, &cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "features"),
        }
    }
    Ok(f)
}

fn sev(node: &Node, p: &P<'_>) -> R<Sev> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let (mut cbitpos, mut reduced, mut max_guests, mut max_es, mut cpu0_id) = (None, None, None, None, None);
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "cbitpos" => set_once(&mut cbitpos, u32_elem(c, &cp)?, c, &cp)?,
            "reducedPhysBits" => set_once(&mut reduced, u32_elem(c, &cp)?, c, &cp)?,
            "maxGuests" => set_once(&mut max_guests, u32_elem(c, &cp)?, c, &cp)?,
            "maxESGuests" => set_once(&mut max_es, u32_elem(c, &cp)?, c, &cp)?,
            "cpu0Id" => set_once(&mut cpu0_id, c.plain_text(&cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "sev"),
        }
    }
    // Older libvirt versions wrote only cbitpos and reducedPhysBits; maxGuests and maxESGuests
    // came later. Each of the later two is kept as present or absent.
    let params = match (cbitpos, reduced) {
        (None, None) if max_guests.is_none() && max_es.is_none() => None,
        (Some(cbitpos), Some(reduced_phys_bits)) => {
            Some(SevParams { cbitpos, reduced_phys_bits, max_guests, max_es_guests: max_es })
        }
        (c, r) => {
            let absent: Vec<&str> = [(c.is_none(), "cbitpos"), (r.is_none(), "reducedPhysBits")]
                .into_iter()
                .filter_map(|(missing, n)| missing.then_some(n))
                .collect();
            return err(
                node.line,
                p,
                format!(
                    "incomplete SEV parameters: missing <{}> (<cbitpos> and <reducedPhysBits> come together, \
                     and <maxGuests>/<maxESGuests> need them)",
                    absent.join(">, <")
                ),
            );
        }
    };
    Ok(Sev { supported, params, cpu0_id })
}

fn sgx(node: &Node, p: &P<'_>) -> R<Sgx> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let (mut flc, mut sgx1, mut sgx2, mut size, mut sections) = (None, None, None, None, None);
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "flc" | "sgx1" | "sgx2" => {
                let t = c.plain_text(&cp)?;
                let b = yes_no(c.line, &cp, "the element text", &t)?;
                let slot = match c.name {
                    "flc" => &mut flc,
                    "sgx1" => &mut sgx1,
                    _ => &mut sgx2,
                };
                set_once(slot, b, c, &cp)?;
            }
            "section_size" => {
                let [unit] = c.attrs(&cp, ["unit"])?;
                kib(c, &cp, unit)?;
                let t = c.leaf_text(&cp)?;
                let n = parse_u64(c.line, &cp, "the element text", t, u64::MAX)?;
                set_once(&mut size, n, c, &cp)?;
            }
            "sections" => {
                c.attrs(&cp, [])?;
                c.no_text(&cp)?;
                let mut list = Vec::with_capacity(c.children.len());
                for s in &c.children {
                    let sp = cp.child(s.name);
                    if s.name != "section" {
                        return unknown_child(s, &cp, "sections");
                    }
                    let [node_a, size_a, unit] = s.attrs(&sp, ["node", "size", "unit"])?;
                    let node_n = parse_u32(s.line, &sp, "attribute 'node'", s.required(&sp, "node", node_a)?)?;
                    let size_n =
                        parse_u64(s.line, &sp, "attribute 'size'", s.required(&sp, "size", size_a)?, u64::MAX)?;
                    kib(s, &sp, unit)?;
                    s.empty(&sp)?;
                    list.push(SgxSection { node: node_n, size_kib: size_n });
                }
                set_once(&mut sections, list, c, &cp)?;
            }
            _ => return unknown_child(c, p, "sgx"),
        }
    }
    let info = match (flc, sgx1, sgx2, size) {
        (None, None, None, None) => {
            if sections.is_some() {
                return err(node.line, p, "<sections> without <flc>, <sgx1>, <sgx2> and <section_size>");
            }
            None
        }
        (Some(flc), Some(sgx1), Some(sgx2), Some(section_size_kib)) => {
            Some(SgxInfo { flc, sgx1, sgx2, section_size_kib, sections })
        }
        _ => {
            return err(
                node.line,
                p,
                "incomplete SGX information: <flc>, <sgx1>, <sgx2> and <section_size> go together",
            )
        }
    };
    Ok(Sgx { supported, info })
}

fn kib(node: &Node, p: &P<'_>, unit: Option<&str>) -> R<()> {
    match node.required(p, "unit", unit)? {
        "KiB" => Ok(()),
        other => bad_value(node.line, p, "attribute 'unit'", other, "'KiB'"),
    }
}

fn cca(node: &Node, p: &P<'_>) -> R<Cca> {
    let [s, log] = node.attrs(p, ["supported", "measurement-log"])?;
    let supported = support(node, p, s)?;
    let measurement_log = log.map(|v| yes_no(node.line, p, "attribute 'measurement-log'", v)).transpose()?;
    node.no_text(p)?;
    let mut cca = Cca { supported, measurement_log, measurement_algo: None, personalization_value: None };
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "enum" => {
                let e = enum_(c, &cp)?;
                if e.name != "measurement-algo" {
                    return bad_value(c.line, &cp, "attribute 'name'", &e.name, "'measurement-algo'");
                }
                set_once(&mut cca.measurement_algo, e.values, c, &cp)?;
            }
            "personalization-value" => set_once(&mut cca.personalization_value, c.plain_text(&cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "cca"),
        }
    }
    Ok(cca)
}

fn hyperv(node: &Node, p: &P<'_>) -> R<Hyperv> {
    let [s] = node.attrs(p, ["supported"])?;
    let supported = support(node, p, s)?;
    node.no_text(p)?;
    let mut h = Hyperv { supported, enums: Vec::new(), defaults: None };
    let mut seen = HashSet::new();
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "enum" => push_enum(&mut h.enums, &mut seen, c, p)?,
            "defaults" => set_once(&mut h.defaults, hyperv_defaults(c, &cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "hyperv"),
        }
    }
    Ok(h)
}

fn hyperv_defaults(node: &Node, p: &P<'_>) -> R<HypervDefaults> {
    node.attrs(p, [])?;
    node.no_text(p)?;
    let mut d = HypervDefaults::default();
    for c in &node.children {
        let cp = p.child(c.name);
        match c.name {
            "spinlocks" => set_once(&mut d.spinlocks, u32_elem(c, &cp)?, c, &cp)?,
            "stimer_direct" | "tlbflush_direct" | "tlbflush_extended" => {
                let t = c.plain_text(&cp)?;
                let b = on_off(c.line, &cp, "the element text", &t)?;
                let slot = match c.name {
                    "stimer_direct" => &mut d.stimer_direct,
                    "tlbflush_direct" => &mut d.tlbflush_direct,
                    _ => &mut d.tlbflush_extended,
                };
                set_once(slot, b, c, &cp)?;
            }
            "vendor_id" => set_once(&mut d.vendor_id, c.plain_text(&cp)?, c, &cp)?,
            _ => return unknown_child(c, p, "defaults"),
        }
    }
    Ok(d)
}
