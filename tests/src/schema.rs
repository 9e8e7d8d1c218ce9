//! Validation against libvirt's RelaxNG schema with `xmllint --noout --relaxng`.
//!
//! The schema directory (holding `domaincaps.rng`, `basictypes.rng`, `cputypes.rng`) is
//! `$CAPSD_SCHEMA_DIR` when set, else `../shared/fixtures/libvirt-upstream/schemas` relative to
//! the workspace root. A missing `xmllint` or schema is a failure with a message saying what
//! to install or set, never a silent pass.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Environment variable naming the schema directory.
pub const SCHEMA_DIR_ENV: &str = "CAPSD_SCHEMA_DIR";

/// The workspace root (the directory above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared reference data directory ([`crate::reference::shared_dir`]).
pub fn shared_dir() -> PathBuf {
    crate::reference::shared_dir()
}

/// The schema directory, by the rule in the module docs.
pub fn schema_dir() -> PathBuf {
    match std::env::var_os(SCHEMA_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => shared_dir().join("fixtures/libvirt-upstream/schemas"),
    }
}

/// Validate `xml` against `domaincaps.rng` in `dir`. `Err` carries xmllint's complaint, or
/// why xmllint could not be run.
pub fn validate(xml: &str, dir: &std::path::Path) -> Result<(), String> {
    validate_with("xmllint", xml, dir)
}

/// [`validate`] with a given xmllint program (a name looked up on `PATH`, or a path).
pub fn validate_with(xmllint: &str, xml: &str, dir: &std::path::Path) -> Result<(), String> {
    let rng = dir.join("domaincaps.rng");
    if !rng.is_file() {
        return Err(format!(
            "schema {} not found: set {SCHEMA_DIR_ENV} to the directory holding libvirt's domaincaps.rng",
            rng.display()
        ));
    }
    let mut child = Command::new(xmllint)
        .args(["--noout", "--relaxng"])
        .arg(&rng)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{xmllint} is not installed (it is in Debian's libxml2-utils): schema validation cannot run")
            } else {
                format!("cannot run xmllint: {e}")
            }
        })?;
    let write_result = child.stdin.take().map(|mut stdin| stdin.write_all(xml.as_bytes()));
    let out = child.wait_with_output().map_err(|e| format!("waiting for xmllint: {e}"))?;
    if let Some(Err(e)) = write_result {
        return Err(format!("writing the document to xmllint: {e}"));
    }
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(8).collect();
        Err(format!("xmllint ({}): {}", out.status, lines.join(" | ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n</domainCapabilities>\n";

    #[test]
    fn valid_and_invalid_documents() {
        let Some(_) = crate::reference::need("fixtures/libvirt-upstream/schemas") else { return };
        let dir = schema_dir();
        assert_eq!(validate(DOC, &dir), Ok(()));
        let bad = DOC.replace("<domain>kvm</domain>", "<domian>kvm</domian>");
        let e = validate(&bad, &dir).unwrap_err();
        assert!(e.starts_with("xmllint"), "{e}");
        assert!(e.contains("domian"), "{e}");
    }

    #[test]
    fn missing_xmllint_fails_with_a_clear_message() {
        let Some(_) = crate::reference::need("fixtures/libvirt-upstream/schemas") else { return };
        let e = validate_with("/nonexistent/xmllint", DOC, &schema_dir()).unwrap_err();
        assert!(e.contains("is not installed") && e.contains("libxml2-utils"), "{e}");
    }

    #[test]
    fn missing_schema_fails_with_a_clear_message() {
        let e = validate(DOC, std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(e.contains("/nonexistent/domaincaps.rng") && e.contains(SCHEMA_DIR_ENV), "{e}");
    }
}
