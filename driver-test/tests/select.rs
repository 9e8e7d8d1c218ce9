//! Fixture selection: defaults, aliases, tie-breaks and errors, on small JSON documents
//! (independent of the XML reader).

use std::path::PathBuf;

use capsd_core::{DomainCapsDriver, DriverError, Query};
use driver_test::{host_arch, TestDriver};

fn doc(domain: &str, arch: &str, machine: Option<&str>, path: &str) -> String {
    let machine = machine.map(|m| format!(r#","machine":"{m}""#)).unwrap_or_default();
    format!(r#"{{"path":"{path}","domain":"{domain}","arch":"{arch}"{machine},"vcpu":{{"max":8}}}}"#)
}

const X86: &str = "/usr/bin/qemu-system-x86_64";
const ARM: &str = "/usr/bin/qemu-system-aarch64";

fn driver() -> TestDriver {
    let h = host_arch();
    let docs = [
        ("host-kvm-default.json".to_owned(), doc("kvm", h, Some("pc-i440fx-7.2"), X86)),
        ("host-kvm-q35.json".to_owned(), doc("kvm", h, Some("pc-q35-7.2"), X86)),
        ("host-kvm-q35-new.json".to_owned(), doc("kvm", h, Some("pc-q35-10.2"), X86)),
        ("host-kvm-q35-new+variant.json".to_owned(), doc("kvm", h, Some("pc-q35-10.2"), X86)),
        ("host-tcg-default.json".to_owned(), doc("qemu", h, Some("pc-i440fx-7.2"), X86)),
        ("other-tcg-virt.json".to_owned(), doc("qemu", "other-arch", Some("virt-7.2"), ARM)),
        ("other-tcg-virt-old.json".to_owned(), doc("qemu", "other-arch", Some("virt-6.0"), ARM)),
        ("libxl-xenfv.json".to_owned(), doc("xen", "xen-arch", Some("xenfv"), X86)),
        ("libxl-xenpv.json".to_owned(), doc("xen", "xen-arch", Some("xenpv"), X86)),
    ];
    TestDriver::from_documents(docs.iter().map(|(n, t)| (n.as_str(), t.as_str()))).unwrap()
}

fn pick(d: &TestDriver, q: Query) -> Result<String, DriverError> {
    d.resolve(&q).map(|f| f.name.clone())
}

fn q(arch: Option<&str>, virt: Option<&str>, machine: Option<&str>) -> Query {
    Query {
        emulator: None,
        arch: arch.map(Into::into),
        machine: machine.map(Into::into),
        virt_type: virt.map(Into::into),
        libvirt: None,
    }
}

#[test]
fn defaults_host_arch_kvm_and_default_machine() {
    let d = driver();
    assert_eq!(pick(&d, Query::default()).unwrap(), "host-kvm-default.json");
    assert_eq!(pick(&d, q(None, Some("qemu"), None)).unwrap(), "host-tcg-default.json");
    // No kvm fixture for this arch: qemu.
    assert!(pick(&d, q(Some("other-arch"), None, None)).unwrap_err().to_string().contains("default machine"));
}

#[test]
fn aliases_pick_the_newest_versioned_form() {
    let d = driver();
    // Newest pc-q35-*, and of the two 10.2 files the smaller stem.
    assert_eq!(pick(&d, q(None, None, Some("q35"))).unwrap(), "host-kvm-q35-new.json");
    assert_eq!(pick(&d, q(None, None, Some("pc-q35-7.2"))).unwrap(), "host-kvm-q35.json");
    assert_eq!(pick(&d, q(None, None, Some("pc"))).unwrap(), "host-kvm-default.json");
    assert_eq!(pick(&d, q(Some("other-arch"), Some("qemu"), Some("virt"))).unwrap(), "other-tcg-virt.json");
    assert_eq!(pick(&d, q(Some("other-arch"), None, Some("virt-6.0"))).unwrap(), "other-tcg-virt-old.json");
}

#[test]
fn emulator_selects_by_path_and_implies_arch() {
    let d = driver();
    let mut query = Query { emulator: Some(PathBuf::from(ARM)), ..Query::default() };
    query.machine = Some("virt".into());
    assert_eq!(pick(&d, query).unwrap(), "other-tcg-virt.json");
    let bad = Query { emulator: Some(PathBuf::from("/no/such/qemu")), ..Query::default() };
    let e = pick(&d, bad).unwrap_err();
    assert!(matches!(e, DriverError::NotSupported { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/qemu"), "{e}");
}

#[test]
fn only_virt_type_left_is_the_default() {
    let d = driver();
    let e = pick(&d, q(Some("xen-arch"), None, None)).unwrap_err();
    // Two xen machines, neither marked default by its file name.
    assert!(e.to_string().contains("pass --machine"), "{e}");
    assert_eq!(pick(&d, q(Some("xen-arch"), None, Some("xenfv"))).unwrap(), "libxl-xenfv.json");
}

#[test]
fn unsupported_queries_list_what_is_offered() {
    let d = driver();
    for query in [
        q(Some("sparc"), None, None),
        q(None, Some("bhyve"), None),
        q(None, None, Some("no-such-machine")),
        q(None, None, Some("pc-q35-99.0")),
    ] {
        let e = d.domain_capabilities(&query).unwrap_err();
        assert!(matches!(e, DriverError::NotSupported { .. }), "{query}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("offer:") && msg.contains(".json"), "{query}: {msg}");
    }
}

#[test]
fn shadowed_fixtures_are_listed() {
    let d = driver();
    let s: Vec<(String, String)> = d.shadowed().into_iter().map(|(a, b)| (a.name.clone(), b.name.clone())).collect();
    assert_eq!(s, vec![("host-kvm-q35-new+variant.json".to_owned(), "host-kvm-q35-new.json".to_owned())]);
}

#[test]
fn bad_fixtures_are_named_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.json"), doc("kvm", "x86_64", None, X86)).unwrap();
    std::fs::write(dir.path().join("broken.json"), "{\"domain\": ").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let e = TestDriver::from_dir(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("broken.json"), "{msg}");
    assert!(matches!(e, DriverError::InvalidInput { .. }));

    std::fs::write(dir.path().join("broken.json"), r#"{"domain":"","arch":"x86_64"}"#).unwrap();
    let msg = TestDriver::from_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("broken.json") && msg.contains("<domain> is empty"), "{msg}");

    std::fs::remove_file(dir.path().join("broken.json")).unwrap();
    let d = TestDriver::from_dir(dir.path()).unwrap();
    assert_eq!(d.fixtures().len(), 1);

    // A single file works too.
    let d = TestDriver::from_dir(&dir.path().join("good.json")).unwrap();
    assert_eq!(d.fixtures().len(), 1);

    let empty = tempfile::tempdir().unwrap();
    let msg = TestDriver::from_dir(empty.path()).unwrap_err().to_string();
    assert!(msg.contains("holds no"), "{msg}");
    let msg = TestDriver::from_dir(&empty.path().join("missing")).unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn served_document_is_the_fixture() {
    let d = driver();
    let caps = d.domain_capabilities(&q(None, None, Some("q35"))).unwrap();
    assert_eq!(caps.machine.as_deref(), Some("pc-q35-10.2"));
    assert_eq!(caps.path.as_deref(), Some(X86));
    assert_eq!(caps.vcpu.map(|v| v.max), Some(8));
}
