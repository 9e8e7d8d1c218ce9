//! A test of the test suite: every test that reads the reference data beside the workspace
//! (`../shared`, `$CAPSD_SHARED_DIR`: libvirt's upstream outputs and schemas, the recorded
//! libvirt 9.0 host outputs) goes through the one helper that skips it by name when the data
//! is absent, `capsd_tests::reference::need` (`tests/src/reference.rs`). A test that reads it
//! some other way passes here and fails in a clone without `../shared`; this scan finds it
//! first.
//!
//! The rule, checked on the sources of the whole repository (every `.rs` file outside
//! `target/`): a `#[test]` function that mentions the reference data (`../shared`,
//! `CAPSD_SHARED_DIR`, `shared_dir(`, `libvirt-upstream`, `libvirt-9.0-host`), itself or
//! through the functions it calls, must call `need(`, itself or through the functions it
//! calls. Calls are resolved by name to the functions of the test's file and of the modules
//! it declares (`mod x;`, `#[path = ...] mod x;`); a name defined several times there counts
//! as calling `need(` only when every definition does. Comments are ignored; string literals
//! are read (the paths are in them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What marks a read of the reference data.
const MARKERS: [&str; 5] = ["../shared", "CAPSD_SHARED_DIR", "shared_dir(", "libvirt-upstream", "libvirt-9.0-host"];

/// One function of a source file: its name, whether it is a `#[test]`, and its body with
/// comments removed.
#[derive(Debug)]
struct Function {
    name: String,
    is_test: bool,
    body: String,
}

/// The source without comments (strings and characters kept as they are), and for each byte
/// of it whether it is code (not inside a string or character literal).
fn strip_comments(src: &str) -> (String, Vec<bool>) {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut code = Vec::with_capacity(src.len());
    let mut i = 0;
    let push = |out: &mut String, code: &mut Vec<bool>, s: &str, is_code: bool| {
        out.push_str(s);
        code.resize(code.len() + s.len(), is_code);
    };
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            // Nested block comments.
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += rest[j..].chars().next().map_or(1, char::len_utf8);
                }
            }
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            push(&mut out, &mut code, &rest[..len], false);
            i += len;
        } else if rest.starts_with('"') || rest.starts_with("b\"") {
            let start = usize::from(rest.starts_with('b'));
            let mut j = start + 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => {
                        j += 1;
                        break;
                    }
                    _ => j += 1,
                }
            }
            let j = j.min(rest.len());
            push(&mut out, &mut code, &rest[..j], false);
            i += j;
        } else if let Some(len) = char_literal_len(rest) {
            push(&mut out, &mut code, &rest[..len], false);
            i += len;
        } else {
            let c = rest.chars().next().unwrap();
            push(&mut out, &mut code, &rest[..c.len_utf8()], true);
            i += c.len_utf8();
        }
    }
    (out, code)
}

/// `r"..."`, `r#"..."#`, `br"..."` at the start of `s`: its length.
fn raw_string_len(s: &str) -> Option<usize> {
    let after_b = s.strip_prefix('b').unwrap_or(s);
    let rest = after_b.strip_prefix('r')?;
    let hashes = rest.bytes().take_while(|c| *c == b'#').count();
    let body = rest[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(s.len() - body.len() + end + close.len())
}

/// A character literal (`'x'`, `'\n'`, `'\''`, `'{'`) at the start of `s`, not a lifetime.
fn char_literal_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('\'')?;
    if let Some(esc) = rest.strip_prefix('\\') {
        let end = esc.find('\'')?;
        return Some(2 + end + 1);
    }
    let c = rest.chars().next()?;
    rest[c.len_utf8()..].starts_with('\'').then(|| 1 + c.len_utf8() + 1)
}

