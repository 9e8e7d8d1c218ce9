//! Evidence: which facts decided each node of a document (`capsd explain`).
//!
//! A driver's derivation records, *as it decides*, the facts it consults into the node it is
//! deciding: [`node`] opens a node (a step below the node open around it), [`fact`] adds a
//! fact to the innermost open node. Nothing is recorded unless a caller asked for it with
//! [`record`], which runs the derivation once with a recorder installed on the calling
//! thread and returns the document with its [`Explanation`]; there is no second derivation
//! that could disagree with the document. Disabled, [`fact`] and [`node`] cost one
//! thread-local read and build nothing (their arguments are closures).
//!
//! Node paths are XPath-like, relative to `<domainCapabilities>`: one step per element, an
//! element with a `name` attribute as `tag[@name='x']`, any other element with text as
//! `tag[.='text']` (`devices/tpm/enum[@name='backendModel']/value[.='emulator']`). A node
//! is also recorded for something the derivation *considered and left out* (`present:
//! false`) with why ([`Omission`]), which is not the same as a `supported='no'`.
//!
//! This module knows nothing about any backend: facts are a QMP command and what its reply
//! said, a host fact and where it was read, a rule of the target release, or the query.

use std::cell::RefCell;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A QMP command's answer as the probe got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// Asked and answered.
    Answered,
    /// Asked and QEMU replied with an error.
    Failed,
    /// Not asked (or not in the recording).
    NotAsked,
}

/// One fact a derivation consulted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fact {
    /// Something in a QMP reply: `command`'s reply (of the run `run`, `kvm`/`tcg`) has
    /// `item` (`holds`) or not.
    Qmp {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        item: String,
        holds: bool,
    },
    /// Whether a QMP command was answered at all.
    Reply {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        answer: Answer,
    },
    /// A host fact and where it was read: `source` is a file path (or a program looked up
    /// in `PATH`, or a probe of a device), `value` what was read there, `None` when absent.
    Host {
        source: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// A rule of the target release's table: `change` (first in `since`, per `source`)
    /// applies to the target release `target` or not.
    Rule { change: String, since: String, target: String, applies: bool, source: String },
    /// A value of the (resolved) query: `arch`, `machine`, `virttype`.
    Query { name: String, value: String },
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = |r: &Option<String>| r.as_ref().map(|r| format!(" ({r} run)")).unwrap_or_default();
        match self {
            Fact::Qmp { command, run: r, item, holds } => {
                let verb = if *holds { "has" } else { "lacks" };
                write!(f, "QMP {command}{}: {verb} {item}", run(r))
            }
            Fact::Reply { command, run: r, answer } => {
                let how = match answer {
                    Answer::Answered => "answered",
                    Answer::Failed => "failed (QEMU returned an error)",
                    Answer::NotAsked => "not asked",
                };
                write!(f, "QMP {command}{}: {how}", run(r))
            }
            Fact::Host { source, value: Some(v) } => write!(f, "host {source} = {v}"),
            Fact::Host { source, value: None } => write!(f, "host {source}: absent"),
            Fact::Rule { change, since, target, applies, source } => {
                let how = if *applies { "applies to" } else { "does not apply to" };
                write!(f, "libvirt rule {change} (since {since}) {how} {target} [{source}]")
            }
            Fact::Query { name, value } => write!(f, "query {name} = {value}"),
        }
    }
}

/// Why a node that was considered is not in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Omission {
    /// A QMP command it needs was not asked.
    NotAsked,
    /// A QMP command it needs failed: QEMU did not say.
    NotAnswered,
    /// The target release does not print it.
    NotKnownToRelease,
    /// It does not apply to this arch, machine or virt type.
    NotApplicable,
    /// The facts it needs say no (a value not offered).
    FactsSayNo,
}

impl fmt::Display for Omission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Omission::NotAsked => "not asked",
            Omission::NotAnswered => "not answered",
            Omission::NotKnownToRelease => "not known to this release",
            Omission::NotApplicable => "not applicable",
            Omission::FactsSayNo => "the facts below say no",
        })
    }
}

/// The evidence of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// XPath-like path (module docs); `""` is the document itself.
    pub path: String,
    /// The node is in the document.
    pub present: bool,
    /// Why it is not (only when `present` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omission>,
    /// The facts consulted while deciding it (not those of its children), in order, once.
    pub facts: Vec<Fact>,
}

