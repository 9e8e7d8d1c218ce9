//! libvirt's CPU model definitions (the `cpu_map` directory its packages install, LGPL
//! data), parsed into the facts the CPU derivation uses: for x86 the vendors (CPUID vendor
//! strings), the features (their CPUID/MSR bits, QEMU spellings, migratability) and the
//! models (decode flags, signatures, vendor, features, removed features); for ppc64 the
//! models and their vendor.
//!
//! Both layouts of `index.xml` are read: the flat `<include>` list of libvirt up to 10.9
//! and the `<group>`ed one of 10.10 on, whose model files include versioned aliases
//! (`Broadwell-v1` is `<model name='Broadwell'/>` and nothing else: `Broadwell`'s canonical
//! name) and features marked `added='yes'` (not part of the model's definition). Any other
//! layout is refused ([`CpuMapError::UnknownFormat`]) rather than guessed at.
//!
//! The map is read at probe time from the host (see [`super::host`]); nothing of it is
//! part of this repository.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};

/// Error from parsing a cpu_map file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpuMapError {
    #[error("cpu_map file {file}: XML error: {message}")]
    Xml { file: String, message: String },
    #[error("cpu_map file {file}: {message}")]
    Invalid { file: String, message: String },
    #[error("cpu_map: {file} is included by index.xml but was not read")]
    Missing { file: String },
    /// `index.xml` is not laid out as any libvirt release lays it out (a format this capsd
    /// does not know): guessing what it means could state models that do not exist.
    #[error("cpu_map index.xml: unknown format: {message}")]
    UnknownFormat { message: String },
}

/// The parsed cpu_map, per architecture family. `None` for a family the map does not cover.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuMap {
    /// Where it was read from (informational).
    #[serde(default)]
    pub dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x86: Option<X86Map>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppc64: Option<PpcMap>,
}

/// One x86 data item: a CPUID leaf/subleaf or an MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DataKey {
    Cpuid { leaf: u32, subleaf: u32 },
    Msr { index: u32 },
}

/// Registers of one item: `[eax, ebx, ecx, edx]` for CPUID, `[eax, 0, 0, edx]` for an MSR.
pub type Regs = [u32; 4];

/// A set of CPUID/MSR bits.
///
/// Serialized as a list of `[key, regs]` pairs: JSON map keys must be strings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "Vec<(DataKey, Regs)>", into = "Vec<(DataKey, Regs)>")]
pub struct X86Data(pub BTreeMap<DataKey, Regs>);

impl From<Vec<(DataKey, Regs)>> for X86Data {
    fn from(v: Vec<(DataKey, Regs)>) -> Self {
        X86Data(v.into_iter().collect())
    }
}

impl From<X86Data> for Vec<(DataKey, Regs)> {
    fn from(d: X86Data) -> Self {
        d.0.into_iter().collect()
    }
}

impl X86Data {
    /// OR the bits of `item` into this data.
    pub fn add_item(&mut self, key: DataKey, regs: Regs) {
        let e = self.0.entry(key).or_insert([0; 4]);
        for (a, b) in e.iter_mut().zip(regs) {
            *a |= b;
        }
    }
    /// OR all bits of `other` into this data.
    pub fn add(&mut self, other: &X86Data) {
        for (k, r) in &other.0 {
            self.add_item(*k, *r);
        }
    }
    /// Clear every bit that `other` has.
    pub fn subtract(&mut self, other: &X86Data) {
        for (k, r) in self.0.iter_mut() {
            if let Some(o) = other.0.get(k) {
                for (a, b) in r.iter_mut().zip(o) {
                    *a &= !b;
                }
            }
        }
    }
    /// Whether every bit of `sub` is set here.
    pub fn contains(&self, sub: &X86Data) -> bool {
        sub.0
            .iter()
            .filter(|(_, r)| r.iter().any(|&x| x != 0))
            .all(|(k, r)| self.0.get(k).is_some_and(|mine| mine.iter().zip(r).all(|(m, s)| m & s == *s)))
    }
    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|r| r.iter().all(|&x| x == 0))
    }
    /// The registers of one item, zero when absent.
    pub fn get(&self, key: DataKey) -> Regs {
        self.0.get(&key).copied().unwrap_or([0; 4])
    }
}