/// The functions of a source file.
fn functions(src: &str) -> Vec<Function> {
    let (text, code) = strip_comments(src);
    let mut found = Vec::new();
    let mut search = 0;
    while let Some(at) = text[search..].find("fn ") {
        let start = search + at;
        search = start + 3;
        let word_start =
            start == 0 || !text.as_bytes()[start - 1].is_ascii_alphanumeric() && text.as_bytes()[start - 1] != b'_';
        if !code[start] || !word_start {
            continue;
        }
        let name: String = text[start + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.is_empty() {
            continue;
        }
        // The body: from the first code `{` before any code `;` to its matching `}`.
        let mut j = start + 3 + name.len();
        let mut open = None;
        while j < text.len() {
            if code[j] {
                match text.as_bytes()[j] {
                    b'{' => {
                        open = Some(j);
                        break;
                    }
                    b';' => break,
                    _ => {}
                }
            }
            j += 1;
        }
        let Some(open) = open else { continue };
        let mut depth = 0;
        let mut end = open;
        for (k, byte) in text.as_bytes().iter().enumerate().skip(open) {
            if !code[k] {
                continue;
            }
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        // `#[test]` among the attributes right before `fn` (after `pub`, `async`, ...).
        let before = &text[..start];
        let head = before.rfind(['}', ';']).map_or(before, |p| &before[p + 1..]);
        let is_test = head.contains("#[test]");
        found.push(Function { name, is_test, body: text[open..=end].to_owned() });
    }
    found
}

/// Names a body calls (`name(`, `path::name(`, `.name(`).
fn calls(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let mut k = i;
            // `name::<T>(` is rare here; `name (` is not written.
            if k < b.len() && b[k] == b'!' {
                k += 1;
            }
            if k < b.len() && b[k] == b'(' {
                names.insert(body[start..i].to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The files a source file's functions can call into: itself and the modules it declares
/// (`mod name;` as `name.rs` or `name/mod.rs` beside it, `#[path = "..."] mod name;`).
fn scope(file: &str, text: &str) -> Vec<String> {
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut files = vec![file.to_owned()];
    let (code, _) = strip_comments(text);
    let lines: Vec<&str> = code.lines().map(str::trim).collect();
    for (n, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("mod ").or_else(|| line.strip_prefix("pub mod ")) else { continue };
        let Some(name) = name.strip_suffix(';') else { continue };
        let path =
            n.checked_sub(1).and_then(|p| lines[p].strip_prefix("#[path = \"")).and_then(|p| p.strip_suffix("\"]"));
        match path {
            Some(p) => files.push(normalize(&dir.join(p))),
            None => {
                files.push(normalize(&dir.join(format!("{name}.rs"))));
                files.push(normalize(&dir.join(name).join("mod.rs")));
            }
        }
    }
    files
}

/// `a/b/../c` as `a/c` (no file system access).
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            c => parts.push(c.as_os_str()),
        }
    }
    parts.iter().map(|s| s.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Every `#[test]` that mentions the reference data without calling `need(`, as
/// `file: test`, over the given sources (`(file, text)`, file relative to the root).
fn violations(sources: &[(String, String)]) -> Vec<String> {
    struct Info {
        f: Function,
        calls: BTreeSet<String>,
    }
    // Per file: its functions.
    let mut per_file: BTreeMap<&str, Vec<Info>> = BTreeMap::new();
    for (file, text) in sources {
        let fs = functions(text).into_iter().map(|f| Info { calls: calls(&f.body), f }).collect();
        per_file.insert(file, fs);
    }
    let mut bad = Vec::new();
    for (file, text) in sources {
        // The functions a test here can reach by name: this file's and its modules'.
        let reach: Vec<&Info> = scope(file, text).iter().filter_map(|f| per_file.get(f.as_str())).flatten().collect();
        // Per name: whether some definition mentions the data, whether every one gates it.
        let mut mentions: BTreeMap<&str, bool> = BTreeMap::new();
        let mut gates: BTreeMap<&str, bool> = BTreeMap::new();
        for i in &reach {
            *mentions.entry(&i.f.name).or_insert(false) |= MARKERS.iter().any(|m| i.f.body.contains(m));
            *gates.entry(&i.f.name).or_insert(true) &= i.calls.contains("need");
        }
        // Through calls, to a fixed point.
        loop {
            let mut changed = false;
            for i in &reach {
                let name = i.f.name.as_str();
                if !mentions[name] && i.calls.iter().any(|c| c != name && mentions.get(c.as_str()) == Some(&true)) {
                    mentions.insert(name, true);
                    changed = true;
                }
                let all_gate = reach.iter().filter(|d| d.f.name == name).all(|d| {
                    d.calls.contains("need")
                        || d.calls.iter().any(|c| c != name && gates.get(c.as_str()) == Some(&true))
                });
                if !gates[name] && all_gate {
                    gates.insert(name, true);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for i in per_file[file.as_str()].iter().filter(|i| i.f.is_test) {
            let direct = MARKERS.iter().any(|m| i.f.body.contains(m));
            let through = i.calls.iter().any(|c| mentions.get(c.as_str()) == Some(&true));
            let gated = i.calls.contains("need") || i.calls.iter().any(|c| gates.get(c.as_str()) == Some(&true));
            if (direct || through) && !gated {
                bad.push(format!("{file}: {}", i.f.name));
            }
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        // Symbolic links are not followed: the corpus's sysfs fixtures hold link cycles.
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            // Any cargo build directory (`CARGO_TARGET_DIR` may be inside the tree under another
            // name) carries CACHEDIR.TAG: generated sources are not the workspace's tests.
            if !p.join("CACHEDIR.TAG").exists() {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_test_reading_reference_data_goes_through_the_helper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let helper = root.join("tests/src/reference.rs");
    let sources: Vec<(String, String)> = files
        .iter()
        .filter(|p| **p != helper && *p != Path::new(file!()) && !p.ends_with("tests/tests/tidy.rs"))
        .map(|p| (p.strip_prefix(root).unwrap().display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    assert!(sources.len() > 100, "scanned only {} files under {}", sources.len(), root.display());
    let tests = sources.iter().map(|(_, t)| functions(t).iter().filter(|f| f.is_test).count()).sum::<usize>();
    assert!(tests > 300, "found only {tests} tests");
    let bad = violations(&sources);
    assert!(
        bad.is_empty(),
        "these tests read ../shared (or $CAPSD_SHARED_DIR) without capsd_tests::reference::need, so they fail \
         instead of being skipped by name where the data is absent:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn the_scan_catches_a_test_reading_reference_data_directly() {
    // The shape of the one that slipped through: a fixture path under ../shared, read by a
    // helper that asserts it exists, from a test that never asks `need`.
    let offending = r#"
        fn shared(rel: &str) -> String {
            let p = crate::reference::shared_dir().join("fixtures").join(rel);
            assert!(p.exists(), "missing reference data {}", p.display());
            p.to_str().unwrap().to_owned()
        }
        /// Uses `need` { in a comment } only.
        #[test]
        fn labels() {
            let sev = shared("libvirt-upstream/domaincaps/x.xml"); // need(
            let c = '{';
            assert!(run(&sev).contains("}"));
        }
        #[test]
        fn gated() {
            let Some(_) = reference::need("fixtures") else { return };
            let up = shared("libvirt-upstream/y.xml");
        }
        #[test]
        fn gated_through_a_helper() {
            let Some(p) = fixture("libvirt-9.0-host/z.xml") else { return };
        }
        fn fixture(rel: &str) -> Option<std::path::PathBuf> {
            reference::need(&format!("fixtures/{rel}"))
        }
        #[test]
        fn no_reference_data() { let x = r"{../shared is only text in a raw string}"; let _ = x.len(); }
    "#;
    let got = violations(&[("capsd/tests/analysis.rs".to_owned(), offending.to_owned())]);
    assert_eq!(got, ["capsd/tests/analysis.rs: labels", "capsd/tests/analysis.rs: no_reference_data"]);
    // The same file with the helper going through `need`: nothing to report but the raw
    // string's mention (the scan reads strings: paths live in them).
    let fixed = offending.replace(
        "let p = crate::reference::shared_dir().join(\"fixtures\").join(rel);",
        "let p = reference::need(&format!(\"fixtures/{rel}\"))?;",
    );
    let got = violations(&[("a.rs".to_owned(), fixed)]);
    assert_eq!(got, ["a.rs: no_reference_data"]);
}
