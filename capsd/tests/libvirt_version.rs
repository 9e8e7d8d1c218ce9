//! The target libvirt release: detected from the installed library (shown by `capsd
//! drivers`), overridden with `--libvirt-version`, refused when malformed or older than 9.0;
//! with the real QEMU (skipped without it unless `CAPSD_REQUIRE_LIVE=1`), the same cached
//! probe answers each release with that release's elements.

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
