//! The target libvirt release: detected from the installed library (shown by `capsd
//! drivers`), overridden with `--libvirt-version`, refused when malformed or older than 9.0;
//! with the real QEMU (skipped without it unless `CAPSD_REQUIRE_LIVE=1`), the same cached
//! probe answers each release with that release's elements.

mod agent_support;
mod live_support;

use std::path::Path;
use std::process::{Command, Output};

use live_support::{live, X86};

fn capsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().expect("running capsd")
}

/// The installed libvirt's version read independently of capsd: the target of the
/// `libvirt.so.0` link in the multiarch library directory (`libvirt.so.0.11003.0`).
fn installed_library_version() -> Option<String> {
    let dir = Path::new("/usr/lib").join(format!("{}-linux-gnu", std::env::consts::ARCH));
    let target = std::fs::read_link(dir.join("libvirt.so.0")).ok()?;
    let name = target.file_name()?.to_str()?.to_owned();
    let rest = name.strip_prefix("libvirt.so.0.")?;
    let (packed, micro) = rest.split_once('.')?;
    let packed: u32 = packed.parse().ok()?;
    Some(format!("{}.{}.{}", packed / 1000, packed % 1000, micro))
}

#[test]
fn drivers_names_the_detected_release_and_its_source() {
    let out = capsd(&["drivers", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = v.as_array().unwrap().iter().find(|d| d["name"] == "qemu").expect("qemu listed");
    let details = &qemu["details"];
    let version = details["libvirt_version"].as_str().expect("libvirt_version");
    let source = details["libvirt_version_source"].as_str().expect("libvirt_version_source");
    match installed_library_version() {
        Some(installed) => {
            assert_eq!(version, installed);
            assert!(source.starts_with("library "), "{source}");
        }
        None => assert!(!source.is_empty()),
    }
    let text = capsd(&["drivers"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("libvirt_version: {version}")));
}

#[test]
fn malformed_or_too_old_releases_are_refused_by_name() {
    for (bad, why) in [("eleven", "is not a libvirt version"), ("8.10", "older than the oldest")] {
        let out = capsd(&["domcapabilities", "--driver", "qemu", "--libvirt-version", bad]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad) && err.contains(why), "{err}");
        assert!(out.stdout.is_empty(), "nothing printed on failure");
    }
}

#[test]
fn one_probe_answers_each_release_with_its_elements() {
    if !live() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let doc = |release: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["domcapabilities", "--emulatorbin", X86, "--virttype", "qemu", "--machine", "q35"])
            .args(["--libvirt-version", release])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (v9, v11, v12) = (doc("9.0"), doc("11.3"), doc("12.8"));
    for (tag, in9, in11, in12) in [
        ("<crypto ", false, true, true),
        ("<panic ", false, true, true),
        ("<console ", false, false, true),
        ("<firmwareFeatures ", false, false, true),
        ("<launchSecurity ", false, true, true),
        ("<value>handle</value>", true, true, false),
    ] {
        assert_eq!((v9.contains(tag), v11.contains(tag), v12.contains(tag)), (in9, in11, in12), "{tag}");
    }
    for d in [&v9, &v11, &v12] {
        capsd_core::xml::from_xml(d).expect("each release's document reads back");
    }
}

/// `WARN` lines on stderr that say `text`.
fn warnings(stderr: &[u8], text: &str) -> usize {
    String::from_utf8_lossy(stderr).lines().filter(|l| l.contains("WARN") && l.contains(text)).count()
}

const NEWER: &str = "libvirt 99.1.0 is newer than the newest release capsd knows (12.8.0): the document follows \
                     12.8.0's rules, and changes libvirt made after 12.8.0 are unknown to capsd";

#[test]
fn a_release_newer_than_the_table_is_printed_by_the_newest_rules_with_one_warning() {
    if !live() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let run = |release: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["domcapabilities", "--emulatorbin", X86, "--virttype", "qemu", "--machine", "q35"])
            .args(["--libvirt-version", release])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let (newest, newer) = (run("12.8"), run("99.1"));
    assert_eq!(newer.stdout, newest.stdout, "99.1 is printed by 12.8's rules");
    assert_eq!(warnings(&newer.stderr, NEWER), 1, "{}", String::from_utf8_lossy(&newer.stderr));
    assert_eq!(warnings(&newest.stderr, "is newer than"), 0, "{}", String::from_utf8_lossy(&newest.stderr));
}

