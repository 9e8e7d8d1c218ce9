//! Probe processes leave nothing behind and get nothing they should not: real processes
//! (fake emulators written as shell scripts), checked through /proc. Run as root (as CI
//! does) they also check the unprivileged probe user (`nobody`) and the PID namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driver_qemu::probe_data::Accel;
use driver_qemu::process::{ProbeProcess, ProbeUser, ProcessOptions};
use driver_qemu::spawn::{containment, Containment};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Processes (not zombies) whose command line contains `marker`.
fn running_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = state.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmd).contains(marker)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn users() -> Vec<Option<ProbeUser>> {
    let mut v = vec![None];
    if nix::unistd::geteuid().is_root() {
        v.push(Some(ProbeUser::from_name("nobody").unwrap()));
    } else {
        eprintln!("not root: the unprivileged probe user is not tried");
    }
    v
}

#[test]
fn root_gets_a_pid_namespace() {
    if nix::unistd::geteuid().is_root() {
        assert!(matches!(containment(), Containment::PidNamespace { .. }), "{:?}", containment());
    } else {
        eprintln!("containment here: {:?}", containment());
    }
}

#[test]
fn a_double_forked_setsid_grandchild_dies_with_the_probe() {
    if containment() == Containment::ProcessGroup {
        eprintln!("skipped: no PID namespace here (root_gets_a_pid_namespace covers root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (i, user) in users().into_iter().enumerate() {
        // A unique sleep duration marks the grandchild in /proc.
        let marker = format!("1000.{}{i}", std::process::id());
        let fake = script(dir.path(), &format!("fake-{i}"), &format!("(setsid sleep {marker} &) &\nexec sleep 1001"));
        let opts = ProcessOptions { user: user.clone(), ..Default::default() };
        let p = ProbeProcess::start(&fake, Accel::Tcg, &opts).unwrap();
        wait_for("the grandchild", || !running_with(&marker).is_empty());
        drop(p);
        // No grace period: when the probe is dropped, the namespace is gone.
        assert_eq!(running_with(&marker), Vec::<String>::new(), "a grandchild survived (user {user:?})");
    }
}

#[test]
fn the_emulator_inherits_no_descriptor_and_gets_no_new_privileges() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A descriptor without close-on-exec in this process, as a careless library leaves one.
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    let leaked = nix::unistd::dup(f.as_raw_fd()).unwrap();
    let fake = script(dir.path(), "fake", "exec sleep 1002");
    for user in users() {
        let opts = ProcessOptions { user: user.clone(), ..Default::default() };
        let p = ProbeProcess::start(&fake, Accel::Tcg, &opts).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", p.emulator_pid()));
        wait_for("the exec of sleep", || {
            std::fs::read(proc.join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("sleep"))
        });
        let mut fds: Vec<String> = std::fs::read_dir(proc.join("fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"], "descriptors of the emulator (user {user:?}; leaked fd {leaked})");
        let status = std::fs::read_to_string(proc.join("status")).unwrap();
        assert!(status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]), "{status}");
        if let Some(u) = &user {
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(uid.split_whitespace().skip(1).all(|v| v == u.uid.to_string()), "{uid}");
            let gid = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
            assert!(gid.split_whitespace().skip(1).all(|v| v == u.gid.to_string()), "{gid}");
        }
        // Only stdin, stdout, stderr: the leader keeps nothing of ours either.
        let leader = PathBuf::from(format!("/proc/{}/fd", p.pid().unwrap()));
        let n = std::fs::read_dir(leader).unwrap().count();
        assert!(n <= 4, "the leader holds {n} descriptors");
    }
    let _ = nix::unistd::close(leaked);
}

#[test]
fn an_emulator_that_exits_reports_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let fake = script(dir.path(), "fake", "echo 'qemu: broken' >&2\nexit 3");
    let mut p = ProbeProcess::start(&fake, Accel::Tcg, &ProcessOptions::default()).unwrap();
    let e = p.connect(&ProcessOptions::default()).unwrap_err().to_string();
    assert!(e.contains("exit status: 3") && e.contains("qemu: broken"), "{e}");
}

mod probe_user {
    use driver_qemu::process::{choose_probe_user_from, ProbeUser, UserSources};
    use std::path::Path;

    fn sources(env: Option<&str>, conf: Option<&str>, libvirt: bool) -> (tempfile::TempDir, UserSources) {
        let dir = tempfile::tempdir().unwrap();
        let qemu_conf = dir.path().join("qemu.conf");
        if let Some(c) = conf {
            std::fs::write(&qemu_conf, c).unwrap();
        }
        (dir, UserSources { env: env.map(str::to_owned), qemu_conf, libvirt_installed: libvirt })
    }

    fn chosen(env: Option<&str>, conf: Option<&str>, libvirt: bool) -> Option<ProbeUser> {
        let (_d, s) = sources(env, conf, libvirt);
        choose_probe_user_from(&s).unwrap()
    }

    fn exists(name: &str) -> bool {
        ProbeUser::from_name(name).is_ok()
    }

    #[test]
    fn the_explicit_setting_wins() {
        let conf = Some("user = \"nobody\"\n");
        assert_eq!(chosen(Some("root"), conf, true), None);
        assert_eq!(chosen(Some("nobody"), None, false).unwrap().uid, 65534);
        let (_d, s) = sources(Some("no-such-user-capsd"), None, false);
        let e = choose_probe_user_from(&s).unwrap_err();
        assert!(e.to_string().contains("no-such-user-capsd"), "{e}");
    }

    #[test]
    fn libvirts_qemu_user_and_group_are_used() {
        let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap().gid.as_raw();
        let u = chosen(None, Some("#user = \"root\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n"), true).unwrap();
        assert_eq!((u.name.as_str(), u.uid, u.gid), ("nobody", 65534, nogroup));
        assert!(u.groups.contains(&nogroup), "{u:?}");
        // Numeric forms, as libvirt accepts them.
        let u = chosen(None, Some("user = \"+65534\"\ngroup = \"+0\"\n"), true).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 0));
        // libvirt configured to run QEMU as root: so do we.
        assert_eq!(chosen(None, Some("user = \"root\"\ngroup = \"root\"\n"), true), None);
        // Without libvirt its configuration does not count.
        let without = chosen(None, Some("user = \"root\"\n"), false).unwrap();
        assert_eq!(without.name, if exists("capsd") { "capsd" } else { "nobody" });
    }

    #[test]
    fn libvirts_default_user_when_qemu_conf_is_silent() {
        let u = chosen(None, Some("# user = \"root\"\n"), true).unwrap();
        let expected = if exists("libvirt-qemu") {
            "libvirt-qemu"
        } else if exists("capsd") {
            "capsd"
        } else {
            "nobody"
        };
        assert_eq!(u.name, expected);
    }

    #[test]
    fn kvm_access_is_tried_with_the_users_identity() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let nobody = ProbeUser::from_name("nobody").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (mode, can) in [(0o600, false), (0o606, true), (0o660, false)] {
            std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(nobody.can_open(&dev), can, "mode {mode:o}");
        }
        // Through a supplementary group, as libvirt's QEMU user gets /dev/kvm via 'kvm'.
        let with_group = ProbeUser { groups: vec![4242], ..nobody.clone() };
        nix::unistd::chown(&dev, None, Some(nix::unistd::Gid::from_raw(4242))).unwrap();
        assert!(with_group.can_open(&dev));
        assert!(!nobody.can_open(&dev));
        assert!(!nobody.can_open(Path::new("/nonexistent/kvm")));
    }
}