/// The evidence of a whole document: its nodes in the order they were decided.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Explanation {
    pub nodes: Vec<Node>,
}

impl Explanation {
    /// The node recorded at exactly `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.path == path)
    }

    /// The recorded nodes `selector` names (see [`Selector`]).
    pub fn select(&self, selector: &Selector) -> Vec<&Node> {
        self.nodes.iter().filter(|n| selector.matches(&n.path)).collect()
    }

    /// The node that accounts for document node `path`: the one recorded there, or the
    /// nearest recorded ancestor (whose facts decided the whole subtree).
    pub fn accounting_for(&self, path: &str) -> Option<&Node> {
        let mut p = path;
        loop {
            if let Some(n) = self.nodes.iter().find(|n| Selector::parse(&n.path).is_ok_and(|s| s.matches(p))) {
                return Some(n);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// The recorded ancestors of `path`, outermost first (the document's node included).
    pub fn ancestors(&self, path: &str) -> Vec<&Node> {
        let mut out = Vec::new();
        let mut p = path;
        while !p.is_empty() {
            p = parent(p);
            if let Some(n) = self.get(p) {
                out.push(n);
            }
        }
        out.reverse();
        out
    }
}

/// The path of a node's parent (`""` for a top-level node).
pub fn parent(path: &str) -> &str {
    let steps = split_steps(path);
    match steps.len() {
        0 | 1 => "",
        n => &path[..steps[..n - 1].iter().map(|s| s.len() + 1).sum::<usize>() - 1],
    }
}

/// The number of steps of a path (`0` for the document's node).
pub fn depth(path: &str) -> usize {
    split_steps(path).len()
}

/// Split a path at the `/` that are not inside a predicate's quotes.
fn split_steps(path: &str) -> Vec<&str> {
    if path.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in path.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '/' if !quoted => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// One step of a path: an element name and an optional predicate (`@name='x'` or `.='x'`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    tag: String,
    pred: Option<String>,
}

/// An XPath-like selector: steps `tag`, `tag[@name='x']`, `tag[.='x']` separated by `/`,
/// relative to `<domainCapabilities>` (a leading `/domainCapabilities/` or `/` is allowed).
/// A step without a predicate matches the element whatever its name or text; a selector
/// names a node and everything below it only when it matches the node's whole path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    steps: Vec<Step>,
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector '{selector}': {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let err = |reason: &str| SelectorError { selector: text.to_owned(), reason: reason.to_owned() };
        let body = text.strip_prefix("/domainCapabilities").unwrap_or(text);
        let body = body.strip_prefix('/').unwrap_or(body);
        let mut steps = Vec::new();
        for raw in split_steps(body) {
            let (tag, pred) = match raw.find('[') {
                None => (raw, None),
                Some(i) => {
                    let p = raw[i + 1..].strip_suffix(']').ok_or_else(|| err("a '[' without its ']'"))?;
                    let ok = (p.starts_with("@name='") || p.starts_with(".='")) && p.ends_with('\'') && p.len() > 3;
                    if !ok {
                        return Err(err("a predicate is [@name='VALUE'] or [.='VALUE']"));
                    }
                    (&raw[..i], Some(p.to_owned()))
                }
            };
            let valid = !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(err("each step is an element name, optionally with one predicate"));
            }
            steps.push(Step { tag: tag.to_owned(), pred });
        }
        Ok(Selector { text: text.to_owned(), steps })
    }

    /// The selector as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this selector names node `path` itself (predicates must agree; a step
    /// without one matches any).
    pub fn matches(&self, path: &str) -> bool {
        let steps = split_steps(path);
        steps.len() == self.steps.len()
            && self.steps.iter().zip(&steps).all(|(s, p)| {
                let (tag, pred) = match p.find('[') {
                    None => (*p, None),
                    Some(i) => (&p[..i], p[i + 1..].strip_suffix(']')),
                };
                s.tag == tag && s.pred.as_deref().is_none_or(|want| pred == Some(want))
            })
    }
}

/// What one selector names in an explanation: the nodes it matches with everything
/// recorded below them, and the recorded ancestors of the first (whose facts decided them
/// too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub selector: String,
    /// How the selector was answered when it names no recorded node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub context: Vec<Node>,
    pub nodes: Vec<Node>,
}

