//! What the writer produces validates against libvirt's RelaxNG schema (`domaincaps.rng`),
//! checked with `xmllint --relaxng`: every fixture as rewritten, and random schema-valid
//! models. xmllint is required (CI installs libxml2-utils): without it these tests fail.

#[path = "../../tests/src/reference.rs"]
mod reference;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use capsd_core::xml;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

fn schema() -> PathBuf {
    let p = common::fixtures_root().join("libvirt-upstream/schemas/domaincaps.rng");
    assert!(p.is_file(), "schema {} is missing", p.display());
    p
}

/// Validate `files` in one xmllint run; returns the files that failed, with xmllint's
/// messages about them.
fn invalid_files(files: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let out =
        Command::new("xmllint").arg("--noout").arg("--relaxng").arg(schema()).args(files).output().unwrap_or_else(
            |e| panic!("cannot run xmllint ({e}): install libxml2-utils; schema validation is mandatory"),
        );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut bad = Vec::new();
    for f in files {
        let name = f.display().to_string();
        if stderr.lines().any(|l| l == format!("{name} validates")) {
            continue;
        }
        let msgs: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&name)).collect();
        bad.push((f.clone(), msgs.join("\n")));
    }
    assert!(
        out.status.success() == bad.is_empty(),
        "xmllint exit status {} disagrees with its report:\n{stderr}",
        out.status
    );
    bad
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn xmllint_is_installed() {
    let out = Command::new("xmllint").arg("--version").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success()),
        "xmllint is missing: install libxml2-utils (schema validation tests cannot pass without it)"
    );
}

#[test]
fn rewritten_fixtures_validate() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, f) in common::all_documents().iter().enumerate() {
        let caps = xml::from_xml(&common::read(f)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = format!("{i:02}-{}", f.file_name().unwrap().to_string_lossy());
        files.push(write(dir.path(), &name, &xml::to_xml(&caps)));
    }
    let bad = invalid_files(&files);
    assert!(bad.is_empty(), "writer output fails the schema:\n{bad:#?}");
}

#[test]
fn random_models_validate() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::default();
    let strategy = common::gen::domain_caps();
    let mut files = Vec::new();
    for i in 0..200 {
        let caps = strategy.new_tree(&mut runner).unwrap().current();
        files.push(write(dir.path(), &format!("gen-{i:03}.xml"), &xml::to_xml(&caps)));
    }
    let bad = invalid_files(&files);
    let shown: Vec<String> =
        bad.iter().take(3).map(|(f, m)| format!("{m}\n{}", std::fs::read_to_string(f).unwrap())).collect();
    assert!(
        bad.is_empty(),
        "{} of {} generated documents fail the schema:\n{}",
        bad.len(),
        files.len(),
        shown.join("\n\n")
    );
}

#[test]
fn validation_can_fail() {
    let Some(_) = reference::need("fixtures") else { return };
    // A control: a <cpu> without its four modes and an unknown element are reported invalid,
    // so the checks above are not vacuous.
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.xml",
        "<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n</domainCapabilities>\n",
    );
    let no_modes = write(dir.path(), "bad1.xml", "<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n  <cpu>\n  </cpu>\n</domainCapabilities>\n");
    let unknown = write(
        dir.path(),
        "bad2.xml",
        "<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n  <bogus/>\n</domainCapabilities>\n",
    );
    let bad: Vec<PathBuf> =
        invalid_files(&[good, no_modes.clone(), unknown.clone()]).into_iter().map(|(f, _)| f).collect();
    assert_eq!(bad, [no_modes, unknown]);
}
