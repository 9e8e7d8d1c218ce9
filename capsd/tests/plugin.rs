//! Out-of-tree drivers through the real `capsd` binary: the bhyve example plugin answers
//! `capsd --plugin-dir DIR domcapabilities --driver bhyve` byte for byte like libvirt, is
//! listed by `capsd drivers`, and each broken plugin (wrong ABI, no entry point, constructor
//! panic, query panic, invalid XML, world-writable or foreign file) is reported clearly while
//! the other drivers keep working.
//!
//! The plugin libraries are built by the test itself (see `support`: `cargo build
//! --manifest-path examples/driver-bhyve/Cargo.toml` and `capsd-plugin/tests/plugins`, into
//! `target/plugins`).

#[path = "../../tests/src/reference.rs"]
mod reference;

#[path = "../../capsd-plugin/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use support::{bhyve_facts, bhyve_reference, plugin_dir};

const BAD: [&str; 5] = ["tp_badxml", "tp_initpanic", "tp_noentry", "tp_panic", "tp_wrongabi"];

/// Run capsd with a plugin directory and, when given, a bhyve recording.
fn capsd(dir: &Path, facts: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsd"));
    cmd.arg("--plugin-dir").arg(dir).args(args).env_remove("RUST_LOG");
    match facts {
        Some(s) => cmd.env("CAPSD_BHYVE_FACTS", bhyve_facts(s)),
        None => cmd.env_remove("CAPSD_BHYVE_FACTS"),
    };
    cmd.output().expect("run capsd")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bhyve_plugin_reproduces_libvirt_through_the_cli() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    for scenario in ["basic", "uefi", "fbuf"] {
        let out = capsd(
            dir.path(),
            Some(scenario),
            &[
                "domcapabilities",
                "--driver",
                "bhyve",
                "--emulatorbin",
                "/usr/sbin/bhyve",
                "--arch",
                "x86_64",
                "--virttype",
                "bhyve",
            ],
        );
        assert!(out.status.success(), "{scenario}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), bhyve_reference(scenario), "scenario {scenario}");
        assert_eq!(text(&out.stderr), "", "{scenario}: nothing on stderr");
    }
    // JSON output of the same document reads back to the same XML.
    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "bhyve", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let caps = capsd_core::json::from_json(&text(&out.stdout)).expect("valid JSON document");
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(capsd_core::xml::to_xml(&caps), bhyve_reference("fbuf"));
    }
}