/// A selector that names nothing: neither a node of the document nor anything the
/// derivation considered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector '{0}' matches no element of the document and nothing the derivation considered")]
pub struct NoMatch(pub String);

impl Explanation {
    fn with_descendants(&self, roots: &[&Node]) -> Vec<Node> {
        self.nodes
            .iter()
            .filter(|n| {
                roots
                    .iter()
                    .any(|r| n.path == r.path || r.path.is_empty() || n.path.starts_with(&format!("{}/", r.path)))
            })
            .cloned()
            .collect()
    }

    /// Answer `selector` for the document whose element paths are `document` (see
    /// [`document_paths`]): the recorded nodes it matches; else, for an element of the
    /// document decided as part of an ancestor, that ancestor; else, for something not in the
    /// document, its nearest recorded ancestor that was left out (which says why).
    pub fn selection(&self, selector: &Selector, document: &[String]) -> Result<Selection, NoMatch> {
        let matched = self.select(selector);
        let context_of = |n: &Node| self.ancestors(&n.path).into_iter().cloned().collect::<Vec<_>>();
        if let Some(first) = matched.first() {
            return Ok(Selection {
                selector: selector.as_str().to_owned(),
                note: None,
                context: context_of(first),
                nodes: self.with_descendants(&matched),
            });
        }
        if let Some(doc) = document.iter().find(|p| selector.matches(p)) {
            if let Some(n) = self.accounting_for(doc) {
                return Ok(Selection {
                    selector: selector.as_str().to_owned(),
                    note: Some(format!("{doc} is decided as part of {}", display_path(&n.path))),
                    context: context_of(n),
                    nodes: vec![n.clone()],
                });
            }
        }
        for k in (1..selector.steps.len()).rev() {
            let prefix = Selector { text: String::new(), steps: selector.steps[..k].to_vec() };
            if let Some(n) = self.nodes.iter().find(|n| !n.present && prefix.matches(&n.path)) {
                return Ok(Selection {
                    selector: selector.as_str().to_owned(),
                    note: Some(format!("not in the document: {} is left out", display_path(&n.path))),
                    context: context_of(n),
                    nodes: vec![n.clone()],
                });
            }
        }
        Err(NoMatch(selector.as_str().to_owned()))
    }
}

/// A path for people: the document's node is `/`.
pub fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// The key a fact is compared by between two explanations (`capsd explain --diff`): a
/// rule's target release is left out, since it always differs between two releases.
pub fn diff_key(f: &Fact) -> String {
    match f {
        Fact::Rule { change, since, applies, .. } => {
            format!("libvirt rule {change} (since {since}) {}", if *applies { "applies" } else { "does not apply" })
        }
        other => other.to_string(),
    }
}

/// One node whose presence differs between two explanations, and the facts of it or its
/// ancestors that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    pub path: String,
    /// In the document of A / of B.
    pub in_a: bool,
    pub in_b: bool,
    /// Facts (by [`diff_key`]) only A / only B cites for this node or its ancestors.
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
}

/// What differs between two explanations: facts cited only by one, and the nodes whose
/// presence changed with the differing facts that decided them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExplanationDiff {
    pub facts_only_a: Vec<String>,
    pub facts_only_b: Vec<String>,
    pub changed: Vec<NodeChange>,
}

impl ExplanationDiff {
    pub fn is_empty(&self) -> bool {
        self.facts_only_a.is_empty() && self.facts_only_b.is_empty() && self.changed.is_empty()
    }
}

