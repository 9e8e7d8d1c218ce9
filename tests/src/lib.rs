//! capsd-tests: capsd's exported conformance suite, and (under `tests/`) the workspace's
//! fixture-driven tests.
//!
//! # The conformance suite
//! [`conformance::run`] runs every rule against one driver and a list of queries and returns
//! a [`conformance::Report`]; [`conformance::assert_conforms`] panics with the report when
//! any rule fails, [`conformance::assert_unavailable`] checks that a driver that cannot work
//! on this host says so cleanly. Any driver can use it, in-tree or out-of-tree: depend on
//! `capsd-tests` and call it from a test. The rules are listed in [`conformance`]; what the
//! enum check accepts is in [`enums`]; schema validation needs `xmllint` (Debian:
//! `libxml2-utils`) and finds `domaincaps.rng` through `$CAPSD_SCHEMA_DIR` or
//! `../shared/fixtures/libvirt-upstream/schemas` beside the workspace ([`schema`]).
//!
//! # Fixture-driven tests
//! `tests/tests/*.rs` compare documents against expected files under `tests/testdata/`
//! with expect-test's `expect_file!`, through one helper per test file. After an intended
//! change, refresh every expected file with
//!
//! ```text
//! UPDATE_EXPECT=1 cargo test -p capsd-tests
//! ```
//!
//! and review the diff. Tests that read libvirt's upstream data find it under
//! `../shared` beside the workspace (or `$CAPSD_SHARED_DIR`); those files are read in place,
//! never copied into this repository, and a test whose data is absent is skipped, or fails
//! with `CAPSD_REQUIRE_REFERENCE=1` ([`reference`]).

pub mod conformance;
pub mod enums;
pub mod presence;
pub mod reference;
pub mod schema;

pub use conformance::{assert_conforms, assert_unavailable, run, Report, Rule};
