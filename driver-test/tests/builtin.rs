//! The built-in fixture set: every file parses, is served byte for byte for its own query,
//! and the defaults pick the documented fixtures.

use capsd_core::{xml, Availability, DomainCapsDriver, Query};
use driver_test::{fixture::BUILTIN, host_arch, TestDriver};

#[test]
fn every_builtin_fixture_is_served_byte_identically() {
    let d = TestDriver::builtin();
    assert_eq!(d.availability(), Availability::Available);
    assert_eq!(d.fixtures().len(), BUILTIN.len());
    assert!(d.shadowed().is_empty());
    for (name, text) in BUILTIN {
        let f = d.fixtures().iter().find(|f| f.name == *name).unwrap();
        let q = f.own_query();
        assert_eq!(d.resolve(&q).unwrap().name, *name);
        assert_eq!(xml::to_xml(&d.domain_capabilities(&q).unwrap()), *text, "{name}");
    }
}

#[test]
fn defaults_on_this_host() {
    let d = TestDriver::builtin();
    let got = d.resolve(&Query::default());
    match host_arch() {
        "x86_64" => assert_eq!(got.unwrap().name, "x86_64-kvm-default.xml"),
        "aarch64" => assert_eq!(got.unwrap().name, "aarch64-tcg-virt.xml"),
        other => assert!(got.is_err(), "no built-in fixture for {other}"),
    }
    let q35 = Query { arch: Some("x86_64".into()), machine: Some("q35".into()), ..Query::default() };
    assert_eq!(d.resolve(&q35).unwrap().name, "x86_64-kvm-q35.xml");
}