/// Compare two explanations; `doc_a`/`doc_b` are their documents' element paths (a node
/// recorded in neither explanation is present when its document has it).
pub fn diff(a: &Explanation, doc_a: &[String], b: &Explanation, doc_b: &[String]) -> ExplanationDiff {
    use std::collections::BTreeSet;
    let keys = |e: &Explanation| e.nodes.iter().flat_map(|n| n.facts.iter().map(diff_key)).collect::<BTreeSet<_>>();
    let (ka, kb) = (keys(a), keys(b));
    let node_keys = |e: &Explanation, path: &str| {
        let mut out: BTreeSet<String> = e.get(path).map(|n| n.facts.iter().map(diff_key).collect()).unwrap_or_default();
        for anc in e.ancestors(path) {
            out.extend(anc.facts.iter().map(diff_key));
        }
        out
    };
    let present = |e: &Explanation, doc: &[String], path: &str| match e.get(path) {
        Some(n) => n.present,
        None => doc.iter().any(|p| p == path),
    };
    let mut paths: Vec<String> = Vec::new();
    for p in a.nodes.iter().map(|n| &n.path).chain(b.nodes.iter().map(|n| &n.path)).chain(doc_a).chain(doc_b) {
        if !paths.contains(p) {
            paths.push(p.clone());
        }
    }
    let mut changed = Vec::new();
    for path in paths {
        let (in_a, in_b) = (present(a, doc_a, &path), present(b, doc_b, &path));
        if in_a == in_b {
            continue;
        }
        let (fa, fb) = (node_keys(a, &path), node_keys(b, &path));
        changed.push(NodeChange {
            only_a: fa.difference(&fb).cloned().collect(),
            only_b: fb.difference(&fa).cloned().collect(),
            path,
            in_a,
            in_b,
        });
    }
    ExplanationDiff {
        facts_only_a: ka.difference(&kb).cloned().collect(),
        facts_only_b: kb.difference(&ka).cloned().collect(),
        changed,
    }
}

/// The path step of an element: `tag[@name='x']` with a `name` attribute, `tag[.='text']`
/// with text, `tag` otherwise.
pub fn step(tag: &str, name: Option<&str>, text: Option<&str>) -> String {
    match (name, text) {
        (Some(n), _) => format!("{tag}[@name='{n}']"),
        (None, Some(t)) => format!("{tag}[.='{t}']"),
        (None, None) => tag.to_owned(),
    }
}

/// The step of an enum value: `value[.='v']`.
pub fn value_step(v: &str) -> String {
    step("value", None, Some(v))
}

/// The paths of every element of a document written by [`crate::xml::to_xml`], in
/// document order (the root `<domainCapabilities>` is `""` and not listed).
pub fn document_paths(caps: &crate::DomainCapabilities) -> Vec<String> {
    document_nodes(caps).into_iter().map(|(p, _)| p).collect()
}

/// [`document_paths`] with each element's other attributes (`supported='yes'`, ...), as
/// written: what a node's evidence decides besides its children.
pub fn document_nodes(caps: &crate::DomainCapabilities) -> Vec<(String, String)> {
    use quick_xml::events::{BytesStart, Event};
    let xml = crate::xml::to_xml(caps);
    let mut reader = quick_xml::Reader::from_str(&xml);
    // Paths of the open elements; the element just opened, waiting for its text or children.
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Option<(String, Option<String>, String)> = None;
    let mut out = Vec::new();
    let read = |e: &BytesStart<'_>| {
        let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let (mut name, mut attrs) = (None, Vec::new());
        for a in e.attributes().flatten() {
            let v = a.unescape_value().map(|v| v.into_owned()).unwrap_or_default();
            if a.key.as_ref() == b"name" {
                name = Some(v);
            } else {
                attrs.push(format!("{}='{v}'", String::from_utf8_lossy(a.key.as_ref())));
            }
        }
        (tag, name, attrs.join(" "))
    };
    let join = |stack: &[String], s: &str| match stack.last().map(String::as_str) {
        None | Some("") => s.to_owned(),
        Some(base) => format!("{base}/{s}"),
    };
    let mut depth = 0usize;
    loop {
        let ev = match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(ev) => ev,
        };
        match ev {
            Event::Start(e) => {
                if let Some((tag, name, attrs)) = pending.take() {
                    let p = join(&stack, &step(&tag, name.as_deref(), None));
                    out.push((p.clone(), attrs));
                    stack.push(p);
                }
                depth += 1;
                if depth == 1 {
                    stack.push(String::new());
                    continue;
                }
                pending = Some(read(&e));
            }
            Event::Empty(e) => {
                if let Some((tag, name, attrs)) = pending.take() {
                    let p = join(&stack, &step(&tag, name.as_deref(), None));
                    out.push((p.clone(), attrs));
                    stack.push(p);
                }
                let (tag, name, attrs) = read(&e);
                out.push((join(&stack, &step(&tag, name.as_deref(), None)), attrs));
            }
            Event::Text(t) => {
                let text = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                if text.trim().is_empty() {
                    continue;
                }
                if let Some((tag, name, attrs)) = pending.take() {
                    let p = join(&stack, &step(&tag, name.as_deref(), Some(&text)));
                    out.push((p.clone(), attrs));
                    stack.push(p);
                }
            }
            Event::End(_) => {
                if let Some((tag, name, attrs)) = pending.take() {
                    // An element with neither text nor children.
                    out.push((join(&stack, &step(&tag, name.as_deref(), None)), attrs));
                } else {
                    stack.pop();
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    out
}

struct Trace {
    nodes: Vec<Node>,
    /// Indices into `nodes` of the open nodes, outermost first.
    open: Vec<usize>,
}

thread_local! {
    static TRACE: RefCell<Option<Trace>> = const { RefCell::new(None) };
}

/// Whether a recorder is installed on this thread.
pub fn enabled() -> bool {
    TRACE.with(|t| t.borrow().is_some())
}

/// Run `f` with a recorder installed on this thread and return its result and the
/// evidence it recorded. Nested calls record into their own recorder.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Explanation) {
    let root = Node { path: String::new(), present: true, omitted: None, facts: Vec::new() };
    let saved = TRACE.with(|t| t.borrow_mut().replace(Trace { nodes: vec![root], open: vec![0] }));
    struct Restore(Option<Trace>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let saved = self.0.take();
            TRACE.with(|t| *t.borrow_mut() = saved);
        }
    }
    let _restore = Restore(saved);
    let value = f();
    let trace = TRACE.with(|t| t.borrow_mut().take());
    (value, Explanation { nodes: trace.map(|t| t.nodes).unwrap_or_default() })
}