/// An x86 CPU vendor: libvirt's name and the CPUID vendor string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X86Vendor {
    pub name: String,
    pub string: String,
}

/// An x86 CPU feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X86Feature {
    pub name: String,
    /// Other spellings with their source (`qemu`, `linux`).
    #[serde(default)]
    pub aliases: Vec<(String, String)>,
    pub migratable: bool,
    pub data: X86Data,
}

impl X86Feature {
    /// Whether the feature is (partly) an MSR bit rather than CPUID only.
    pub fn is_msr(&self) -> bool {
        self.data.0.keys().any(|k| matches!(k, DataKey::Msr { .. }))
    }
}

/// A model's CPU signature (family, model, optional set of steppings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X86Signature {
    pub family: u32,
    pub model: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steppings: Option<Vec<u32>>,
}

/// An x86 CPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X86Model {
    pub name: String,
    pub decode_host: bool,
    pub decode_guest: bool,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub signatures: Vec<X86Signature>,
    /// The features of the model (after its ancestor's, without removed ones).
    pub features: Vec<String>,
    /// Features removed from the model in later libvirt versions.
    #[serde(default)]
    pub removed: Vec<String>,
    /// The versioned name this model is an alias of (`Broadwell` -> `Broadwell-v1`): set
    /// when a later model of the map names this one as its ancestor and changes nothing
    /// (no signature, vendor or feature of its own). libvirt prints it as `canonical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
}

/// The x86 part of the map, in the map's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct X86Map {
    pub vendors: Vec<X86Vendor>,
    pub features: Vec<X86Feature>,
    pub models: Vec<X86Model>,
}

impl X86Map {
    pub fn feature(&self, name: &str) -> Option<&X86Feature> {
        self.features.iter().find(|f| f.name == name)
    }
    /// The feature QEMU calls `qemu_name`: same name, or a `source='qemu'` alias.
    pub fn feature_from_qemu(&self, qemu_name: &str) -> Option<&X86Feature> {
        self.feature(qemu_name)
            .or_else(|| self.features.iter().find(|f| f.aliases.iter().any(|(a, src)| a == qemu_name && src == "qemu")))
    }
    pub fn model(&self, name: &str) -> Option<&X86Model> {
        self.models.iter().find(|m| m.name == name)
    }
    pub fn vendor_by_string(&self, s: &str) -> Option<&X86Vendor> {
        self.vendors.iter().find(|v| v.string == s)
    }
    /// The CPUID bits of a list of feature names (unknown names are an error).
    pub fn data_of(&self, features: &[String]) -> Result<X86Data, String> {
        let mut d = X86Data::default();
        for f in features {
            d.add(&self.feature(f).ok_or_else(|| format!("unknown feature {f}"))?.data);
        }
        Ok(d)
    }
}

/// A ppc64 model: name, vendor and the processor version register values it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PpcModel {
    pub name: String,
    #[serde(default)]
    pub vendor: Option<String>,
    /// `<pvr value=... mask=...>`: a host whose PVR, masked, equals `value` has this model.
    #[serde(default)]
    pub pvrs: Vec<Pvr>,
}

/// One `<pvr>` of a ppc64 model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pvr {
    pub value: u32,
    pub mask: u32,
}

impl PpcMap {
    /// The model of a host CPU with processor version register `pvr`: the first model (in
    /// the map's order) with a `<pvr>` whose masked value matches, as libvirt's ppc64 CPU
    /// driver looks it up.
    pub fn model_for_pvr(&self, pvr: u32) -> Option<&PpcModel> {
        self.models.iter().find(|m| m.pvrs.iter().any(|p| pvr & p.mask == p.value))
    }
}

/// The ppc64 part of the map.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PpcMap {
    pub vendors: Vec<String>,
    pub models: Vec<PpcModel>,
}

/// A minimal element tree, enough for cpu_map files.
#[derive(Debug, Clone, Default)]
struct Elem {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Elem>,
}