#[test]
fn drivers_names_the_rules_of_a_release_and_warns_about_one_newer_than_the_table() {
    let capsd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).env_remove("RUST_LOG").output().expect("running capsd")
    };
    // The installed release (or the newest known) is its own rules.
    let out = capsd(&["drivers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = v.as_array().unwrap().iter().find(|d| d["name"] == "qemu").expect("qemu listed").clone();
    let detected = qemu["details"]["libvirt_version"].as_str().unwrap().to_owned();
    let minor: Vec<u32> = detected.split('.').take(2).map(|n| n.parse().unwrap()).collect();
    if minor <= vec![12, 8] {
        assert_eq!(qemu["details"]["libvirt_rules"], detected.as_str(), "{qemu}");
        assert!(qemu["details"].get("libvirt_rules_warning").is_none(), "{qemu}");
    }

    let out = capsd(&["drivers", "--libvirt-version", "99.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["libvirt_version: 99.1.0", "libvirt_version_source: requested", "libvirt_rules: 12.8.0"] {
        assert!(text.lines().any(|l| l.trim() == line), "{line} missing:\n{text}");
    }
    assert!(text.lines().any(|l| l.trim() == format!("libvirt_rules_warning: {NEWER}")), "{text}");
    assert_eq!(warnings(&out.stderr, NEWER), 1, "{}", String::from_utf8_lossy(&out.stderr));

    let out = capsd(&["drivers", "--json", "--libvirt-version", "99.1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = v.as_array().unwrap().iter().find(|d| d["name"] == "qemu").unwrap().clone();
    assert_eq!(qemu["details"]["libvirt_version"], "99.1.0");
    assert_eq!(qemu["details"]["libvirt_rules"], "12.8.0");
    assert_eq!(qemu["details"]["libvirt_rules_warning"], NEWER);

    let out = capsd(&["drivers", "--json", "--libvirt-version", "11.3"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = v.as_array().unwrap().iter().find(|d| d["name"] == "qemu").unwrap().clone();
    assert_eq!(qemu["details"]["libvirt_rules"], "11.3.0");
    assert!(qemu["details"].get("libvirt_rules_warning").is_none(), "{qemu}");
    assert_eq!(warnings(&out.stderr, "is newer than"), 0);

    // A release capsd cannot print is refused by name.
    let out = capsd(&["drivers", "--libvirt-version", "8.10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--libvirt-version 8.10: libvirt 8.10.0 is older"));
}

#[test]
fn the_agent_names_the_rules_in_its_headers_and_warns_for_a_newer_release() {
    if !live() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let log = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the agent exited");
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the agent did not listen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let get = |release: &str| {
        let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let q = format!("/v1/domcapabilities?emulatorbin={X86}&virttype=qemu&machine=q35&libvirt={release}");
        let r = agent_support::http_get(s, &q, &[]);
        assert_eq!(r.status, 200, "{release}: {}", r.body);
        r
    };
    let newer = get("99.1");
    assert_eq!(newer.header("capsd-libvirt-version"), Some("99.1.0"));
    assert_eq!(newer.header("capsd-libvirt-rules"), Some("12.8.0"));
    assert_eq!(newer.header("warning"), Some(format!("299 capsd \"{NEWER}\"").as_str()));
    // Kept documents answer with the same headers.
    assert_eq!(get("99.1").header("warning"), newer.header("warning"));
    let newest = get("12.8");
    assert_eq!(newest.body, newer.body);
    assert_eq!(newest.header("capsd-libvirt-rules"), Some("12.8.0"));
    assert_eq!(newest.header("warning"), None);
    let older = get("11.3");
    assert_eq!(
        (older.header("capsd-libvirt-version"), older.header("capsd-libvirt-rules")),
        (Some("11.3.0"), Some("11.3.0"))
    );
    assert_eq!(older.header("warning"), None);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(warnings(log.as_bytes(), NEWER), 1, "warned once in the log:\n{log}");
}