/// Add the fact `f` builds to the innermost open node (once; nothing when disabled).
pub fn fact(f: impl FnOnce() -> Fact) {
    TRACE.with(|t| {
        let mut t = t.borrow_mut();
        let Some(t) = t.as_mut() else { return };
        let fact = f();
        let Some(&i) = t.open.last() else { return };
        let facts = &mut t.nodes[i].facts;
        if !facts.contains(&fact) {
            facts.push(fact);
        }
    });
}

/// Decide a node: `step` (built only when recording) is appended to the innermost open
/// node's path, `decide` runs with the node open (the facts it consults are the node's),
/// and `present` says whether its result put the node in the document. A node decided
/// twice keeps the facts of both.
pub fn node<T>(step: impl FnOnce() -> String, decide: impl FnOnce() -> T, present: impl FnOnce(&T) -> bool) -> T {
    if !enabled() {
        return decide();
    }
    let opened = TRACE.with(|t| {
        let mut t = t.borrow_mut();
        let t = t.as_mut()?;
        let parent = t.open.last().map(|&i| t.nodes[i].path.clone()).unwrap_or_default();
        let s = step();
        let path = if parent.is_empty() { s } else { format!("{parent}/{s}") };
        let i = match t.nodes.iter().position(|n| n.path == path) {
            Some(i) => i,
            None => {
                t.nodes.push(Node { path, present: false, omitted: None, facts: Vec::new() });
                t.nodes.len() - 1
            }
        };
        t.open.push(i);
        Some(i)
    });
    let value = decide();
    let is_present = present(&value);
    if let Some(i) = opened {
        TRACE.with(|t| {
            if let Some(t) = t.borrow_mut().as_mut() {
                t.open.pop();
                let n = &mut t.nodes[i];
                n.present |= is_present;
                n.omitted = if n.present { None } else { n.omitted.or(Some(infer_omission(&n.facts))) };
            }
        });
    }
    value
}

/// Say why the innermost open node is left out (overrides the inferred reason).
pub fn omitted(reason: Omission) {
    TRACE.with(|t| {
        if let Some(t) = t.borrow_mut().as_mut() {
            if let Some(&i) = t.open.last() {
                t.nodes[i].omitted = Some(reason);
            }
        }
    });
}

