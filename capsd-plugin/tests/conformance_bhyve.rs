//! capsd's conformance suite (`capsd_tests::conformance`) against the bhyve example plugin,
//! loaded through the C ABI like any out-of-tree driver, for each recorded host; and, with
//! no recording and no bhyve on the host, the suite's "unavailable" checks.
//!
//! The plugin reads `CAPSD_BHYVE_FACTS` when its library is first initialised, which happens
//! while it is loaded; each case loads its own copy of the library (a distinct file, so a
//! distinct instance) after setting the variable. This file holds a single test so nothing
//! else reads the environment meanwhile.

use capsd_tests::reference;

mod support;

use capsd_core::Query;
use capsd_plugin::load_dir;
use support::{bhyve_facts, plugin_dir};

#[test]
fn bhyve_plugin_conforms() {
    let Some(_) = reference::need("fixtures") else { return };
    let queries = [
        Query::default(),
        Query {
            emulator: Some("/usr/sbin/bhyve".into()),
            arch: Some("x86_64".into()),
            machine: None,
            virt_type: Some("bhyve".into()),
            libvirt: None,
        },
        Query { arch: Some("i686".into()), ..Query::default() },
    ];
    // Build before touching the environment (the build runs cargo).
    let _ = support::built_dir();
    for scenario in ["basic", "uefi", "fbuf"] {
        std::env::set_var("CAPSD_BHYVE_FACTS", bhyve_facts(scenario));
        let dir = plugin_dir(&["capsd_driver_bhyve"]);
        let report = load_dir(dir.path(), &[]);
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        let bhyve = &report.loaded[0];
        let r = capsd_tests::conformance::assert_conforms(bhyve, &queries);
        eprint!("{scenario}: {r}");
        let (ok, all) = r.counts();
        assert!(ok == all && all > 20, "{scenario}: {ok}/{all}");
    }
    if std::path::Path::new("/usr/sbin/bhyve").exists() {
        return;
    }
    std::env::remove_var("CAPSD_BHYVE_FACTS");
    let dir = plugin_dir(&["capsd_driver_bhyve"]);
    let report = load_dir(dir.path(), &[]);
    capsd_tests::conformance::assert_unavailable(&report.loaded[0], &queries);
}
