//! `capsd check`, `diff`, `baseline`, `labels` and `traits` from the outside: exit codes,
//! text and JSON forms, errors on bad input, and `check` with a live driver query built from
//! the domain's own type, arch, machine and emulator.

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().expect("running capsd")
}

fn shared(rel: &str) -> String {
    let p = crate::reference::shared_dir().join("fixtures").join(rel);
    assert!(p.exists(), "missing reference data {}", p.display());
    p.to_str().unwrap().to_owned()
}

fn domain(name: &str) -> String {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../capsd-analysis/tests/data/domains").join(name);
    p.to_str().unwrap().to_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const HOST_Q35: &str = "libvirt-9.0-host/x86_64-kvm-q35.xml";

#[test]
fn check_exit_codes_and_forms() {
    let Some(_) = reference::need("fixtures") else { return };
    // Nothing unsupported: 0, with unknowns reported.
    let o = capsd(&["check", &domain("secboot-q35.xml"), "--caps", &shared(HOST_Q35)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let text = out(&o);
    assert!(text.contains("unknown      /domain/os/firmware/feature[@name='secure-boot']/@enabled = yes"), "{text}");
    assert!(text.contains("by /domainCapabilities/os/firmwareFeatures: element omitted"), "{text}");
    assert!(text.ends_with("20 findings: 17 supported, 0 unsupported, 3 unknown\n"), "{text}");

    // --strict: unknown fails too.
    let o = capsd(&["check", &domain("secboot-q35.xml"), "--caps", &shared(HOST_Q35), "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let up = shared("libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml");
    let o = capsd(&["check", &domain("virtio-video-q35.xml"), "--caps", &up, "--strict"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));

    // Something unsupported: 1; JSON for programs.
    let o = capsd(&["check", &domain("virtio-video-q35.xml"), "--caps", &shared(HOST_Q35), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["summary"]["unsupported"], 2);
    assert_eq!(v["capabilities"]["machine"], "pc-q35-7.2");
    let vcpu = v["findings"].as_array().unwrap().iter().find(|f| f["path"] == "/domain/vcpu").unwrap();
    assert_eq!(vcpu["verdict"], "unsupported");
    assert_eq!(vcpu["value"], "512");
    assert_eq!(vcpu["capability"], "/domainCapabilities/vcpu/@max");
    assert_eq!(vcpu["note"], "more than the maximum of 288");
}

#[test]
fn check_bad_input_exits_2_naming_the_problem() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<domain type='kvm'>\n  <devices>\n    <disk device='disk'>\n").unwrap();
    let o = capsd(&["check", bad.to_str().unwrap(), "--caps", &shared(HOST_Q35)]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("bad.xml: not a usable domain definition"), "{e}");
    assert!(e.contains("line 4: /domain/devices/disk"), "{e}");
    assert!(out(&o).is_empty());

    let o = capsd(&["check", "/nonexistent/domain.xml", "--caps", &shared(HOST_Q35)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("/nonexistent/domain.xml"), "{}", err(&o));

    // Bad capabilities are bad input too.
    let o = capsd(&["check", &domain("spice-q35.xml"), "--caps", &domain("spice-q35.xml")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not a valid domain capabilities document"), "{}", err(&o));
}

#[test]
fn check_with_a_live_query_from_the_domain() {
    // The domain says kvm, x86_64, q35 and /usr/bin/qemu-system-x86_64: the driver is asked
    // exactly that, so the report equals the one against `capsd domcapabilities` for it.
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        panic!("this test needs QEMU (qemu-system-x86) installed");
    }
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let caps = capsd(&[
        "--cache-dir",
        cache,
        "domcapabilities",
        "--virttype",
        "kvm",
        "--arch",
        "x86_64",
        "--machine",
        "q35",
        "--emulatorbin",
        "/usr/bin/qemu-system-x86_64",
    ]);
    assert_eq!(caps.status.code(), Some(0), "{}", err(&caps));
    let dir = tempfile::tempdir().unwrap();
    let caps_file = dir.path().join("caps.xml");
    std::fs::write(&caps_file, &caps.stdout).unwrap();
    let live = capsd(&["--cache-dir", cache, "check", &domain("secboot-q35.xml"), "--format", "json"]);
    let file = capsd(&["check", &domain("secboot-q35.xml"), "--caps", caps_file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(live.status.code(), file.status.code(), "{}", err(&live));
    let mut lv: serde_json::Value = serde_json::from_str(&out(&live)).unwrap();
    let fv: serde_json::Value = serde_json::from_str(&out(&file)).unwrap();
    // The live query's findings also name their evidence (`capsd explain`); a document
    // read from a file has none. Otherwise they are the same findings.
    let findings = lv["findings"].as_array_mut().unwrap();
    assert!(findings.iter().any(|f| f.get("evidence").is_some()), "{lv}");
    for f in findings {
        f.as_object_mut().unwrap().remove("evidence");
    }
    assert_eq!(lv["findings"], fv["findings"]);
    assert_eq!(lv["capabilities"]["domain"], "kvm");
    assert!(lv["capabilities"]["machine"].as_str().unwrap().starts_with("pc-q35-"), "{lv}");
}

#[test]
fn diff_exit_codes() {
    let Some(_) = reference::need("fixtures") else { return };
    let a = shared(HOST_Q35);
    let o = capsd(&["diff", &a, &a]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).ends_with(&format!("0 only in {a}, 0 only in {a}, 0 changed\n")), "{}", out(&o));
    // The JSON form of the same document has the same facts.
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("a.json");
    std::fs::write(&j, out(&capsd(&["fmt", "--format", "json", &a]))).unwrap();
    assert_eq!(capsd(&["diff", &a, j.to_str().unwrap()]).status.code(), Some(0));

    let b = shared("libvirt-9.0-host/x86_64-tcg-q35.xml");
    let o = capsd(&["diff", &a, &b, "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["identical"], false);
    let changed = v["diff"]["changed"].as_array().unwrap();
    assert!(changed.iter().any(|c| c["path"] == "/domainCapabilities/domain" && c["a"] == "kvm" && c["b"] == "qemu"));

    let o = capsd(&["diff", &a, "/nonexistent.xml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn baseline_cli_is_schema_valid_and_refuses_mixed_arches() {
    let Some(_) = reference::need("fixtures") else { return };
    let docs = [
        shared("libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml"),
        shared("libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml"),
        shared(HOST_Q35),
    ];
    let mut args = vec!["baseline"];
    args.extend(docs.iter().map(String::as_str));
    let o = capsd(&args);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("baseline.xml");
    std::fs::write(&f, &o.stdout).unwrap();
    let lint = Command::new("xmllint")
        .args(["--noout", "--relaxng", &shared("libvirt-upstream/schemas/domaincaps.rng")])
        .arg(&f)
        .output()
        .expect("xmllint (libxml2-utils) is needed");
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stderr));
    // The vCPU maximum is the smallest (libvirt 9.0's 288 against upstream's 4096).
    assert!(out(&o).contains("<vcpu max='288'/>"), "{}", out(&o));
    // JSON output.
    args.extend(["--format", "json"]);
    let j = capsd(&args);
    let v: serde_json::Value = serde_json::from_str(&out(&j)).unwrap();
    assert_eq!(v["vcpu"]["max"], 288);

    let o = capsd(&["baseline", &docs[0], &shared("libvirt-upstream/domaincaps/qemu_11.1.0-virt.aarch64.xml")]);
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("document 1 has arch 'aarch64', the first has 'x86_64'"), "{}", err(&o));
}

#[test]
fn labels_and_traits_cli() {
    let Some(_) = reference::need("fixtures") else { return };
    let sev = shared("libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml");
    let o = capsd(&["labels", "--caps", &sev]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    for want in [
        "kubevirt.io/sev=\n",
        "kubevirt.io/sev-es=\n",
        "host-model-cpu.node.kubevirt.io/EPYC-Genoa=true\n",
        "cpu-vendor.node.kubevirt.io/AMD=true\n",
        "hyperv.node.kubevirt.io/synictimer=true\n",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let o = capsd(&["labels", "--caps", &sev, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["kubevirt.io/sev"], "");

    let o = capsd(&["traits", "--caps", &sev]);
    assert_eq!(o.status.code(), Some(0));
    let t = out(&o);
    assert!(t.lines().any(|l| l == "HW_CPU_X86_AMD_SEV"), "{t}");
    assert!(t.lines().any(|l| l == "COMPUTE_SECURITY_UEFI_SECURE_BOOT"), "{t}");
    let o = capsd(&["traits", "--caps", &shared("libvirt-upstream/domaincaps/empty.xml"), "--format", "json"]);
    assert_eq!(out(&o), "[]\n");
}

#[test]
fn check_exits_3_when_the_capabilities_cannot_be_obtained() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Runs, but is no QEMU: probing fails.
    let broken = dir.path().join("qemu-system-x86_64");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let d = domain("spice-q35.xml");
    for (args, needle) in [
        (vec!["--emulatorbin", broken.to_str().unwrap()], "qemu-system-x86_64"),
        // No Xen here (and none in a test machine's build of xl): the driver is unavailable.
        (vec!["--driver", "xen", "--virttype", "xen"], "xen"),
    ] {
        let o = capsd(&[&["--cache-dir", cache, "check", d.as_str()], args.as_slice()].concat());
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", err(&o));
        let e = err(&o);
        assert!(e.contains("the capabilities could not be obtained") && e.contains(needle), "{e}");
    }
    // Input the driver rejects stays bad input.
    let o = capsd(&["--cache-dir", cache, "check", &d, "--emulatorbin", "/no/such/qemu-system-x86_64"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = capsd(&["check", &d, "--driver", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}

/// `labels --format nfd`: Node Feature Discovery's local feature file (`#` comments, one
/// `name[=value]` per line), holding exactly the labels `capsd labels` prints, written
/// atomically with `--output` (no dot-file left behind, an earlier file replaced).
#[test]
fn labels_as_an_nfd_feature_file() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let sev = shared("libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml");
    let text = out(&capsd(&["labels", "--caps", &sev]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capsd");
    std::fs::write(&file, "stale=true\n").unwrap();
    let o = capsd(&["labels", "--caps", &sev, "--format", "nfd", "--output", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(o.stdout.is_empty());
    let nfd = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = Vec::new();
    for line in nfd.lines() {
        if line.starts_with('#') {
            // NFD reads '# +' lines as directives: capsd writes plain comments only.
            assert!(!line.starts_with("# +"), "{line}");
            continue;
        }
        let name = line.split('=').next().unwrap();
        assert!(!name.is_empty() && !name.contains(' '), "not a feature line: {line:?}");
        lines.push(format!("{line}\n"));
    }
    assert_eq!(lines.concat(), text, "the NFD file's labels differ from `capsd labels`");
    assert!(nfd.contains("/etc/kubernetes/node-feature-discovery/features.d"), "{nfd}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("capsd")], "files left beside the output");
    // Traits have no NFD form: refused by name.
    let o = capsd(&["traits", "--caps", &sev, "--format", "nfd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--format nfd"), "{}", err(&o));
}
