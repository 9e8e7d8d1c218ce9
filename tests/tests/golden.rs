//! Golden pairs checked by one helper, [`check`] (expect-test's `expect_file!`). Refresh
//! after an intended change with `UPDATE_EXPECT=1 cargo test -p capsd-tests`.
//!
//! - `testdata/json/<fixture>.json`: the JSON form of each built-in driver-test fixture as
//!   served for its own query; the JSON files are then served back through driver-test as
//!   JSON fixtures and must give the built-in XML byte for byte.
//! - `testdata/select/*.txt`: for a list of queries, which fixture driver-test picks (or the
//!   error it gives), for the built-in set and for libvirt's upstream test data.

use capsd_tests::reference;

use std::path::PathBuf;

use capsd_core::{json, xml, DomainCapsDriver, Query};
use capsd_tests::schema;
use driver_test::TestDriver;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The one comparison helper: `actual` must equal `testdata/<rel>`.
fn check(rel: &str, actual: &str) {
    expect_test::expect_file![testdata().join(rel)].assert_eq(actual);
}

#[test]
fn builtin_fixtures_json_forms() {
    let d = TestDriver::builtin();
    for f in d.fixtures() {
        let caps = d.domain_capabilities(&f.own_query()).unwrap();
        check(&format!("json/{}.json", f.stem()), &json::to_json(&caps));
    }
}

#[test]
fn json_fixtures_serve_the_same_documents() {
    let builtin = TestDriver::builtin();
    let from_json = TestDriver::from_dir(&testdata().join("json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_json.fixtures().len(), builtin.fixtures().len());
    for f in builtin.fixtures() {
        let q = f.own_query();
        let want = driver_test::fixture::BUILTIN.iter().find(|(n, _)| *n == f.name).unwrap().1;
        let served = from_json.resolve(&q).unwrap();
        assert_eq!(served.form, driver_test::Form::Json);
        assert_eq!(served.stem(), f.stem(), "query [{q}]");
        assert_eq!(xml::to_xml(&from_json.domain_capabilities(&q).unwrap()), want, "query [{q}]");
    }
}

fn q(arch: Option<&str>, virt: Option<&str>, machine: Option<&str>, emulator: Option<&str>) -> Query {
    Query {
        emulator: emulator.map(Into::into),
        arch: arch.map(Into::into),
        machine: machine.map(Into::into),
        virt_type: virt.map(Into::into),
        libvirt: None,
    }
}

fn selection_table(d: &TestDriver, queries: &[Query]) -> String {
    let mut out = String::new();
    for query in queries {
        let line = match d.resolve(query) {
            Ok(f) => format!("{} -> {} ({})", query, f.name, f.key()),
            Err(e) => format!("{query} -> error: {e}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn builtin_selection() {
    let d = TestDriver::builtin();
    let queries = [
        q(Some("x86_64"), None, None, None),
        q(Some("x86_64"), Some("kvm"), Some("q35"), None),
        q(Some("x86_64"), Some("kvm"), Some("pc"), None),
        q(Some("x86_64"), Some("kvm"), Some("pc-q35-7.2"), None),
        q(Some("x86_64"), Some("qemu"), None, None),
        q(Some("x86_64"), Some("qemu"), Some("q35"), None),
        q(None, None, None, Some("/usr/bin/qemu-system-aarch64")),
        q(Some("aarch64"), None, Some("virt"), None),
        q(Some("ppc64"), None, None, None),
        q(Some("s390x"), Some("qemu"), None, None),
        q(Some("riscv64"), None, Some("virt"), None),
        q(Some("x86_64"), Some("kvm"), Some("microvm"), None),
        q(Some("x86_64"), Some("xen"), None, None),
        q(Some("sparc64"), None, None, None),
        q(None, None, None, Some("/usr/bin/qemu-system-mips")),
    ];
    check("select/builtin.txt", &selection_table(&d, &queries));
}

#[test]
fn upstream_selection() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = schema::shared_dir().join("fixtures/libvirt-upstream/domaincaps");
    let d = TestDriver::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let queries = [
        q(Some("x86_64"), Some("kvm"), None, None),
        q(Some("x86_64"), Some("kvm"), Some("q35"), None),
        q(Some("x86_64"), Some("kvm"), Some("pc"), None),
        q(Some("x86_64"), Some("kvm"), Some("pc-q35-9.2"), None),
        q(Some("x86_64"), Some("hvf"), None, None),
        q(Some("x86_64"), Some("xen"), None, None),
        q(Some("x86_64"), Some("xen"), Some("xenpv"), None),
        q(Some("x86_64"), Some("bhyve"), None, None),
        q(Some("aarch64"), None, None, None),
        q(Some("riscv64"), None, Some("virt"), None),
        q(Some("ppc"), None, None, None),
        q(Some("ppc64"), None, Some("pseries"), None),
        q(None, None, Some("g3beige"), Some("/usr/bin/qemu-system-ppc")),
    ];
    let table = selection_table(&d, &queries);
    // The directory's path differs between machines; keep the table portable.
    check("select/upstream.txt", &table.replace(&dir.display().to_string(), "<upstream>"));
}

/// Bad fixtures (`testdata/bad/*.xml|json`): loading each alone gives the error in
/// `testdata/bad/<file>.err` (naming the file, never panicking); loading the directory
/// names every bad file.
#[test]
fn bad_fixtures_are_reported_by_name() {
    let dir = testdata().join("bad");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".xml") || n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 8);
    let portable = |s: String| s.replace(&dir.display().to_string(), "<bad>");
    for name in &names {
        let err = TestDriver::from_dir(&dir.join(name)).expect_err(name).to_string();
        assert!(err.contains(name.as_str()), "{err}");
        check(&format!("bad/{name}.err"), &(portable(err) + "\n"));
    }
    let all = TestDriver::from_dir(&dir).expect_err("a directory of bad fixtures").to_string();
    for name in &names {
        assert!(all.contains(name.as_str()), "{name} not named in: {all}");
    }
}