impl Elem {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn elems<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Elem> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn start_elem(file: &str, e: &BytesStart) -> Result<Elem, CpuMapError> {
    let xml_err = |m: String| CpuMapError::Xml { file: file.to_owned(), message: m };
    let mut el = Elem { name: String::from_utf8_lossy(e.name().as_ref()).into_owned(), ..Default::default() };
    for a in e.attributes() {
        let a = a.map_err(|e| xml_err(e.to_string()))?;
        let v = a.unescape_value().map_err(|e| xml_err(e.to_string()))?;
        el.attrs.push((String::from_utf8_lossy(a.key.as_ref()).into_owned(), v.into_owned()));
    }
    Ok(el)
}

/// Parse one XML document into its root element.
fn parse_tree(file: &str, text: &str) -> Result<Elem, CpuMapError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Elem> = vec![Elem::default()];
    loop {
        match reader.read_event() {
            Err(e) => return Err(CpuMapError::Xml { file: file.to_owned(), message: e.to_string() }),
            Ok(Event::Start(e)) => stack.push(start_elem(file, &e)?),
            Ok(Event::Empty(e)) => {
                let el = start_elem(file, &e)?;
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            }
            Ok(Event::End(_)) => {
                let el = stack
                    .pop()
                    .filter(|_| !stack.is_empty())
                    .ok_or_else(|| CpuMapError::Xml { file: file.to_owned(), message: "unbalanced end tag".into() })?;
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
        }
    }
    let mut doc = stack
        .pop()
        .filter(|_| stack.is_empty())
        .ok_or_else(|| CpuMapError::Xml { file: file.to_owned(), message: "unclosed element".into() })?;
    doc.children.pop().ok_or_else(|| CpuMapError::Invalid { file: file.to_owned(), message: "empty document".into() })
}

fn parse_u32(file: &str, what: &str, s: &str) -> Result<u32, CpuMapError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| CpuMapError::Invalid { file: file.to_owned(), message: format!("bad number {what}='{s}'") })
}

/// The families [`parse`] reads.
const FAMILIES: [&str; 2] = ["x86", "ppc64"];

