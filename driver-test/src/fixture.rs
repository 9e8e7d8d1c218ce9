//! Loading golden documents: from a directory, from one file, or from the built-in set
//! embedded in the crate. Each loaded document becomes a [`Fixture`]; a document that does
//! not parse becomes a [`BadFixture`] naming its file.

use std::path::{Path, PathBuf};

use capsd_core::{json, xml, DomainCapabilities, Query};

use crate::machine;

/// The built-in fixture set: outputs of this project's oracle run (libvirt 9.0 + QEMU 7.2),
/// see `driver-test/fixtures/README.md`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("aarch64-tcg-virt.xml", include_str!("../fixtures/aarch64-tcg-virt.xml")),
    ("ppc64-tcg-pseries.xml", include_str!("../fixtures/ppc64-tcg-pseries.xml")),
    ("riscv64-tcg-virt.xml", include_str!("../fixtures/riscv64-tcg-virt.xml")),
    ("s390x-tcg-default.xml", include_str!("../fixtures/s390x-tcg-default.xml")),
    ("x86_64-kvm-default.xml", include_str!("../fixtures/x86_64-kvm-default.xml")),
    ("x86_64-kvm-q35.xml", include_str!("../fixtures/x86_64-kvm-q35.xml")),
    ("x86_64-tcg-default.xml", include_str!("../fixtures/x86_64-tcg-default.xml")),
    ("x86_64-tcg-q35.xml", include_str!("../fixtures/x86_64-tcg-q35.xml")),
];

/// The form a fixture is written in, decided by its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Xml,
    Json,
}

impl Form {
    /// `.xml` or `.json`; `None` for any other file (those are skipped).
    pub fn of(name: &str) -> Option<Form> {
        let ext = Path::new(name).extension()?.to_str()?;
        match ext.to_ascii_lowercase().as_str() {
            "xml" => Some(Form::Xml),
            "json" => Some(Form::Json),
            _ => None,
        }
    }
}

/// One golden document and what the selection rules need to know about it.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File name (`x86_64-kvm-q35.xml`).
    pub name: String,
    /// Where it came from: the file's path, or `builtin:<name>`.
    pub source: PathBuf,
    pub form: Form,
    /// The document, exactly as read.
    pub caps: DomainCapabilities,
    /// Whether this fixture answers a query without a machine (see [`is_default_name`]).
    pub is_default: bool,
}

impl Fixture {
    /// The file name without its extension; the tie-break key.
    pub fn stem(&self) -> &str {
        Path::new(&self.name).file_stem().and_then(|s| s.to_str()).unwrap_or(&self.name)
    }

    /// The query this document answers: its own `<path>`, `<arch>`, `<machine>` and
    /// `<domain>`.
    pub fn own_query(&self) -> Query {
        Query {
            emulator: self.caps.path.as_ref().map(Into::into),
            arch: Some(self.caps.arch.clone()),
            machine: self.caps.machine.clone(),
            virt_type: Some(self.caps.domain.clone()),
            libvirt: None,
        }
    }

    /// `virttype/arch/machine` as used in listings (`-` for an absent machine).
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.caps.domain, self.caps.arch, self.caps.machine.as_deref().unwrap_or("-"))
    }
}

/// A file that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFixture {
    pub source: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for BadFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.source.display(), self.reason)
    }
}

/// Parse one fixture text. `name` is the file name (its extension picks the form), `source`
/// is what error messages name.
pub fn parse(name: &str, source: PathBuf, text: &str) -> Result<Fixture, BadFixture> {
    let bad = |reason: String| BadFixture { source: source.clone(), reason };
    let form = Form::of(name).ok_or_else(|| bad("not a .xml or .json file".to_owned()))?;
    let caps = match form {
        Form::Xml => xml::from_xml(text),
        Form::Json => json::from_json(text),
    }
    .map_err(|e| bad(format!("not a valid domain capabilities document: {e}")))?;
    if caps.domain.trim().is_empty() {
        return Err(bad("<domain> is empty".to_owned()));
    }
    if caps.arch.trim().is_empty() {
        return Err(bad("<arch> is empty".to_owned()));
    }
    if caps.machine.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(bad("<machine> is empty".to_owned()));
    }
    let is_default = is_default_name(name, caps.machine.as_deref());
    Ok(Fixture { name: name.to_owned(), source, form, caps, is_default })
}

