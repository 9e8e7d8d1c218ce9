//! The loader against real shared libraries: the bhyve example plugin and the misbehaving
//! test plugins of `tests/plugins/` (built by `support`). Each bad plugin must be refused or
//! fail with a clear error while the others keep working.

mod support;

use std::os::unix::fs::PermissionsExt;

use capsd_core::{DomainCapsDriver, DriverError, ErrorKind, Query};
use capsd_plugin::{load_dir, PluginError};
use support::plugin_dir;

const ALL: [&str; 6] = ["capsd_driver_bhyve", "tp_badxml", "tp_initpanic", "tp_noentry", "tp_panic", "tp_wrongabi"];

#[test]
fn loads_the_good_and_refuses_the_bad_each_with_its_reason() {
    let dir = plugin_dir(&ALL);
    let r = load_dir(dir.path(), &["qemu"]);
    let names: Vec<&str> = r.loaded.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["bhyve", "badxml", "panicky"]);
    let refused: Vec<String> = r.refused.iter().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 3, "{refused:#?}");
    let p = |n: &str| dir.path().join(format!("lib{n}.so")).display().to_string();
    assert_eq!(
        refused[0],
        format!("{}: the plugin's entry point returned no driver (its initialisation failed)", p("tp_initpanic"))
    );
    assert_eq!(
        refused[1],
        format!("{} has no `capsd_plugin_v1` entry point; it is not a capsd plugin", p("tp_noentry"))
    );
    assert_eq!(
        refused[2],
        format!("{} speaks capsd plugin ABI version 2; this capsd speaks version 1", p("tp_wrongabi"))
    );
    assert!(matches!(r.refused[2], PluginError::AbiVersion { found: 2, expected: 1, .. }));
}

#[test]
fn a_panicking_plugin_is_an_error_and_keeps_answering() {
    let dir = plugin_dir(&["tp_panic"]);
    let r = load_dir(dir.path(), &[]);
    let p = &r.loaded[0];
    assert!(p.availability().is_available());
    for _ in 0..3 {
        let e = p.domain_capabilities(&Query { arch: Some("x86_64".into()), ..Query::default() }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProbeFailed);
        let text = e.to_string();
        assert!(text.starts_with("probing plugin 'panicky' ("), "{text}");
        assert!(
            text.ends_with(
                "the plugin panicked: deliberate test panic for query arch=x86_64 (at panic/src/lib.rs:17:9)"
            ),
            "{text}"
        );
    }
}

#[test]
fn invalid_xml_from_a_plugin_names_the_plugin() {
    let dir = plugin_dir(&["tp_badxml"]);
    let r = load_dir(dir.path(), &[]);
    let e = r.loaded[0].domain_capabilities(&Query::default()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, DriverError::ProbeFailed { .. }));
    assert!(text.contains("plugin 'badxml'") && text.contains("libtp_badxml.so"), "{text}");
    assert!(text.contains("returned an invalid XML document"), "{text}");
}