/// The files an `<arch>` of `index.xml` includes, in order. libvirt up to 10.9 lists
/// `<include filename=.../>` directly in `<arch>`; from 10.10 on the model files sit in
/// `<group name=...>` wrappers (one group per vendor). Anything else is a format this
/// capsd does not know.
fn arch_includes(arch: &Elem) -> Result<Vec<&str>, CpuMapError> {
    fn walk<'a>(el: &'a Elem, depth: usize, out: &mut Vec<&'a str>) -> Result<(), CpuMapError> {
        for c in &el.children {
            match c.name.as_str() {
                "include" => out.push(
                    c.attr("filename")
                        .ok_or_else(|| CpuMapError::UnknownFormat { message: "<include> without filename".into() })?,
                ),
                "group" if depth == 0 => walk(c, depth + 1, out)?,
                other => {
                    return Err(CpuMapError::UnknownFormat {
                        message: format!("unexpected <{other}> in <{}>", el.name),
                    })
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(arch, 0, &mut out)?;
    Ok(out)
}

/// The `<arch>` elements of `index.xml` for the families [`parse`] reads.
fn index_arches(index: &Elem) -> Result<Vec<&Elem>, CpuMapError> {
    if index.name != "cpus" {
        return Err(CpuMapError::UnknownFormat { message: format!("root element <{}>, not <cpus>", index.name) });
    }
    let mut arches = Vec::new();
    for c in &index.children {
        if c.name != "arch" {
            return Err(CpuMapError::UnknownFormat { message: format!("unexpected <{}> in <cpus>", c.name) });
        }
        if c.attr("name").is_some_and(|n| FAMILIES.contains(&n)) {
            arches.push(c);
        }
    }
    Ok(arches)
}

/// Parse a cpu_map directory's content: `files` maps file names (as `index.xml` includes
/// them) to their text. Only the x86 and ppc64 families are read.
pub fn parse(dir: &str, files: &BTreeMap<String, String>) -> Result<CpuMap, CpuMapError> {
    let index_text = files.get("index.xml").ok_or_else(|| CpuMapError::Missing { file: "index.xml".into() })?;
    let index = parse_tree("index.xml", index_text)?;
    let mut map = CpuMap { dir: dir.to_owned(), x86: None, ppc64: None };
    for arch in index_arches(&index)? {
        let mut docs = Vec::new();
        for inc in arch_includes(arch)? {
            let text = files.get(inc).ok_or_else(|| CpuMapError::Missing { file: inc.to_owned() })?;
            docs.push((inc, parse_tree(inc, text)?));
        }
        match arch.attr("name") {
            Some("x86") => map.x86 = Some(parse_x86(&docs)?),
            Some("ppc64") => map.ppc64 = Some(parse_ppc(&docs)?),
            _ => {}
        }
    }
    Ok(map)
}

/// The file names `index.xml` includes for the families [`parse`] reads.
pub fn included_files(index_text: &str) -> Result<Vec<String>, CpuMapError> {
    let index = parse_tree("index.xml", index_text)?;
    let mut out = Vec::new();
    for arch in index_arches(&index)? {
        out.extend(arch_includes(arch)?.into_iter().map(str::to_owned));
    }
    Ok(out)
}

fn parse_x86(docs: &[(&str, Elem)]) -> Result<X86Map, CpuMapError> {
    let mut map = X86Map::default();
    for (file, doc) in docs {
        let invalid = |m: String| CpuMapError::Invalid { file: (*file).to_owned(), message: m };
        for el in &doc.children {
            let name = el.attr("name").ok_or_else(|| invalid(format!("<{}> without name", el.name)))?.to_owned();
            match el.name.as_str() {
                "vendor" => {
                    let string = el.attr("string").ok_or_else(|| invalid(format!("vendor {name} without string")))?;
                    if string.len() != 12 {
                        return Err(invalid(format!("vendor string '{string}' is not 12 characters")));
                    }
                    map.vendors.push(X86Vendor { name, string: string.to_owned() });
                }
                "feature" => {
                    let mut data = X86Data::default();
                    let mut aliases = Vec::new();
                    for c in &el.children {
                        let num = |a: &str| -> Result<u32, CpuMapError> {
                            c.attr(a).map(|v| parse_u32(file, a, v)).unwrap_or(Ok(0))
                        };
                        match c.name.as_str() {
                            "alias" => aliases.push((
                                c.attr("name").unwrap_or_default().to_owned(),
                                c.attr("source").unwrap_or_default().to_owned(),
                            )),
                            "cpuid" => data.add_item(
                                DataKey::Cpuid { leaf: num("eax_in")?, subleaf: num("ecx_in")? },
                                [num("eax")?, num("ebx")?, num("ecx")?, num("edx")?],
                            ),
                            "msr" => {
                                data.add_item(DataKey::Msr { index: num("index")? }, [num("eax")?, 0, 0, num("edx")?])
                            }
                            other => return Err(invalid(format!("feature {name}: unexpected <{other}>"))),
                        }
                    }
                    let migratable = el.attr("migratable") != Some("no");
                    map.features.push(X86Feature { name, aliases, migratable, data });
                }
                "model" => {
                    if map.model(&name).is_some() {
                        return Err(invalid(format!("model {name} defined twice")));
                    }
                    let (model, alias_of) = parse_x86_model(file, el, name, &map)?;
                    if let Some(anc) = alias_of {
                        let ancestor = map.models.iter_mut().find(|m| m.name == anc);
                        if let Some(a) = ancestor {
                            if let Some(c) = &a.canonical {
                                return Err(invalid(format!("model {}: {anc} is already an alias of {c}", model.name)));
                            }
                            a.canonical = Some(model.name.clone());
                        }
                    }
                    map.models.push(model);
                }
                other => return Err(invalid(format!("unexpected <{other}>"))),
            }
        }
    }
    // Every model feature must be a known feature: the decoding relies on it.
    for m in &map.models {
        for f in m.features.iter().chain(&m.removed) {
            if map.feature(f).is_none() {
                return Err(CpuMapError::Invalid {
                    file: format!("model {}", m.name),
                    message: format!("unknown feature {f}"),
                });
            }
        }
    }
    Ok(map)
}

/// One `<model>` of the x86 map, and the name of its ancestor when the model only renames
/// it (no signature, vendor or feature element of its own: a versioned alias such as
/// `Broadwell-v1` of `Broadwell`).
fn parse_x86_model(
    file: &str,
    el: &Elem,
    name: String,
    map: &X86Map,
) -> Result<(X86Model, Option<String>), CpuMapError> {
    let invalid = |m: String| CpuMapError::Invalid { file: file.to_owned(), message: m };
    let mut model = X86Model {
        name,
        decode_host: true,
        decode_guest: true,
        vendor: None,
        signatures: Vec::new(),
        features: Vec::new(),
        removed: Vec::new(),
        canonical: None,
    };
    if let Some(d) = el.elems("decode").next() {
        model.decode_host = d.attr("host") != Some("off");
        model.decode_guest = d.attr("guest") != Some("off");
    }
    if let Some(anc) = el.elems("model").next().and_then(|a| a.attr("name")) {
        let a = map.model(anc).ok_or_else(|| invalid(format!("model {}: ancestor {anc} not defined", model.name)))?;
        model.vendor = a.vendor.clone();
        model.signatures = a.signatures.clone();
        model.features = a.features.clone();
    }
    let sigs: Vec<&Elem> = el.elems("signature").collect();
    if !sigs.is_empty() {
        model.signatures.clear();
    }
    for s in sigs {
        let family = parse_u32(file, "family", s.attr("family").unwrap_or("0"))?;
        let m = parse_u32(file, "model", s.attr("model").unwrap_or("0"))?;
        let steppings = s.attr("stepping").map(|st| parse_steppings(file, st)).transpose()?;
        model.signatures.push(X86Signature { family, model: m, steppings });
    }
    if let Some(v) = el.elems("vendor").next().and_then(|v| v.attr("name")) {
        if !map.vendors.iter().any(|x| x.name == v) {
            return Err(invalid(format!("model {}: unknown vendor {v}", model.name)));
        }
        model.vendor = Some(v.to_owned());
    }
    for f in el.elems("feature") {
        let fname = f.attr("name").ok_or_else(|| invalid(format!("model {}: feature without name", model.name)))?;
        if f.attr("removed") == Some("yes") {
            model.removed.push(fname.to_owned());
        } else if f.attr("added") == Some("yes") {
            // Added to libvirt's copy of the model after QEMU's: not part of what the
            // model name stands for (libvirt keeps such features out of the model's data).
            continue;
        } else if !model.features.iter().any(|x| x == fname) {
            model.features.push(fname.to_owned());
        }
    }
    let ancestor = el.elems("model").next().and_then(|a| a.attr("name"));
    let own = ["signature", "vendor", "feature"].iter().any(|n| el.elems(n).next().is_some());
    let alias_of = ancestor.filter(|_| !own).map(str::to_owned);
    Ok((model, alias_of))
}

/// A stepping list such as `0-3,5`.
fn parse_steppings(file: &str, s: &str) -> Result<Vec<u32>, CpuMapError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_u32(file, "stepping", a)?, parse_u32(file, "stepping", b)?);
                out.extend(a..=b);
            }
            None => out.push(parse_u32(file, "stepping", part)?),
        }
    }
    Ok(out)
}

