//! `diff`: what one capabilities document states that another does not, fact by fact.
//!
//! A document is flattened into facts: one per attribute, per element text and per leaf
//! element, each named by an XPath-like key in which repeated elements are told apart by
//! what identifies them, not by position: `enum[@name='bus']`, `mode[@name='custom']`,
//! `feature[@name='vme']`, `blockers[@model='Haswell']`, and enum values and CPU models by
//! their text (`value[.='virtio']`, `model[.='Haswell']`). So
//! `/domainCapabilities/devices/disk/enum[@name='bus']/value[.='sata']` is the fact "disk bus
//! sata is listed", and `/domainCapabilities/cpu/mode[@name='custom']/model[.='Haswell']/@usable`
//! has the value `no` or `yes`. Reordering is not a difference; a value listed in only one
//! document, an element only one has, and an attribute with two different values are.

use capsd_core::DomainCapabilities;
use serde::Serialize;

use crate::tree::{self, Element};

/// One fact: a key and, for attributes and texts, a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The facts of a document, in document order.
pub fn facts(caps: &DomainCapabilities) -> Vec<Fact> {
    let xml = capsd_core::xml::to_xml(caps);
    // The writer's own output is always well-formed and small.
    let root = match tree::parse(&xml) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("re-reading the formatted document failed: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    walk(&root, "", &mut out);
    let mut seen = std::collections::HashSet::new();
    out.retain(|f: &Fact| seen.insert(f.path.clone()));
    out
}

/// The attribute that identifies an element among its siblings, if any.
fn key_attr(el: &Element) -> Option<&'static str> {
    if el.name == "blockers" {
        Some("model")
    } else if el.attr("name").is_some() {
        Some("name")
    } else {
        None
    }
}

fn walk(el: &Element, parent: &str, out: &mut Vec<Fact>) {
    let key = key_attr(el);
    let text_is_key = key.is_none() && el.children.is_empty() && matches!(el.name.as_str(), "value" | "model");
    let selector = match key {
        Some(k) => format!("{}[@{k}='{}']", el.name, el.attr(k).unwrap_or_default()),
        None if text_is_key => format!("{}[.='{}']", el.name, el.text),
        None => el.name.clone(),
    };
    let path = format!("{parent}/{selector}");
    let before = out.len();
    for (k, v) in &el.attrs {
        if Some(k.as_str()) != key {
            out.push(Fact { path: format!("{path}/@{k}"), value: Some(v.clone()) });
        }
    }
    if !text_is_key && !el.text.is_empty() {
        out.push(Fact { path: path.clone(), value: Some(el.text.clone()) });
    }
    if out.len() == before && el.children.is_empty() {
        out.push(Fact { path: path.clone(), value: None });
    }
    for c in &el.children {
        walk(c, &path, out);
    }
}

/// A fact with different values in the two documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub path: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// The differences between two documents.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    /// Facts only the first document states.
    pub only_a: Vec<Fact>,
    /// Facts only the second document states.
    pub only_b: Vec<Fact>,
    /// Facts both state with different values.
    pub changed: Vec<Changed>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.only_a.is_empty() && self.only_b.is_empty() && self.changed.is_empty()
    }

    /// Human form: `- fact` only in A, `+ fact` only in B, `~ fact: a -> b` changed.
    pub fn to_text(&self, a_name: &str, b_name: &str) -> String {
        let mut s = format!("--- {a_name}\n+++ {b_name}\n");
        let show = |f: &Fact| match &f.value {
            Some(v) => format!("{} = {v}", f.path),
            None => f.path.clone(),
        };
        for c in &self.changed {
            s.push_str(&format!(
                "~ {}: {} -> {}\n",
                c.path,
                c.a.as_deref().unwrap_or("(present)"),
                c.b.as_deref().unwrap_or("(present)")
            ));
        }
        for f in &self.only_a {
            s.push_str(&format!("- {}\n", show(f)));
        }
        for f in &self.only_b {
            s.push_str(&format!("+ {}\n", show(f)));
        }
        s.push_str(&format!(
            "{} only in {a_name}, {} only in {b_name}, {} changed\n",
            self.only_a.len(),
            self.only_b.len(),
            self.changed.len()
        ));
        s
    }
}

/// Compare two documents fact by fact.
pub fn diff(a: &DomainCapabilities, b: &DomainCapabilities) -> Diff {
    let fa = facts(a);
    let fb = facts(b);
    let ib: std::collections::HashMap<&str, &Fact> = fb.iter().map(|f| (f.path.as_str(), f)).collect();
    let ia: std::collections::HashMap<&str, &Fact> = fa.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut d = Diff::default();
    for f in &fa {
        match ib.get(f.path.as_str()) {
            None => d.only_a.push(f.clone()),
            Some(g) if g.value != f.value => {
                d.changed.push(Changed { path: f.path.clone(), a: f.value.clone(), b: g.value.clone() })
            }
            Some(_) => {}
        }
    }
    d.only_b = fb.iter().filter(|f| !ia.contains_key(f.path.as_str())).cloned().collect();
    d
}