/// The reason a node left out is left out, from its facts: a rule of the release that does
/// not apply, else a command not asked or failed, else the query alone, else the facts.
fn infer_omission(facts: &[Fact]) -> Omission {
    if facts.iter().any(|f| matches!(f, Fact::Rule { applies: false, .. })) {
        return Omission::NotKnownToRelease;
    }
    if facts.iter().any(|f| matches!(f, Fact::Reply { answer: Answer::Failed, .. })) {
        return Omission::NotAnswered;
    }
    if facts.iter().any(|f| matches!(f, Fact::Reply { answer: Answer::NotAsked, .. })) {
        return Omission::NotAsked;
    }
    if !facts.is_empty() && facts.iter().all(|f| matches!(f, Fact::Query { .. })) {
        return Omission::NotApplicable;
    }
    Omission::FactsSayNo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qmp(item: &str, holds: bool) -> Fact {
        Fact::Qmp { command: "qom-list-types".into(), run: None, item: item.into(), holds }
    }

    #[test]
    fn nothing_is_recorded_without_a_recorder() {
        let mut built = false;
        let v = node(
            || {
                built = true;
                "x".into()
            },
            || 5,
            |_| true,
        );
        fact(|| unreachable!("not built when disabled"));
        assert_eq!(v, 5);
        assert!(!built);
        assert!(!enabled());
    }

    #[test]
    fn facts_go_to_the_innermost_node_and_omissions_say_why() {
        let ((), ex) = record(|| {
            fact(|| qmp("root-fact", true));
            node(
                || "devices".into(),
                || {
                    node(
                        || "tpm".into(),
                        || {
                            fact(|| qmp("tpm-crb", true));
                            node(|| value_step("emulator"), || fact(|| qmp("x", false)), |_| false);
                        },
                        |_| true,
                    );
                    node(
                        || "crypto".into(),
                        || {
                            fact(|| Fact::Rule {
                                change: "Crypto".into(),
                                since: "9.1.0".into(),
                                target: "9.0.0".into(),
                                applies: false,
                                source: "NEWS".into(),
                            })
                        },
                        |_| false,
                    );
                },
                |_| true,
            );
        });
        assert!(!enabled(), "the recorder is removed afterwards");
        assert_eq!(ex.get("").unwrap().facts, [qmp("root-fact", true)]);
        assert_eq!(ex.get("devices/tpm").unwrap().facts, [qmp("tpm-crb", true)]);
        let v = ex.get("devices/tpm/value[.='emulator']").unwrap();
        assert!(!v.present);
        assert_eq!(v.omitted, Some(Omission::FactsSayNo));
        assert_eq!(ex.get("devices/crypto").unwrap().omitted, Some(Omission::NotKnownToRelease));
        assert_eq!(ex.ancestors("devices/tpm/value[.='emulator']").len(), 3);
    }

    #[test]
    fn selectors() {
        let s = Selector::parse("devices/tpm/enum[@name='backendModel']/value[.='emulator']").unwrap();
        assert!(s.matches("devices/tpm/enum[@name='backendModel']/value[.='emulator']"));
        assert!(!s.matches("devices/tpm/enum[@name='backendModel']/value[.='passthrough']"));
        let any = Selector::parse("/domainCapabilities/devices/tpm/enum/value").unwrap();
        assert!(any.matches("devices/tpm/enum[@name='model']/value[.='tpm-crb']"));
        assert!(!any.matches("devices/tpm/enum[@name='model']"));
        let slash = Selector::parse("os/loader/value[.='/usr/share/OVMF/OVMF_CODE.fd']").unwrap();
        assert!(slash.matches("os/loader/value[.='/usr/share/OVMF/OVMF_CODE.fd']"));
        assert_eq!(parent("os/loader/value[.='/usr/x']"), "os/loader");
        assert_eq!(parent("os"), "");
        for bad in ["devices/[x]", "devices/tpm[@name=x]", "devices//tpm", "a[.='x'"] {
            let e = Selector::parse(bad).unwrap_err();
            assert_eq!(e.selector, bad);
        }
    }

    #[test]
    fn document_paths_name_every_element() {
        let caps = crate::xml::from_xml(
            "<domainCapabilities>\n  <path>/usr/bin/qemu</path>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n  <vcpu max='4'/>\n  <devices>\n    \
             <tpm supported='yes'>\n      <enum name='model'>\n        <value>tpm-crb</value>\n      </enum>\n    \
             </tpm>\n  </devices>\n</domainCapabilities>\n",
        )
        .unwrap();
        let paths = document_paths(&caps);
        for want in [
            "path[.='/usr/bin/qemu']",
            "domain[.='kvm']",
            "vcpu",
            "devices",
            "devices/tpm",
            "devices/tpm/enum[@name='model']",
            "devices/tpm/enum[@name='model']/value[.='tpm-crb']",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
        }
    }
}
