//! Replay: every recorded probe (`tests/data/qemu-*.json`, written by `cargo xtask
//! record-qemu`) with every oracle case that uses it (`tests/data/oracle-cases.txt`), through
//! query resolution and derivation, compared with what libvirt 9.0 printed for that case on
//! the recording host (`tests/data/expected/<case>.xml`).
//!
//! The libvirt documents are ground truth, so there is no update mode. One helper,
//! [`check`], compares a case byte for byte, and failing that, byte for byte with the
//! contents of the host-model and custom CPU modes masked (the exception). Cases
//! listed in `tests/data/conformance-ratchet.txt` must match (at least masked); the others
//! are reported so progress is visible. Every case must resolve and derive without error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsd_core::Query;
use driver_qemu::probe_data::ProbeData;
use driver_qemu::resolve::resolve_query;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

#[derive(Debug)]
struct Case {
    name: String,
    args: Vec<String>,
}

impl Case {
    fn arg(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }
    fn query(&self) -> Query {
        Query {
            emulator: self.arg("--emulatorbin").map(PathBuf::from),
            arch: self.arg("--arch").map(str::to_owned),
            machine: self.arg("--machine").map(str::to_owned),
            virt_type: self.arg("--virttype").map(str::to_owned),
            libvirt: None,
        }
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(data_dir().join("oracle-cases.txt")).expect("oracle-cases.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace().map(str::to_owned);
            Case { name: w.next().unwrap(), args: w.collect() }
        })
        .collect()
}

