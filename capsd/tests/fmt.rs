//! `capsd fmt` from the outside: the built binary reformats libvirt's documents byte for
//! byte, converts XML -> JSON -> XML losslessly through stdin, and rejects bad input with a
//! non-zero exit and an error on stderr that names the line.

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn capsd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capsd"))
}

/// Run `capsd fmt ARGS`, feeding `stdin` when given.
fn fmt(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = capsd();
    cmd.arg("fmt").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("running capsd");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The binary may stop reading early (oversized input); a broken pipe is fine then.
        let _ = pipe.write_all(data);
    }
    child.wait_with_output().expect("waiting for capsd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("UTF-8 output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The reference documents: libvirt upstream's test outputs and the libvirt 9.0 host's
/// outputs. A missing directory fails the test.
fn documents() -> Vec<PathBuf> {
    let root = crate::reference::shared_dir().join("fixtures");
    let mut files = Vec::new();
    for dir in ["libvirt-upstream/domaincaps", "libvirt-9.0-host"] {
        let dir = root.join(dir);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("fixture directory {} missing: {e}", dir.display()));
        let before = files.len();
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "xml")));
        assert!(files.len() > before, "no fixture in {}", dir.display());
    }
    files.sort();
    files
}

#[test]
fn xml_to_xml_is_identical() {
    let Some(_) = reference::need("fixtures") else { return };
    for f in documents() {
        let original = std::fs::read_to_string(&f).unwrap();
        let out = fmt(&[f.to_str().unwrap()], None);
        assert!(out.status.success(), "{}: {}", f.display(), stderr(&out));
        assert_eq!(stdout(&out).trim_end(), original.trim_end(), "{}", f.display());
    }
}

#[test]
fn xml_to_json_to_xml_through_stdin_is_identical() {
    let Some(_) = reference::need("fixtures") else { return };
    for f in documents() {
        let original = std::fs::read_to_string(&f).unwrap();
        let json = fmt(&["--format", "json", "-"], Some(original.as_bytes()));
        assert!(json.status.success(), "{}: {}", f.display(), stderr(&json));
        let json = stdout(&json);
        assert!(json.trim_start().starts_with('{'), "{}: not JSON: {json:.80}", f.display());
        let xml = fmt(&["--format", "xml", "-"], Some(json.as_bytes()));
        assert!(xml.status.success(), "{}: {}", f.display(), stderr(&xml));
        assert_eq!(stdout(&xml).trim_end(), original.trim_end(), "{}", f.display());
    }
}

const BAD: &str = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <devices>
    <disk supported='maybe'/>
  </devices>
</domainCapabilities>
";

#[test]
fn bad_xml_fails_with_the_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.xml");
    std::fs::write(&path, BAD).unwrap();
    let out = fmt(&[path.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad document");
    let err = stderr(&out);
    assert!(err.contains("line 5"), "stderr does not name the line: {err}");
    assert!(err.contains("/domainCapabilities/devices/disk"), "stderr does not name the element: {err}");
    assert!(err.contains("maybe"), "stderr does not name the bad value: {err}");
    assert!(err.contains("bad.xml"), "stderr does not name the file: {err}");

    // Cut inside a tag, and cut between elements.
    let out = fmt(&["-"], Some(&BAD.as_bytes()[..BAD.len() / 2]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("<stdin>") && err.contains("line 4") && err.contains("not closed"), "{err}");
    let cut = BAD.find("  <devices>").unwrap();
    let out = fmt(&["-"], Some(&BAD.as_bytes()[..cut]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 4") && err.contains("truncated"), "{err}");
}

#[test]
fn bad_json_fails_with_the_line_on_stderr() {
    let json = "{\n  \"domain\": \"kvm\",\n  \"arch\": \"x86_64\",\n  \"colour\": \"blue\"\n}\n";
    let out = fmt(&["-"], Some(json.as_bytes()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown field") && err.contains("colour") && err.contains("line 4"), "{err}");
}

#[test]
fn oversized_and_missing_input_fail() {
    let big = vec![b' '; 17 * 1024 * 1024];
    let out = fmt(&["-"], Some(&big));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("larger than"), "{}", stderr(&out));

    let out = fmt(&["/nonexistent/caps.xml"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/caps.xml"), "{}", stderr(&out));
}