fn parse_ppc(docs: &[(&str, Elem)]) -> Result<PpcMap, CpuMapError> {
    let mut map = PpcMap::default();
    for (file, doc) in docs {
        for el in &doc.children {
            let Some(name) = el.attr("name") else { continue };
            match el.name.as_str() {
                "vendor" => map.vendors.push(name.to_owned()),
                "model" => {
                    let mut pvrs = Vec::new();
                    for p in el.elems("pvr") {
                        let num = |what: &str| match p.attr(what) {
                            Some(v) => parse_u32(file, what, v),
                            None => Err(CpuMapError::Invalid {
                                file: (*file).to_owned(),
                                message: format!("<pvr> of model {name} without '{what}'"),
                            }),
                        };
                        pvrs.push(Pvr { value: num("value")?, mask: num("mask")? });
                    }
                    map.models.push(PpcModel {
                        name: name.to_owned(),
                        vendor: el.elems("vendor").next().and_then(|v| v.attr("name")).map(str::to_owned),
                        pvrs,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    const INDEX: &str = "<cpus><arch name='x86'><include filename='v.xml'/><include filename='f.xml'/>\
        <include filename='m.xml'/></arch><arch name='ppc64'><include filename='p.xml'/></arch></cpus>";
    const VENDORS: &str = "<cpus><vendor name='AMD' string='AuthenticAMD'/></cpus>";
    const FEATURES: &str = "<cpus><feature name='fpu'><cpuid eax_in='0x01' edx='0x00000001'/></feature>\
        <feature name='pni'><alias name='sse3' source='qemu'/><cpuid eax_in='0x01' ecx='0x00000001'/></feature>\
        <feature name='invtsc' migratable='no'><cpuid eax_in='0x80000007' edx='0x00000100'/></feature>\
        <feature name='rdctl-no'><msr index='0x10a' edx='0x00000000' eax='0x00000001'/></feature></cpus>";
    const MODELS: &str = "<cpus><model name='base1'><decode host='on' guest='off'/>\
        <signature family='23' model='1'/><vendor name='AMD'/><feature name='fpu'/>\
        <feature name='pni' removed='yes'/></model>\
        <model name='child'><decode host='on' guest='on'/><model name='base1'/>\
        <signature family='25' model='1' stepping='0-2,4'/><feature name='invtsc'/></model></cpus>";

    #[test]
    fn parses_families() {
        let m = parse(
            "/x",
            &files(&[
                ("index.xml", INDEX),
                ("v.xml", VENDORS),
                ("f.xml", FEATURES),
                ("m.xml", MODELS),
                (
                    "p.xml",
                    "<cpus><vendor name='IBM'/><model name='POWER9'><vendor name='IBM'/>\
                     <pvr value='0x004e0000' mask='0xffff0000'/></model></cpus>",
                ),
            ]),
        )
        .unwrap();
        let x = m.x86.unwrap();
        assert_eq!(x.feature_from_qemu("sse3").unwrap().name, "pni");
        assert!(!x.feature("invtsc").unwrap().migratable);
        let rd = &x.feature("rdctl-no").unwrap().data;
        assert_eq!(rd.get(DataKey::Msr { index: 0x10a }), [1, 0, 0, 0]);
        let base = x.model("base1").unwrap();
        assert!(!base.decode_guest);
        assert_eq!(base.removed, ["pni"]);
        let child = x.model("child").unwrap();
        assert_eq!(child.features, ["fpu", "invtsc"]);
        assert_eq!(child.vendor.as_deref(), Some("AMD"));
        assert_eq!(child.signatures[0].steppings.as_deref(), Some(&[0, 1, 2, 4][..]));
        let ppc = m.ppc64.unwrap();
        assert_eq!(ppc.models[0].vendor.as_deref(), Some("IBM"));
        assert_eq!(ppc.model_for_pvr(0x004e_1202).map(|m| m.name.as_str()), Some("POWER9"));
        assert!(ppc.model_for_pvr(0x004d_0200).is_none());
    }

    #[test]
    fn json_round_trip() {
        // The probe cache stores the parsed map as JSON.
        let m = parse(
            "/x",
            &files(&[
                ("index.xml", INDEX),
                ("v.xml", VENDORS),
                ("f.xml", FEATURES),
                ("m.xml", MODELS),
                ("p.xml", "<cpus/>"),
            ]),
        )
        .unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<CpuMap>(&j).unwrap(), m);
    }

    #[test]
    fn errors_name_the_file() {
        let e = parse("/x", &files(&[("index.xml", INDEX)])).unwrap_err();
        assert!(e.to_string().contains("v.xml"), "{e}");
        let bad = MODELS.replace("name='fpu'/>", "name='nope'/>");
        let e = parse("/x", &files(&[("index.xml", INDEX), ("v.xml", VENDORS), ("f.xml", FEATURES), ("m.xml", &bad)]))
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = parse("/x", &files(&[("index.xml", "<cpus><arch")])).unwrap_err();
        assert!(matches!(e, CpuMapError::Xml { .. }), "{e}");
    }

    /// libvirt 10.10 on: model files in `<group>`s, versioned aliases, `added` features.
    #[test]
    fn grouped_index_and_versioned_models() {
        let index = "<cpus><arch name='x86'><include filename='v.xml'/><include filename='f.xml'/>\
            <group name='AMD CPU models'><include filename='m.xml'/><include filename='m1.xml'/></group>\
            <group name='Hygon CPU models'></group></arch>\
            <arch name='ppc64'><group name='IBM-based CPU models'><include filename='p.xml'/></group></arch>\
            <arch name='arm'><group name='ARM-based CPU models'><include filename='arm.xml'/></group></arch></cpus>";
        let models =
            MODELS.replace("<feature name='invtsc'/>", "<feature name='invtsc'/><feature name='pni' added='yes'/>");
        let m1 = "<cpus><model name='child-v1'><decode host='on' guest='off'/><model name='child'/></model>\
            <model name='child-v2'><decode host='on' guest='off'/><model name='child'/><feature name='pni'/></model></cpus>";
        let f = files(&[
            ("index.xml", index),
            ("v.xml", VENDORS),
            ("f.xml", FEATURES),
            ("m.xml", &models),
            ("m1.xml", m1),
            ("p.xml", "<cpus><model name='POWER10'><vendor name='IBM'/></model></cpus>"),
        ]);
        assert_eq!(
            included_files(index).unwrap(),
            ["v.xml", "f.xml", "m.xml", "m1.xml", "p.xml"],
            "only the families capsd reads"
        );
        let m = parse("/x", &f).unwrap();
        let x = m.x86.unwrap();
        let child = x.model("child").unwrap();
        assert_eq!(child.canonical.as_deref(), Some("child-v1"), "an ancestor with nothing changed is an alias");
        assert_eq!(child.features, ["fpu", "invtsc"], "added features are not the model's");
        let v2 = x.model("child-v2").unwrap();
        assert_eq!((v2.canonical.as_deref(), v2.vendor.as_deref()), (None, Some("AMD")));
        assert_eq!(v2.features, ["fpu", "invtsc", "pni"]);
        assert_eq!(m.ppc64.unwrap().models[0].name, "POWER10");
        // A second alias of one model is an error in libvirt too.
        let m1 = "<cpus><model name='a-v1'><model name='child'/></model><model name='a-v2'><model name='child'/></model></cpus>";
        let f =
            files(&[("index.xml", index), ("v.xml", VENDORS), ("f.xml", FEATURES), ("m.xml", &models), ("m1.xml", m1)]);
        assert!(parse("/x", &f).unwrap_err().to_string().contains("already an alias"));
    }

    #[test]
    fn unknown_index_formats_are_refused() {
        for index in [
            "<cpus><arch name='x86'><models><include filename='v.xml'/></models></arch></cpus>",
            "<cpus><arch name='x86'><group name='a'><group name='b'><include filename='v.xml'/></group></group></arch></cpus>",
            "<cpus><arch name='x86'><include file='v.xml'/></arch></cpus>",
            "<cpumap><arch name='x86'><include filename='v.xml'/></arch></cpumap>",
            "<cpus><family name='x86'/></cpus>",
        ] {
            let e = included_files(index).unwrap_err();
            assert!(matches!(e, CpuMapError::UnknownFormat { .. }), "{index}: {e}");
            let e = parse("/x", &files(&[("index.xml", index), ("v.xml", VENDORS)])).unwrap_err();
            assert!(e.to_string().contains("unknown format"), "{index}: {e}");
        }
    }

    #[test]
    fn data_set_operations() {
        let mut a = X86Data::default();
        a.add_item(DataKey::Cpuid { leaf: 1, subleaf: 0 }, [0, 0, 0b11, 0]);
        let mut b = X86Data::default();
        b.add_item(DataKey::Cpuid { leaf: 1, subleaf: 0 }, [0, 0, 0b01, 0]);
        assert!(a.contains(&b));
        assert!(!b.contains(&a));
        a.subtract(&b);
        assert_eq!(a.get(DataKey::Cpuid { leaf: 1, subleaf: 0 }), [0, 0, 0b10, 0]);
        assert!(!a.is_empty());
        assert!(X86Data::default().contains(&X86Data::default()));
    }
}
