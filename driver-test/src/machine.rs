//! Machine type names: how an alias the user types (`q35`, `pc`, `virt`) relates to the
//! canonical, versioned names that documents hold (`pc-q35-7.2`, `pc-i440fx-7.2`, `virt-7.2`).
//!
//! # The alias rule
//! Documents only hold canonical names, so driver-test cannot learn aliases from an
//! emulator. Instead a fixed rule decides (the matching is [`capsd_core::machine`]'s):
//!
//! - every name matches itself exactly;
//! - the *family prefix* of an alias is `pc-i440fx-` for `pc`, `pc-q35-` for `q35`, and
//!   `<alias>-` for any other alias;
//! - an alias matches a canonical name that is its family prefix followed by a version
//!   (digits separated by dots: `pc-q35-7.2`, `virt-11.1`, `s390-ccw-virtio-7.2`);
//! - among several matching documents, the one with the newest version answers (versions
//!   compare numerically, part by part, so `10.2` is newer than `9.2`).
//!
//! So `q35` means "the newest `pc-q35-*` there is", like QEMU's own alias does.

use std::cmp::Ordering;

/// A machine version such as `7.2` or `11.1`, compared numerically part by part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineVersion(Vec<u64>);

impl Ord for MachineVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for MachineVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl MachineVersion {
    /// Parse `7.2`, `11`, `2.12`: non-empty parts of ASCII digits separated by dots.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return None;
        }
        let parts: Option<Vec<u64>> = s
            .split('.')
            .map(|p| if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) { p.parse().ok() } else { None })
            .collect();
        parts.map(MachineVersion)
    }
}

/// The prefix the versioned forms of `alias` start with ([`capsd_core::machine`]'s rule).
pub use capsd_core::machine::family_prefix;

/// How a requested machine name relates to a canonical one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineMatch {
    /// The same name.
    Exact,
    /// `canonical` is a versioned form of the alias `requested`, with this version.
    Alias(MachineVersion),
}

/// Whether `requested` names `canonical`, exactly or as an alias (see the module docs).
pub fn matches(requested: &str, canonical: &str) -> Option<MachineMatch> {
    if requested == canonical {
        return Some(MachineMatch::Exact);
    }
    capsd_core::machine::alias_version(requested, canonical).and_then(MachineVersion::parse).map(MachineMatch::Alias)
}

/// The aliases that name `canonical`: the versionless family name (`q35` for `pc-q35-7.2`,
/// `virt` for `virt-7.2`, `pc` for `pc-i440fx-7.2`). Empty for an unversioned name.
pub fn aliases_of(canonical: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (alias, prefix) in [("pc", "pc-i440fx-"), ("q35", "pc-q35-")] {
        if canonical.strip_prefix(prefix).and_then(MachineVersion::parse).is_some() {
            out.push(alias.to_owned());
        }
    }
    if let Some((stem, version)) = canonical.rsplit_once('-') {
        if !stem.is_empty() && MachineVersion::parse(version).is_some() {
            out.push(stem.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_match_versioned_forms() {
        assert_eq!(matches("pc-q35-7.2", "pc-q35-7.2"), Some(MachineMatch::Exact));
        assert_eq!(matches("q35", "pc-q35-7.2"), Some(MachineMatch::Alias(MachineVersion(vec![7, 2]))));
        assert_eq!(matches("pc", "pc-i440fx-11.1"), Some(MachineMatch::Alias(MachineVersion(vec![11, 1]))));
        assert_eq!(matches("virt", "virt-7.2"), Some(MachineMatch::Alias(MachineVersion(vec![7, 2]))));
        assert!(matches("s390-ccw-virtio", "s390-ccw-virtio-7.2").is_some());
        assert_eq!(matches("virt", "virt"), Some(MachineMatch::Exact));
        // Not aliases: a different family, a non-version suffix, a prefix of a word.
        assert_eq!(matches("pc", "pc-q35-7.2"), None);
        assert_eq!(matches("q35", "pc-i440fx-7.2"), None);
        assert_eq!(matches("virt", "virtual-7.2"), None);
        assert_eq!(matches("pc", "pc-i440fx-latest"), None);
        assert_eq!(matches("pseries", "pseries-7.2.x"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| MachineVersion::parse(s).unwrap();
        assert!(v("10.2") > v("9.2"));
        assert!(v("11.1") > v("11.0"));
        assert!(v("7.2") < v("7.2.1"));
        assert_eq!(MachineVersion::parse(""), None);
        assert_eq!(MachineVersion::parse("7..2"), None);
    }

    #[test]
    fn aliases_of_canonical_names() {
        assert_eq!(aliases_of("pc-q35-7.2"), vec!["q35", "pc-q35"]);
        assert_eq!(aliases_of("pc-i440fx-7.2"), vec!["pc", "pc-i440fx"]);
        assert_eq!(aliases_of("virt-7.2"), vec!["virt"]);
        assert_eq!(aliases_of("s390-ccw-virtio-7.2"), vec!["s390-ccw-virtio"]);
        assert!(aliases_of("virt").is_empty());
        assert!(aliases_of("g3beige").is_empty());
    }
}
