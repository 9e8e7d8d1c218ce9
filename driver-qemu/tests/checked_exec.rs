//! With a binary check (the agent's), the driver runs the very file it checked: the file is
//! opened once, the check sees that descriptor, and the probe executes it, whatever happens
//! at the path afterwards. The check itself is the test's hook: it renames another file over
//! the path at the moment between check and exec. Fake emulators are shell scripts, run as
//! this user (the probe user is root's choice only when root: `CAPSD_PROBE_USER` is left as
//! is, and the marks directory is open to anyone).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use capsd_core::{DomainCapsDriver, DriverError, Query};
use driver_qemu::binary::Check;
use driver_qemu::QemuDriver;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct Setup {
    dir: tempfile::TempDir,
    marks: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
    Setup { dir, marks }
}

fn query(bin: &Path) -> Query {
    Query { emulator: Some(bin.to_owned()), virt_type: Some("qemu".into()), ..Query::default() }
}

#[test]
fn the_checked_inode_is_the_one_executed() {
    let s = setup();
    let (ran_checked, ran_other) = (s.marks.join("checked"), s.marks.join("other"));
    let emu = script(s.dir.path(), "emu", &format!("touch {}\nexit 3", ran_checked.display()));
    let other = script(s.dir.path(), "other", &format!("touch {}\nexit 3", ran_other.display()));
    let checked_ino = std::fs::metadata(&emu).unwrap().ino();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (path, seen2, other2) = (emu.clone(), seen.clone(), other.clone());
    let check = Check(Arc::new(move |resolved: &Path, st: &nix::sys::stat::FileStat| {
        seen2.lock().unwrap().push((resolved.to_owned(), st.st_ino));
        // Between the check and the exec: another file takes the path (once).
        if other2.exists() {
            std::fs::rename(&other2, &path).unwrap();
        }
        Ok(())
    }));
    let d = QemuDriver::new().with_binary_check(check);
    let e = d.domain_capabilities(&query(&emu)).unwrap_err();
    assert!(matches!(e, DriverError::ProbeFailed { .. }), "{e}");
    assert_eq!(*seen.lock().unwrap(), [(emu.clone(), checked_ino)], "the check saw another file");
    assert!(ran_checked.exists(), "the checked file did not run");
    assert!(!ran_other.exists(), "the file renamed over the path ran");
    // The next query opens what is at the path now.
    d.domain_capabilities(&query(&emu)).unwrap_err();
    assert!(ran_other.exists(), "the new file did not run on the next query");
    assert_ne!(seen.lock().unwrap()[1].1, checked_ino);
}

#[test]
fn links_are_resolved_and_dangling_ones_refused_unrun() {
    let s = setup();
    let ran = s.marks.join("ran");
    let emu = script(s.dir.path(), "emu", &format!("touch {}\nexit 3", ran.display()));
    let link = s.dir.path().join("qemu-system-x86_64");
    std::os::unix::fs::symlink(&emu, &link).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let check = Check(Arc::new(move |resolved: &Path, _: &nix::sys::stat::FileStat| {
        seen2.lock().unwrap().push(resolved.to_owned());
        Ok(())
    }));
    let d = QemuDriver::new().with_binary_check(check);
    // A link is checked as what it resolves to.
    d.domain_capabilities(&query(&link)).unwrap_err();
    assert_eq!(*seen.lock().unwrap(), [std::fs::canonicalize(&emu).unwrap()]);
    assert!(ran.exists());
    std::fs::remove_file(&ran).unwrap();
    // Dangling: refused as bad input, nothing checked or run, even once the target appears
    // later (it is not passed on to be looked up again).
    let dangling = s.dir.path().join("qemu-system-aarch64");
    std::os::unix::fs::symlink(s.dir.path().join("absent"), &dangling).unwrap();
    let e = d.domain_capabilities(&query(&dangling)).unwrap_err();
    assert!(matches!(&e, DriverError::InvalidInput { field, .. } if field == "emulatorbin"), "{e}");
    assert!(e.to_string().contains("does not resolve"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(!ran.exists());
}

#[test]
fn a_refusal_of_the_check_runs_nothing() {
    let s = setup();
    let ran = s.marks.join("ran");
    let emu = script(s.dir.path(), "emu", &format!("touch {}\nexit 3", ran.display()));
    let check = Check(Arc::new(|resolved: &Path, _: &nix::sys::stat::FileStat| {
        Err(format!("{} is not for running", resolved.display()))
    }));
    let e = QemuDriver::new().with_binary_check(check).domain_capabilities(&query(&emu)).unwrap_err();
    assert!(e.to_string().contains("is not for running"), "{e}");
    assert!(!ran.exists(), "a refused binary ran");
}
