//! `capsd probe --record` then `capsd domcapabilities --replay`, with the real QEMU of this
//! host (skipped when `qemu-system-x86_64` is not installed, unless `CAPSD_REQUIRE_LIVE=1`,
//! as in CI): for every case of `cargo xtask conformance` (`driver-qemu/tests/data/
//! oracle-cases.txt` and `more-cases.txt`), the replay of the recording prints exactly what
//! the live query prints, and fails where the live query fails. The replays run with no
//! `PATH` and `CAPSD_CPU_MAP_DIR` pointing nowhere, so an answer that read this host instead
//! of the recording (an emulator, libvirt's cpu_map) would differ.

mod live_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use live_support::live;

struct Case {
    name: String,
    args: Vec<String>,
}

impl Case {
    fn arg(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }

    /// The emulator the case runs: its `--emulatorbin`, else the one for its `--arch`.
    fn emulator(&self) -> PathBuf {
        match self.arg("--emulatorbin") {
            Some(e) => PathBuf::from(e),
            None => PathBuf::from(format!("/usr/bin/qemu-system-{}", self.arg("--arch").unwrap_or("x86_64"))),
        }
    }
}

fn cases() -> Vec<Case> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver-qemu/tests/data");
    let mut out = Vec::new();
    for file in ["oracle-cases.txt", "more-cases.txt"] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut w = l.split_whitespace().map(str::to_owned);
            out.push(Case { name: w.next().unwrap(), args: w.collect() });
        }
    }
    out
}

fn capsd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsd"));
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The error capsd printed, without the context line's own words (which name the live
/// query or the replayed file): the text after the query.
fn error_of(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("capsd: error:")).unwrap_or("").to_owned();
    match line.find(", query ").and_then(|q| line[q..].find(": ").map(|e| q + e + 2)) {
        Some(at) => line[at..].to_owned(),
        None => line,
    }
}

#[test]
fn replaying_a_recording_prints_the_live_answer_for_every_conformance_case() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let cases = cases();
    // One recording per emulator the cases use and this host has.
    let mut recordings: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for c in &cases {
        let emu = c.emulator();
        if recordings.contains_key(&emu) || !emu.exists() {
            continue;
        }
        let file = tmp.path().join(format!("{}.json", emu.file_name().unwrap().to_str().unwrap()));
        let out = capsd(&["probe", "--record", file.to_str().unwrap(), "--emulatorbin", emu.to_str().unwrap()], &[]);
        assert!(out.status.success(), "recording {}: {}", emu.display(), String::from_utf8_lossy(&out.stderr));
        recordings.insert(emu, file);
    }
    let (mut compared, mut skipped, mut failures) = (0, Vec::new(), Vec::new());
    for c in &cases {
        let Some(rec) = recordings.get(&c.emulator()) else {
            skipped.push(c.name.clone());
            continue;
        };
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let mut live_args = vec!["--cache-dir", cache, "domcapabilities"];
        live_args.extend(&args);
        let live = capsd(&live_args, &[]);
        let mut replay_args = vec!["--no-cache", "domcapabilities", "--replay", rec.to_str().unwrap()];
        replay_args.extend(&args);
        let replay = capsd(&replay_args, &[("PATH", ""), ("CAPSD_CPU_MAP_DIR", "/nonexistent/cpu_map")]);
        compared += 1;
        match (live.status.success(), replay.status.success()) {
            (true, true) if live.stdout == replay.stdout => {}
            (true, true) => {
                let (l, r) = (String::from_utf8_lossy(&live.stdout), String::from_utf8_lossy(&replay.stdout));
                let line = l.lines().zip(r.lines()).position(|(a, b)| a != b).map_or(0, |i| i + 1);
                failures.push(format!("{}: documents differ from line {line}", c.name));
            }
            (false, false) if error_of(&live) == error_of(&replay) => {}
            _ => failures.push(format!(
                "{}: live {} `{}`, replay {} `{}`",
                c.name,
                live.status,
                error_of(&live),
                replay.status,
                error_of(&replay)
            )),
        }
    }
    eprintln!("{compared} case(s) compared; skipped (emulator not installed): {skipped:?}");
    assert!(compared > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_malformed_recording_is_an_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.replies");
    std::fs::write(&bad, "{\"execute\": \"qmp_capabilities\", \"id\": \"libvirt-1\"}\n\n{\"return\": {},\n").unwrap();
    let out = capsd(&["domcapabilities", "--replay", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", bad.display())), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = capsd(&["domcapabilities", "--replay", "/nonexistent/rec.json"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rec.json"));
    // --host-facts only with --replay.
    let out = capsd(&["domcapabilities", "--host-facts", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
}