#[test]
fn structured_errors_cross_the_boundary() {
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    let r = load_dir(dir.path(), &[]);
    let bhyve = &r.loaded[0];
    // Wrong input: checked before the host is touched, so it is the same on every host.
    let e = bhyve.domain_capabilities(&Query { virt_type: Some("kvm".into()), ..Query::default() }).unwrap_err();
    match &e {
        DriverError::InvalidInput { field, value, reason } => {
            assert_eq!((field.as_str(), value.as_str()), ("virttype", "kvm"));
            assert_eq!(reason, "the bhyve driver only offers virt type 'bhyve'");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let e = bhyve.domain_capabilities(&Query { arch: Some("s390x".into()), ..Query::default() }).unwrap_err();
    assert!(matches!(&e, DriverError::NotSupported { driver, .. } if driver == "bhyve"), "{e:?}");
    // No bhyve on this host (and no recording given to this process): unavailable, and a
    // query says so with the same reason.
    if std::env::var_os("CAPSD_BHYVE_FACTS").is_none() && !std::path::Path::new("/usr/sbin/bhyve").exists() {
        let a = bhyve.availability();
        assert!(!a.is_available());
        let e = bhyve.domain_capabilities(&Query::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CannotAnswer);
        assert!(e.to_string().starts_with("driver 'bhyve' is not available on this host: no bhyve in PATH"), "{e}");
    }
}

#[test]
fn plugins_are_callable_from_many_threads() {
    let dir = plugin_dir(&["capsd_driver_bhyve", "tp_panic"]);
    let r = load_dir(dir.path(), &[]);
    std::thread::scope(|s| {
        for i in 0..8 {
            let p = &r.loaded[i % 2];
            s.spawn(move || {
                for _ in 0..20 {
                    let _ = p.availability();
                    assert!(p.domain_capabilities(&Query { arch: Some("ppc64".into()), ..Query::default() }).is_err());
                }
            });
        }
    });
}

#[test]
fn names_cannot_be_taken_twice() {
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    std::fs::copy(dir.path().join("libcapsd_driver_bhyve.so"), dir.path().join("libzz_second_bhyve.so")).unwrap();
    let r = load_dir(dir.path(), &[]);
    assert_eq!(r.loaded.len(), 1);
    assert!(matches!(&r.refused[..], [PluginError::DuplicateName { name, .. }] if name == "bhyve"), "{:?}", r.refused);
    let r = load_dir(dir.path(), &["bhyve"]);
    assert!(r.loaded.is_empty());
    assert_eq!(r.refused.len(), 2);
    assert!(r.refused[0].to_string().ends_with("driver name 'bhyve' is already taken by capsd's own driver 'bhyve'"));
}

#[test]
fn writable_or_foreign_files_are_refused_and_the_rest_load() {
    let dir = plugin_dir(&["capsd_driver_bhyve", "tp_panic"]);
    let ww = dir.path().join("libtp_panic.so");
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = load_dir(dir.path(), &[]);
    assert_eq!(r.loaded.iter().map(|p| p.name()).collect::<Vec<_>>(), ["bhyve"]);
    assert_eq!(
        r.refused[0].to_string(),
        format!(
            "{} is writable by group and others (mode 0666); plugins and their directories must not be group- or world-writable",
            ww.display()
        )
    );

    // Owned by someone else: only root can create such a file.
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&ww, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let r = load_dir(dir.path(), &[]);
        assert_eq!(r.loaded.len(), 1);
        assert!(matches!(&r.refused[..], [PluginError::Owner { owner: 4242, euid: 0, .. }]), "{:?}", r.refused);
    }
}

#[test]
fn a_symlink_into_an_untrusted_directory_is_refused() {
    let good = plugin_dir(&[]);
    let open = plugin_dir(&["capsd_driver_bhyve"]);
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(open.path().join("libcapsd_driver_bhyve.so"), good.path().join("libbhyve.so")).unwrap();
    let r = load_dir(good.path(), &[]);
    assert!(r.loaded.is_empty());
    assert!(
        matches!(&r.refused[..], [PluginError::Writable { path, mode: 0o777, .. }] if path == &std::fs::canonicalize(open.path()).unwrap()),
        "{:?}",
        r.refused
    );
    // The same symlink into a trusted directory loads.
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(load_dir(good.path(), &[]).loaded.len(), 1);
}

#[test]
fn a_plugin_written_in_c_answers_in_json_and_with_structured_errors() {
    let dir = plugin_dir(&["tp_c_minimal"]);
    let r = load_dir(dir.path(), &[]);
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    let c = &r.loaded[0];
    assert_eq!(c.name(), "c-minimal");
    assert!(c.availability().is_available());
    let caps = c.domain_capabilities(&Query::default()).unwrap();
    assert_eq!(
        capsd_core::xml::to_xml(&caps),
        "<domainCapabilities>\n  <path>/usr/bin/c-minimal</path>\n  <domain>test</domain>\n  <arch>x86_64</arch>\n</domainCapabilities>\n"
    );
    let e = c.domain_capabilities(&Query { virt_type: Some("kvm".into()), ..Query::default() }).unwrap_err();
    assert!(matches!(&e, DriverError::InvalidInput { field, .. } if field == "virttype"), "{e:?}");
}

#[test]
fn the_rust_table_has_the_c_layout() {
    use capsd_plugin::abi::{CapsdPluginV1, CapsdReply};
    use std::mem::{offset_of, size_of};
    let p = size_of::<usize>();
    assert_eq!(size_of::<CapsdReply>(), 8 + 2 * p);
    assert_eq!(offset_of!(CapsdPluginV1, name), 8);
    assert_eq!(offset_of!(CapsdPluginV1, instance), 8 + p);
    assert_eq!(offset_of!(CapsdPluginV1, free_buffer), 8 + 4 * p);
    assert_eq!(size_of::<CapsdPluginV1>(), 8 + 5 * p);
}

#[test]
fn unresolved_symbols_are_refused_at_load_time() {
    let dir = plugin_dir(&["tp_c_unresolved", "tp_c_minimal"]);
    let r = load_dir(dir.path(), &[]);
    assert_eq!(r.loaded.len(), 1);
    let text = r.refused[0].to_string();
    assert!(matches!(r.refused[0], PluginError::Load { .. }), "{text}");
    assert!(text.contains("libtp_c_unresolved.so") && text.contains("capsd_test_symbol_nobody_defines"), "{text}");
}

/// Figures, not a check: `cargo test -p capsd-plugin --release --test loader -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_load_and_call_costs() {
    use std::time::Instant;
    let dir = plugin_dir(&["capsd_driver_bhyve", "tp_c_minimal"]);
    let t = Instant::now();
    let r = load_dir(dir.path(), &[]);
    println!("load_dir of 2 plugins: {:?}", t.elapsed());
    let c = r.loaded.iter().find(|p| p.name() == "c-minimal").unwrap();
    let bhyve = r.loaded.iter().find(|p| p.name() == "bhyve").unwrap();
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        assert!(c.availability().is_available());
    }
    println!("availability() through the ABI: {:?} per call", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        c.domain_capabilities(&Query::default()).unwrap();
    }
    println!("domain_capabilities() of c-minimal (query JSON out, document JSON in): {:?} per call", t.elapsed() / n);
    let q = Query { virt_type: Some("kvm".into()), ..Query::default() };
    let t = Instant::now();
    for _ in 0..n {
        bhyve.domain_capabilities(&q).unwrap_err();
    }
    println!("an InvalidInput error from the Rust bhyve plugin: {:?} per call", t.elapsed() / n);
}