#[test]
fn drivers_lists_the_plugin_and_every_refusal() {
    let mut names = vec!["capsd_driver_bhyve"];
    names.extend(BAD);
    let dir = plugin_dir(&names);
    let out = capsd(dir.path(), Some("uefi"), &["drivers"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"bhyve        available"), "{stdout}");
    assert!(lines.contains(&"badxml       available"), "{stdout}");
    assert!(lines.contains(&"panicky      available"), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("test ")), "built-in drivers still listed: {stdout}");
    let p = |n: &str| dir.path().join(format!("lib{n}.so")).display().to_string();
    let refused: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("refused plugin: ")).collect();
    assert_eq!(
        refused,
        [
            format!("{}: the plugin's entry point returned no driver (its initialisation failed)", p("tp_initpanic")),
            format!("{} has no `capsd_plugin_v1` entry point; it is not a capsd plugin", p("tp_noentry")),
            format!("{} speaks capsd plugin ABI version 2; this capsd speaks version 1", p("tp_wrongabi")),
        ]
    );
    // Each refusal is also logged as a warning naming the file.
    let stderr = text(&out.stderr);
    for n in ["tp_initpanic", "tp_noentry", "tp_wrongabi"] {
        assert!(stderr.lines().any(|l| l.contains("WARN") && l.contains(&p(n))), "{n} not warned about:\n{stderr}");
    }

    // JSON: the plugin is not built in; refusals are entries of their own.
    let out = capsd(dir.path(), Some("uefi"), &["drivers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entries = v.as_array().expect("array");
    let bhyve = entries.iter().find(|e| e["name"] == "bhyve").expect("bhyve listed");
    assert_eq!(bhyve["built_in"], false);
    assert_eq!(bhyve["availability"]["state"], "available");
    let wrong = entries.iter().find(|e| e["refused_plugin"] == p("tp_wrongabi").as_str()).expect("refusal listed");
    assert!(wrong["reason"].as_str().unwrap().contains("ABI version 2"));
}

#[test]
fn without_a_recording_bhyve_is_listed_unavailable_on_linux() {
    if Path::new("/usr/sbin/bhyve").exists() {
        return;
    }
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    let out = capsd(dir.path(), None, &["drivers"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("bhyve        unavailable: no bhyve in PATH")),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let out = capsd(dir.path(), None, &["domcapabilities", "--driver", "bhyve"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("driver 'bhyve' is not available on this host"), "{}", text(&out.stderr));
}

#[test]
fn a_panicking_plugin_fails_its_query_and_the_others_keep_working() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let dir = plugin_dir(&["capsd_driver_bhyve", "tp_panic", "tp_badxml"]);
    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "panicky", "--arch", "x86_64"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("capsd: error: driver 'panicky', query arch=x86_64: probing plugin 'panicky' ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("the plugin panicked: deliberate test panic for query arch=x86_64 (at panic/src/lib.rs:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "only capsd's error, the plugin prints nothing: {stderr}");

    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "badxml"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("probing plugin 'badxml' (") && stderr.contains("libtp_badxml.so"), "{stderr}");
    assert!(stderr.contains("returned an invalid XML document"), "{stderr}");

    // Same plugin directory: the good plugin and a built-in driver still answer.
    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "bhyve", "--arch", "x86_64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), bhyve_reference("fbuf"));
    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "test"]);
    assert!(out.status.success(), "built-in test driver: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("<domainCapabilities>"));
}

#[test]
fn writable_or_foreign_plugin_files_are_refused() {
    let dir = plugin_dir(&["capsd_driver_bhyve", "tp_panic"]);
    let bhyve = dir.path().join("libcapsd_driver_bhyve.so");
    std::fs::set_permissions(&bhyve, std::fs::Permissions::from_mode(0o646)).unwrap();
    let out = capsd(dir.path(), Some("fbuf"), &["drivers"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "refused plugin: {} is writable by others (mode 0646); plugins and their directories must not be group- or world-writable",
            bhyve.display()
        )),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "panicky      available"), "{stdout}");
    let out = capsd(dir.path(), Some("fbuf"), &["domcapabilities", "--driver", "bhyve"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown driver 'bhyve'"), "{stderr}");
    assert!(stderr.contains("is writable by others"), "the refusal is warned about: {stderr}");

    // Owned by someone else: only root can create such a file (files we create are ours).
    if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
        std::fs::set_permissions(&bhyve, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&bhyve, Some(4242), None).unwrap();
        let out = capsd(dir.path(), Some("fbuf"), &["drivers"]);
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("refused plugin: {} is owned by uid 4242;", bhyve.display())), "{stdout}");
    }
}

#[test]
fn a_world_writable_plugin_directory_loads_nothing() {
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = capsd(dir.path(), Some("fbuf"), &["drivers"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("bhyve "), "{stdout}");
    assert!(stdout
        .contains(&format!("refused plugin: {} is writable by group and others (mode 0777)", dir.path().display())));
}

#[test]
fn without_a_plugin_dir_the_missing_default_directory_is_no_error() {
    if Path::new(capsd_plugin::DEFAULT_PLUGIN_DIR).exists() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("drivers")
        .env_remove("CAPSD_PLUGIN_DIR")
        .output()
        .expect("run capsd");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("refused plugin"), "{}", text(&out.stdout));
    assert!(!text(&out.stderr).contains("plugin"), "{}", text(&out.stderr));
}
