//! QEMU's machine type aliases, the one rule every crate uses to relate a name a user types
//! (`q35`, `pc`, `virt`) to the versioned name a document holds (`pc-q35-7.2`,
//! `pc-i440fx-7.2`, `virt-7.2`).
//!
//! The family prefix of an alias is `pc-i440fx-` for `pc`, `pc-q35-` for `q35` and
//! `<alias>-` for any other alias; an alias names a canonical machine that is its family
//! prefix followed by a version: non-empty runs of ASCII digits separated by dots.

/// The prefix the versioned forms of `alias` start with.
pub fn family_prefix(alias: &str) -> String {
    match alias {
        "pc" => "pc-i440fx-".to_owned(),
        "q35" => "pc-q35-".to_owned(),
        other => format!("{other}-"),
    }
}

/// The version of `canonical` when it is a versioned form of `alias` (`Some("7.2")` for `q35`
/// and `pc-q35-7.2`), else `None` (also when the two names are equal).
pub fn alias_version<'a>(alias: &str, canonical: &'a str) -> Option<&'a str> {
    let version = canonical.strip_prefix(&family_prefix(alias))?;
    version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then_some(version)
}

/// Whether `canonical` is a versioned form of `alias`.
pub fn is_alias_of(alias: &str, canonical: &str) -> bool {
    alias_version(alias, canonical).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_name_versioned_forms_of_their_family() {
        assert_eq!(alias_version("q35", "pc-q35-7.2"), Some("7.2"));
        assert_eq!(alias_version("pc", "pc-i440fx-11.1"), Some("11.1"));
        assert_eq!(alias_version("virt", "virt-7.2"), Some("7.2"));
        assert_eq!(alias_version("s390-ccw-virtio", "s390-ccw-virtio-11.1"), Some("11.1"));
        assert_eq!(alias_version("pseries", "pseries-11"), Some("11"));
        for (alias, canonical) in [
            ("pc", "pc-q35-7.2"),
            ("q35", "pc-i440fx-7.2"),
            ("virt", "virt"),
            ("virt", "virtual-1.0"),
            ("pc", "pc-"),
            ("pc", "pc-i440fx-latest"),
            ("virt", "virt-7..2"),
            ("pseries", "pseries-7.2.x"),
        ] {
            assert!(!is_alias_of(alias, canonical), "{alias} {canonical}");
        }
    }
}
