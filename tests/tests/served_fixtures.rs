//! driver-test serves each of libvirt's upstream test documents
//! (`../shared/fixtures/libvirt-upstream/domaincaps`) for its own query (its `<domain>`,
//! `<arch>`, `<machine>` and `<path>`), byte for byte.
//!
//! Some upstream files share one query (e.g. `qemu_11.1.0-q35.x86_64.xml` and its
//! `-expanded`/`-supported` variants describe different hosts for the same query). From the
//! directory the smallest file stem answers; the others are served byte-identically from
//! their own file (`--fixtures FILE`), and the test checks the directory names them as
//! shadowed by the right file.

use capsd_tests::reference;

use std::collections::BTreeMap;
use std::path::PathBuf;

use capsd_core::{xml, DomainCapsDriver, Query};
use capsd_tests::schema;
use driver_test::TestDriver;

fn upstream_dir() -> PathBuf {
    schema::shared_dir().join("fixtures/libvirt-upstream/domaincaps")
}

#[test]
fn every_upstream_file_is_served_byte_identically() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = upstream_dir();
    let d = TestDriver::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    files.sort();
    assert_eq!(d.fixtures().len(), files.len(), "every .xml file loads as a fixture");
    assert!(files.len() >= 20, "expected libvirt's upstream set, found {files:?}");

    let shadowed: BTreeMap<String, String> =
        d.shadowed().into_iter().map(|(s, w)| (s.name.clone(), w.name.clone())).collect();
    let mut failures = Vec::new();
    let mut from_dir = 0;
    for f in d.fixtures() {
        let want = std::fs::read_to_string(&f.source).unwrap();
        let q = f.own_query();
        let got = match d.domain_capabilities(&q) {
            Ok(caps) => xml::to_xml(&caps),
            Err(e) => {
                failures.push(format!("{}: query [{q}] failed: {e}", f.name));
                continue;
            }
        };
        match shadowed.get(&f.name) {
            None => {
                from_dir += 1;
                if got != want {
                    failures.push(format!("{}: served document differs for [{q}]", f.name));
                }
            }
            Some(winner) => {
                // The query answers with the winning file, byte for byte.
                let winner_text = std::fs::read_to_string(dir.join(winner)).unwrap();
                if got != winner_text {
                    failures.push(format!("{}: shadowed by {winner}, but [{q}] served something else", f.name));
                }
                assert!(winner.as_str() < f.name.as_str() || winner.len() < f.name.len());
                // And the file alone serves itself.
                let single = TestDriver::from_dir(&f.source).unwrap();
                let alone = xml::to_xml(&single.domain_capabilities(&q).unwrap());
                if alone != want {
                    failures.push(format!("{}: served alone, the document differs", f.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{from_dir} files served from the directory, {} shadowed ones from their own file", shadowed.len());
    // The shadowed set is exactly the files that share a query with a smaller stem.
    let expect: Vec<&str> = shadowed.keys().map(String::as_str).collect();
    expect_test::expect![[r#"
        [
            "bhyve_fbuf.x86_64.xml",
            "bhyve_uefi.x86_64.xml",
            "qemu_10.2.0-q35.x86_64+mshv.xml",
            "qemu_11.1.0-q35.x86_64-expanded.xml",
            "qemu_11.1.0-q35.x86_64-supported.xml",
        ]
    "#]]
    .assert_debug_eq(&expect);
}

#[test]
fn upstream_aliases_and_defaults() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = TestDriver::from_dir(&upstream_dir()).unwrap();
    let pick = |arch: &str, virt: Option<&str>, machine: Option<&str>| {
        let q = Query {
            emulator: None,
            arch: Some(arch.into()),
            machine: machine.map(Into::into),
            virt_type: virt.map(Into::into),
            libvirt: None,
        };
        match d.resolve(&q) {
            Ok(f) => f.name.clone(),
            Err(e) => format!("error: {e}"),
        }
    };
    // q35 is the newest pc-q35-* there is; pc the newest pc-i440fx-*.
    assert_eq!(pick("x86_64", Some("kvm"), Some("q35")), "qemu_11.1.0-q35.x86_64.xml");
    assert_eq!(pick("x86_64", Some("kvm"), Some("pc")), "qemu_11.1.0.x86_64.xml");
    assert_eq!(pick("x86_64", Some("kvm"), Some("pc-q35-7.2")), "qemu_7.2.0-q35.x86_64.xml");
    assert_eq!(pick("aarch64", None, Some("virt")), "qemu_11.1.0-virt.aarch64.xml");
    assert_eq!(pick("s390x", None, None), "qemu_11.1.0.s390x.xml");
    assert_eq!(pick("x86_64", Some("hvf"), None), "qemu_7.2.0-hvf.x86_64+hvf.xml");
    assert_eq!(pick("x86_64", Some("xen"), Some("xenfv")), "libxl-xenfv.xml");
    assert_eq!(pick("x86_64", Some("bhyve"), None), "bhyve_basic.x86_64.xml");
    // Xen has two machines and no default file: the error says so and lists them.
    let e = pick("x86_64", Some("xen"), None);
    assert!(e.contains("pass --machine") && e.contains("libxl-xenpv.xml"), "{e}");
    let e = pick("sparc64", None, None);
    assert!(e.starts_with("error: driver 'test' does not support arch 'sparc64'"), "{e}");
}
