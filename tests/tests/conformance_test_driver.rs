//! The conformance suite run against driver-test: the built-in set (every fixture's own
//! query, defaults and aliases) and libvirt's upstream test data directory.

use capsd_tests::reference;

use capsd_core::{DomainCapsDriver, Query};
use capsd_tests::{conformance, schema};
use driver_test::TestDriver;

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
fn builtin_set_conforms() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = TestDriver::builtin();
    assert!(d.availability().is_available(), "{:?}", d.availability());
    let mut queries = vec![Query::default()];
    queries.extend(d.fixtures().iter().map(driver_test::Fixture::own_query));
    queries.extend([
        q(Some("x86_64"), Some("kvm"), Some("q35")),
        q(Some("x86_64"), Some("qemu"), Some("pc")),
        q(Some("x86_64"), Some("qemu"), None),
        q(Some("aarch64"), None, Some("virt")),
        q(Some("aarch64"), Some("qemu"), None),
        q(Some("s390x"), None, None),
        q(Some("ppc64"), None, Some("pseries")),
        q(Some("riscv64"), None, Some("virt")),
    ]);
    let report = conformance::assert_conforms(&d, &queries);
    eprintln!("{report}");
    assert_eq!(report.documents.len(), queries.len());
}

#[test]
fn upstream_test_data_conforms() {
    let Some(_) = reference::need("fixtures") else { return };
    let dir = schema::shared_dir().join("fixtures/libvirt-upstream/domaincaps");
    let d = TestDriver::from_dir(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    let queries: Vec<Query> = d.fixtures().iter().map(driver_test::Fixture::own_query).collect();
    let report = conformance::assert_conforms(&d, &queries);
    eprintln!("{report}");
}

#[test]
fn suite_catches_a_driver_that_answers_everything() {
    let Some(_) = reference::need("fixtures") else { return };
    // A driver that ignores the query: the suite must fail it on the bogus queries and on
    // query-honoured, naming the driver, the query and the rule.
    #[derive(Debug)]
    struct Liar(TestDriver);
    impl DomainCapsDriver for Liar {
        fn name(&self) -> &str {
            "liar"
        }
        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Available
        }
        fn domain_capabilities(&self, _: &Query) -> Result<capsd_core::DomainCapabilities, capsd_core::DriverError> {
            self.0.domain_capabilities(&q(Some("x86_64"), Some("kvm"), Some("pc-q35-7.2")))
        }
    }
    let liar = Liar(TestDriver::builtin());
    let report = conformance::run(&liar, &[q(Some("x86_64"), Some("qemu"), Some("pc"))]);
    let failed: Vec<&str> = report.failures().map(|c| c.rule.name()).collect();
    assert_eq!(
        failed,
        [
            "query-honoured",
            "rejects-bogus-arch",
            "rejects-bogus-machine",
            "rejects-bogus-virttype",
            "rejects-bogus-emulator"
        ],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("driver 'liar'") && text.contains("machine=pc") && text.contains("rule query-honoured"),
        "{text}"
    );
}

#[test]
fn suite_catches_bad_enums_and_schema_violations() {
    let Some(_) = reference::need("fixtures") else { return };
    #[derive(Debug)]
    struct Bent(TestDriver);
    impl DomainCapsDriver for Bent {
        fn name(&self) -> &str {
            "bent"
        }
        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Available
        }
        fn domain_capabilities(
            &self,
            query: &Query,
        ) -> Result<capsd_core::DomainCapabilities, capsd_core::DriverError> {
            let mut caps = self.0.domain_capabilities(query)?;
            let devices = caps.devices.get_or_insert_with(Default::default);
            let disk = devices.disk.get_or_insert_with(|| capsd_core::EnumElement::new(capsd_core::Support::Yes));
            disk.enums.push(capsd_core::Enum::new("colour", ["blue"]));
            disk.enums.push(capsd_core::Enum::new("bus", ["warp"]));
            // <cpu> with a mode missing is a schema violation.
            if let Some(cpu) = caps.cpu.as_mut() {
                cpu.maximum = None;
            }
            Ok(caps)
        }
    }
    let bent = Bent(TestDriver::builtin());
    let report = conformance::run(&bent, &[q(Some("x86_64"), Some("kvm"), None)]);
    let failed: Vec<&str> = report.failures().map(|c| c.rule.name()).collect();
    assert!(failed.contains(&"schema"), "{report}");
    assert!(failed.contains(&"enum-names"), "{report}");
    assert!(failed.contains(&"enum-values"), "{report}");
    let text = report.to_string();
    assert!(text.contains("'colour'") && text.contains("'warp'"), "{text}");
}

#[test]
fn unavailable_driver_is_checked_for_clean_failures() {
    let Some(_) = reference::need("fixtures") else { return };
    #[derive(Debug)]
    struct Gone;
    impl DomainCapsDriver for Gone {
        fn name(&self) -> &str {
            "gone"
        }
        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Unavailable { reason: "not here".into() }
        }
        fn domain_capabilities(&self, q: &Query) -> Result<capsd_core::DomainCapabilities, capsd_core::DriverError> {
            if q.arch.is_some() {
                panic!("boom");
            }
            Err(capsd_core::DriverError::Unavailable { driver: "gone".into(), reason: "not here".into() })
        }
    }
    let report = conformance::run(&Gone, &[Query::default(), q(Some("x86_64"), None, None)]);
    let failed: Vec<String> = report.failures().map(|c| format!("{} {}", c.query, c.rule)).collect();
    assert_eq!(failed, ["arch=x86_64 unavailable-fails-cleanly"], "{report}");
    conformance::assert_unavailable(&Gone, &[Query::default()]);
}

#[test]
fn missing_xmllint_fails_the_schema_rule() {
    let Some(_) = reference::need("fixtures") else { return };
    let opts = conformance::Options { xmllint: "/nonexistent/xmllint".into(), ..conformance::Options::default() };
    let report = conformance::run_with(&TestDriver::builtin(), &[q(Some("x86_64"), None, None)], &opts);
    let failed: Vec<String> =
        report.failures().map(|c| format!("{}: {}", c.rule, c.failure.as_deref().unwrap())).collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(failed[0].starts_with("schema: ") && failed[0].contains("is not installed"), "{report}");
}