fn ratchet() -> BTreeSet<String> {
    std::fs::read_to_string(data_dir().join("conformance-ratchet.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The recording of an emulator binary.
fn recording(binary: &str) -> Option<ProbeData> {
    let name = Path::new(binary).file_name()?.to_str()?;
    let suffix = name.strip_prefix("qemu-system-")?;
    let path = data_dir().join(format!("qemu-7.2-{suffix}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    let mut data: ProbeData = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Recordings carry no libvirt cpu_map (LGPL data); use this machine's, as a probe here would.
    data.host.cpu_map = driver_qemu::cpu::host::read_cpu_map().expect("this machine's libvirt cpu_map is readable");
    Some(data)
}

/// How a produced document compares with libvirt's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Byte for byte.
    Identical,
    /// Byte for byte once host-model/custom CPU mode contents are masked.
    IdenticalCpuMasked,
    /// Differs; the first differing line (masked form) of each side.
    Differs { line: usize, expected: String, got: String },
}

/// Replace the contents of `<mode name='host-model' ...>` and `<mode name='custom' ...>`.
fn mask_cpu_models(doc: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in doc.lines() {
        let t = line.trim_start();
        if skipping {
            if t == "</mode>" {
                skipping = false;
                out.push(line.to_owned());
            }
            continue;
        }
        out.push(line.to_owned());
        if (t.starts_with("<mode name='host-model'") || t.starts_with("<mode name='custom'")) && !t.ends_with("/>") {
            skipping = true;
            out.push("      (masked)".to_owned());
        }
    }
    out.join("\n")
}

/// The one comparison helper. Trailing whitespace is not compared: virsh prints one more
/// newline after the document than libvirt's API returns.
fn check(expected: &str, got: &str) -> Outcome {
    let (expected, got) = (expected.trim_end(), got.trim_end());
    if expected == got {
        return Outcome::Identical;
    }
    let (e, g) = (mask_cpu_models(expected), mask_cpu_models(got));
    if e == g {
        return Outcome::IdenticalCpuMasked;
    }
    let (el, gl): (Vec<&str>, Vec<&str>) = (e.lines().collect(), g.lines().collect());
    let line = (0..el.len().max(gl.len())).find(|&i| el.get(i) != gl.get(i)).unwrap_or(0);
    Outcome::Differs {
        line: line + 1,
        expected: el.get(line).unwrap_or(&"(end)").to_string(),
        got: gl.get(line).unwrap_or(&"(end)").to_string(),
    }
}

#[test]
fn mask_helper_masks_only_model_modes() {
    let a = "<cpu>\n    <mode name='host-passthrough' supported='yes'/>\n    <mode name='host-model' supported='yes'>\n      <model fallback='forbid'>A</model>\n    </mode>\n    <mode name='custom' supported='yes'>\n      <model usable='yes'>x</model>\n    </mode>\n</cpu>";
    let b = a.replace(">A<", ">B<").replace(">x<", ">y<");
    assert_eq!(check(a, &b), Outcome::IdenticalCpuMasked);
    let c = a.replace("host-passthrough' supported='yes'", "host-passthrough' supported='no'");
    assert!(matches!(check(a, &c), Outcome::Differs { line: 2, .. }));
    assert_eq!(check(a, a), Outcome::Identical);
}

#[test]
fn replay_every_recorded_case() {
    let ratchet = ratchet();
    let mut failures = Vec::new();
    let (mut identical, mut masked, mut total) = (0, 0, 0);
    for case in cases() {
        let expected_path = data_dir().join("expected").join(format!("{}.xml", case.name));
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            failures.push(format!("{}: no expected document {}", case.name, expected_path.display()));
            continue;
        };
        let binary = case.arg("--emulatorbin").expect("every case names its emulator");
        let Some(data) = recording(binary) else {
            failures.push(format!("{}: no recording for {binary}", case.name));
            continue;
        };
        total += 1;
        let host_arch = data.host.host_arch.clone();
        let rec_binary = PathBuf::from(&data.binary);
        let result = resolve_query(
            &case.query(),
            &host_arch,
            |n| (rec_binary.file_name().and_then(|f| f.to_str()) == Some(n)).then(|| rec_binary.clone()),
            |_| Ok(data.clone()),
        )
        .and_then(|(r, d)| driver_qemu::derive::domain_capabilities(&d, &r));
        let doc = match result {
            Ok(caps) => capsd_core::xml::to_xml(&caps),
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let outcome = check(&expected, &doc);
        match &outcome {
            Outcome::Identical => identical += 1,
            Outcome::IdenticalCpuMasked => masked += 1,
            Outcome::Differs { line, expected, got } => {
                println!("{:<28} differs at line {line}:\n    libvirt: {expected}\n    capsd:   {got}", case.name);
                if ratchet.contains(&case.name) {
                    failures.push(format!("{}: in the ratchet but differs at line {line}", case.name));
                }
                continue;
            }
        }
        println!("{:<28} {outcome:?}", case.name);
    }
    println!("replay: {total} cases; identical {identical}; identical with CPU models masked {masked}");
    assert!(total > 0, "no recorded cases found in {}", data_dir().display());
    assert!(failures.is_empty(), "replay failures:\n{}", failures.join("\n"));
}

/// Queries libvirt 9.0 rejects, with the message `virsh domcapabilities` printed for them on
/// the recording host (after "error: invalid argument: "). Replayed against the recordings:
/// capsd must reject them too, as invalid input, with the same explanation.
const ERROR_CASES: &[(&str, &str)] = &[
    ("--emulatorbin /usr/bin/qemu-system-x86_64 --arch bogus", "unknown architecture"),
    ("--emulatorbin /usr/bin/qemu-system-x86_64 --virttype bogus", "unknown virttype"),
    (
        "--emulatorbin /usr/bin/qemu-system-x86_64 --machine foo",
        "the machine 'foo' is not supported by emulator '/usr/bin/qemu-system-x86_64'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-x86_64 --virttype qemu --machine Q35",
        "the machine 'Q35' is not supported by emulator '/usr/bin/qemu-system-x86_64'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-x86_64 --machine none",
        "the machine 'none' is not supported by emulator '/usr/bin/qemu-system-x86_64'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-x86_64 --virttype xen",
        "Emulator '/usr/bin/qemu-system-x86_64' does not support virt type 'xen'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-aarch64",
        "architecture from emulator 'aarch64' doesn't match given architecture 'x86_64'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-aarch64 --arch i686",
        "architecture from emulator 'aarch64' doesn't match given architecture 'i686'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-aarch64 --arch aarch64 --virttype kvm",
        "the accel 'kvm' is not supported by '/usr/bin/qemu-system-aarch64' on this host",
    ),
    ("--emulatorbin /usr/bin/qemu-system-i386", "Emulator '/usr/bin/qemu-system-i386' does not support arch 'x86_64'"),
    (
        "--emulatorbin /usr/bin/qemu-system-ppc64 --arch ppc",
        "Emulator '/usr/bin/qemu-system-ppc64' does not support arch 'ppc'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-arm --arch aarch64",
        "Emulator '/usr/bin/qemu-system-arm' does not support arch 'aarch64'",
    ),
    (
        "--emulatorbin /usr/bin/qemu-system-x86_64-microvm --virttype qemu",
        "Emulator '/usr/bin/qemu-system-x86_64-microvm' does not support virt type 'qemu'",
    ),
];

#[test]
fn replay_rejects_what_libvirt_rejects() {
    let mut failures = Vec::new();
    for (args, message) in ERROR_CASES {
        let case = Case { name: "error".into(), args: args.split_whitespace().map(str::to_owned).collect() };
        let binary = case.arg("--emulatorbin").unwrap();
        let data = recording(binary).unwrap_or_else(|| panic!("no recording for {binary}"));
        let host_arch = data.host.host_arch.clone();
        let result = resolve_query(&case.query(), &host_arch, |_| None, |_| Ok(data.clone()))
            .and_then(|(r, d)| driver_qemu::derive::domain_capabilities(&d, &r));
        match result {
            Ok(_) => failures.push(format!("{args}: accepted; libvirt says: {message}")),
            Err(e) if e.kind() != capsd_core::ErrorKind::InvalidInput => {
                failures.push(format!("{args}: {e} is not an input error"))
            }
            Err(e) if !e.to_string().contains(message) => {
                failures.push(format!("{args}: {e}; libvirt says: {message}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