/// The default-machine rule: a fixture answers queries that give no machine when its file
/// name has no machine part, i.e. the name mentions neither its document's machine nor an
/// alias of it. A document without `<machine>` is always a default.
///
/// "Mentions" means: a name containing `-`, `_`, `.` or `+` (such as `pc-q35-7.2`) appears
/// anywhere in the file stem; a one-word name (`q35`, `virt`) is one of the stem's words,
/// the stem being split at `-`, `_`, `.` and `+`. So `x86_64-kvm-default.xml`,
/// `qemu_7.2.0.x86_64.xml` and `s390x-tcg-default.xml` are defaults, while
/// `x86_64-kvm-q35.xml`, `qemu_11.1.0-virt.aarch64.xml` and `libxl-xenfv.xml` are not.
pub fn is_default_name(file_name: &str, machine: Option<&str>) -> bool {
    let Some(machine) = machine else { return true };
    let stem = Path::new(file_name).file_stem().and_then(|s| s.to_str()).unwrap_or(file_name);
    let is_sep = |c: char| matches!(c, '-' | '_' | '.' | '+');
    let words: Vec<&str> = stem.split(is_sep).collect();
    let mut names = machine::aliases_of(machine);
    names.push(machine.to_owned());
    !names.iter().any(|n| if n.contains(is_sep) { stem.contains(n.as_str()) } else { words.contains(&n.as_str()) })
}

/// Read every `.xml` and `.json` file of `dir` (not recursing; names starting with `.` are
/// skipped), in file name order. Returns the good fixtures and the bad ones.
pub fn read_dir(dir: &Path) -> Result<(Vec<Fixture>, Vec<BadFixture>), std::io::Error> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::debug!(path = %entry.path().display(), "skipping a file name that is not UTF-8");
            continue;
        };
        if name.starts_with('.') || Form::of(&name).is_none() {
            continue;
        }
        if !entry.path().is_file() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match read_file(&path) {
            Ok(f) => good.push(f),
            Err(b) => bad.push(b),
        }
    }
    Ok((good, bad))
}

/// Read one fixture file.
pub fn read_file(path: &Path) -> Result<Fixture, BadFixture> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let text = std::fs::read(path)
        .map_err(|e| BadFixture { source: path.to_owned(), reason: e.to_string() })
        .and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| BadFixture { source: path.to_owned(), reason: format!("not UTF-8: {e}") })
        })?;
    parse(&name, path.to_owned(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rule_follows_file_names() {
        assert!(is_default_name("x86_64-kvm-default.xml", Some("pc-i440fx-7.2")));
        assert!(is_default_name("qemu_7.2.0.x86_64.xml", Some("pc-i440fx-7.2")));
        assert!(is_default_name("s390x-tcg-default.xml", Some("s390-ccw-virtio-7.2")));
        assert!(is_default_name("qemu_7.2.0.ppc.xml", Some("g3beige")));
        assert!(is_default_name("bhyve_basic.x86_64.xml", None));
        assert!(!is_default_name("x86_64-kvm-q35.xml", Some("pc-q35-7.2")));
        assert!(!is_default_name("qemu_7.2.0-q35.x86_64.xml", Some("pc-q35-7.2")));
        assert!(!is_default_name("qemu_11.1.0-virt.aarch64.xml", Some("virt-11.1")));
        assert!(!is_default_name("ppc64-tcg-pseries.xml", Some("pseries-7.2")));
        assert!(!is_default_name("libxl-xenfv.xml", Some("xenfv")));
        assert!(!is_default_name("q35-explicit.json", Some("pc-q35-9.0")));
        // "pc" inside "ppc64" is not the word "pc".
        assert!(is_default_name("ppc64-default.xml", Some("pc-i440fx-7.2")));
    }

    #[test]
    fn forms_by_extension() {
        assert_eq!(Form::of("a.xml"), Some(Form::Xml));
        assert_eq!(Form::of("a.JSON"), Some(Form::Json));
        assert_eq!(Form::of("README.md"), None);
        assert_eq!(Form::of("xml"), None);
    }
}
