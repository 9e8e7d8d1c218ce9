//! The live path end to end: a fake `bhyve` first in `PATH` (a shell script that answers each
//! probe from the `fbuf` recording, on standard error, as bhyve does), a real firmware
//! directory and a real `bhyve.conf` named by `CAPSD_BHYVE_CONF`. The driver runs the script
//! for every probe and must produce libvirt's `bhyve_fbuf` document, with this host's paths.
//!
//! This binary holds a single test because it sets process-wide environment variables.

#[path = "../../../tests/src/reference.rs"]
mod reference;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use capsd_core::{DomainCapsDriver, Query};
use capsd_driver_bhyve::{BhyveDriver, Source};

#[test]
fn live_probing_reproduces_libvirt_with_a_fake_bhyve() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let transcript = manifest.join("tests/data/fbuf/transcript.txt");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("bhyve");
    let script = format!(
        "#!/bin/sh\n# Answer like the recorded bhyve: the block after `$ bhyve ARGS`, on stderr.\n\
         want=\"\\$ bhyve $*\"\n\
         awk -v want=\"$want\" 'index($0, \"$ \") == 1 {{ on = ($0 == want); next }} on {{ print }}' '{}' >&2\n\
         exit 1\n",
        transcript.display()
    );
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let firmware = dir.path().join("uefi-firmware");
    std::fs::create_dir(&firmware).unwrap();
    for f in ["BHYVE_UEFI.fd", "BHYVE_UEFI_CSM.fd"] {
        std::fs::write(firmware.join(f), b"").unwrap();
    }
    let conf = dir.path().join("bhyve.conf");
    std::fs::write(&conf, format!("firmware_dir = \"{}\"\n", firmware.display())).unwrap();

    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.clone()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
    std::env::set_var("CAPSD_BHYVE_CONF", &conf);
    std::env::remove_var("CAPSD_BHYVE_FACTS");

    let driver = BhyveDriver::from_env();
    assert_eq!(driver.source(), &Source::Live { config: conf.clone() });
    assert!(driver.availability().is_available());
    let caps = driver.domain_capabilities(&Query { arch: Some("x86_64".into()), ..Query::default() }).unwrap();

    // libvirt's document, with this host's bhyve and firmware files (in directory order).
    let reference = std::fs::read_to_string(
        manifest.join("../../../shared/fixtures/libvirt-upstream/domaincaps/bhyve_fbuf.x86_64.xml"),
    )
    .unwrap();
    let listed: Vec<String> = std::fs::read_dir(&firmware)
        .unwrap()
        .map(|e| format!("      <value>{}</value>\n", e.unwrap().path().display()))
        .collect();
    let expected = reference
        .replace("<path>/usr/sbin/bhyve</path>", &format!("<path>{}</path>", fake.display()))
        .replace("      <value>/foo/bar</value>\n      <value>/foo/baz</value>\n", &listed.concat());
    assert_eq!(capsd_core::xml::to_xml(&caps), expected);

    // The query's emulator is probed when it exists, and refused when it does not.
    let q = Query { emulator: Some(fake.clone()), ..Query::default() };
    assert_eq!(driver.domain_capabilities(&q).unwrap().path.as_deref(), Some(fake.to_str().unwrap()));
    let q = Query { emulator: Some(dir.path().join("nope")), ..Query::default() };
    let e = driver.domain_capabilities(&q).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("invalid emulatorbin '{}': ", dir.path().join("nope").display())),
        "{e}"
    );
}
