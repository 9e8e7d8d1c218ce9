//! `cargo xtask deb --test`: install the package into clean Debian chroots and use it there
//! as an operator would.
//!
//! One base chroot per suite (debootstrap minbase + systemd, man-db, bash-completion and the
//! host's QEMU system emulator), built once under `/var/lib/capsd-deb-test/SUITE/base`
//! (`CAPSD_DEB_TEST_DIR` overrides the parent) and reused while its recipe is unchanged. Each
//! run works on an overlay of it, thrown away afterwards, so every run starts from the same
//! clean system and the base is never written. The host's /proc, /sys and /dev are bound
//! into the overlay only while a run lasts. One run at a time (needs root).
//!
//! The checks, in order, each reported as passed or failed with the reason: Debian's lintian
//! finds no error or warning in the package; then in each chroot: apt installs
//! the package; `capsd --version`; `capsd domcapabilities --driver test`; `capsd
//! domcapabilities` with the chroot's QEMU; `man -w` finds the pages; bash completes `capsd
//! dom<TAB>`; `systemd-analyze verify` passes on the units; the system user, group kvm and
//! directories exist; `capsd serve` started by `systemd-socket-activate` exactly as the
//! installed units say (socket path, ExecStart, user) answers on the socket; `systemctl
//! enable capsd.socket`; and `dpkg --remove`, then `--purge capsd` leaves no file behind.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Report;

/// What a base chroot holds besides minbase; a change rebuilds the bases.
const BASE_PACKAGES: &str = "systemd man-db bash-completion";

/// Paths that may differ after the purge for reasons other than the package: dpkg's and
/// apt's own records and logs, man-db's index (its trigger re-indexes on install and purge),
/// the user and group databases (Debian keeps system users on purge) and their backups, and
/// the state systemd's tools (systemctl, systemd-analyze) keep in /run/systemd.
const STATE_PATHS: [&str; 12] = [
    "run/systemd/",
    "var/lib/dpkg/",
    "var/log/",
    "var/cache/man/",
    "var/cache/debconf/",
    "var/cache/apt/",
    "var/lib/apt/",
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "etc/gshadow",
    "etc/subuid",
];

pub fn run(root: &Path, deb: &Path, suites: &[String], report: &mut Report) -> Result<()> {
    super::require_tools(&[
        ("debootstrap", "debootstrap"),
        ("chroot", "coreutils"),
        ("mount", "mount"),
        ("lintian", "lintian"),
    ])?;
    let dir = test_dir();
    let arch = super::output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let commit = super::output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(root))
        .map(|c| c.trim().to_owned())
        .ok();
    report.check("host", "lintian: no errors or warnings", || {
        super::output(Command::new("lintian").args(["--fail-on", "error,warning"]).arg(deb)).map(drop)
    });
    for suite in suites {
        let t = Instant::now();
        let base = ensure_base(&dir.join(suite), suite, &arch)?;
        let built = t.elapsed();
        let t = Instant::now();
        {
            let sys = Overlay::mount(&dir.join(suite), &base)?;
            let ctx =
                Ctx { root: sys.merged.clone(), suite: suite.clone(), deb: deb.to_path_buf(), commit: commit.clone() };
            checks(&ctx, report);
        }
        println!(
            "xtask deb: {suite}: base ready in {:.0} s, checks took {:.0} s",
            built.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Where the cached bases live: `/var/lib/capsd-deb-test`, or `$CAPSD_DEB_TEST_DIR`.
pub(super) fn test_dir() -> PathBuf {
    std::env::var_os("CAPSD_DEB_TEST_DIR").map_or_else(|| PathBuf::from("/var/lib/capsd-deb-test"), PathBuf::from)
}

/// The Debian mirror this machine's apt uses (its main archive, not the security one).
pub(super) fn mirror() -> Result<String> {
    let mut text = String::new();
    for f in ["/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"] {
        text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        text.push('\n');
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "list" || x == "sources") {
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:").or_else(|| l.trim().strip_prefix("deb ")))
        .flat_map(str::split_whitespace)
        .find(|u| u.starts_with("http") && u.trim_end_matches('/').ends_with("/debian"))
        .map(str::to_owned)
        .context("no Debian mirror (…/debian) in this machine's apt sources")
}

/// The base chroot of `suite`, built when missing or made from another recipe.
fn ensure_base(dir: &Path, suite: &str, arch: &str) -> Result<PathBuf> {
    let base = dir.join("base");
    let marker = dir.join("base.ready");
    let recipe = format!("{suite} minbase + {BASE_PACKAGES} {}\n", super::qemu_for(arch));
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(recipe.as_str()) {
        return Ok(base);
    }
    println!("xtask deb: building the {suite} chroot in {} (a few minutes, once)", base.display());
    let _ = std::fs::remove_file(&marker);
    refuse_mounted(dir)?;
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let log = dir.join("debootstrap.log");
    let script = format!("/usr/share/debootstrap/scripts/{suite}");
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", suite])
        .arg(&base)
        .arg(mirror()?)
        .arg(&script)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("debootstrap.err"))?)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        bail!("debootstrap {suite} failed ({status}); see {} and debootstrap.err beside it", log.display());
    }
    {
        let _mounts = Mounts::bind_host(&base)?;
        std::fs::copy("/etc/resolv.conf", base.join("etc/resolv.conf")).context("copying resolv.conf")?;
        // setpriv (to start capsd as its user, as systemd does) left util-linux in newer suites.
        let pkgs = format!("{BASE_PACKAGES} {}", super::qemu_for(arch));
        in_chroot(
            &base,
            &format!(
                "apt-get -q update >/dev/null
                 extra=''; apt-cache show setpriv >/dev/null 2>&1 && extra=setpriv
                 apt-get -q -y install --no-install-recommends {pkgs} $extra >/dev/null
                 apt-get clean"
            ),
        )
        .context("installing the base packages")?;
    }
    std::fs::write(&marker, recipe)?;
    Ok(base)
}

/// Refuse to delete a tree something is still mounted in (a host /dev bound in, say).
pub(super) fn refuse_mounted(dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let prefix = dir.to_string_lossy().into_owned();
    if let Some(m) = mounts.lines().filter_map(|l| l.split(' ').nth(1)).find(|m| m.starts_with(&prefix)) {
        bail!("{m} is still mounted: unmount it before the chroot under {prefix} is rebuilt");
    }
    Ok(())
}

fn mount(args: &[&str], target: &Path) -> Result<()> {
    super::output(Command::new("mount").args(args).arg(target)).map(drop)
}

/// Mount points made by a run, unmounted in reverse order when dropped.
#[derive(Debug, Default)]
pub(super) struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// The host's /proc, /sys, /dev and /dev/pts bound into `root`.
    pub(super) fn bind_host(root: &Path) -> Result<Mounts> {
        let mut m = Mounts::default();
        m.bind_into(root)?;
        Ok(m)
    }

    fn bind_into(&mut self, root: &Path) -> Result<()> {
        for d in ["proc", "sys", "dev", "dev/pts"] {
            let target = root.join(d);
            mount(&["--bind", &format!("/{d}")], &target)?;
            self.0.push(target);
        }
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let ok = Command::new("umount").arg(target).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// A writable overlay of a base chroot with the host's special file systems bound in; all of
/// it unmounted and deleted when dropped.
#[derive(Debug)]
struct Overlay {
    merged: PathBuf,
    run: PathBuf,
    mounts: Mounts,
}

impl Overlay {
    fn mount(dir: &Path, base: &Path) -> Result<Overlay> {
        let run = dir.join("run");
        refuse_mounted(&run)?;
        if run.exists() {
            std::fs::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
        }
        let (upper, work, merged) = (run.join("upper"), run.join("work"), run.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d)?;
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", base.display(), upper.display(), work.display());
        let mut o = Overlay { merged: merged.clone(), run, mounts: Mounts::default() };
        mount(&["-t", "overlay", "overlay", "-o", &opts], &merged)?;
        o.mounts.0.push(merged.clone());
        o.mounts.bind_into(&merged)?;
        Ok(o)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        std::mem::take(&mut self.mounts);
        if refuse_mounted(&self.run).is_ok() {
            let _ = std::fs::remove_dir_all(&self.run);
        }
    }
}

/// `sh -ec SCRIPT` in the chroot with a clean environment; its stdout, or an error with its
/// output.
pub(super) fn in_chroot(root: &Path, script: &str) -> Result<String> {
    let out = Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C.UTF-8"])
        .args(["DEBIAN_FRONTEND=noninteractive", "TERM=dumb", "timeout", "600", "sh", "-ec", script])
        .stdin(Stdio::null())
        .output()
        .context("running chroot")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            script.trim(),
            out.status,
            tail(&stdout),
            tail(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(stdout)
}

pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].iter().map(|l| format!("  {l}\n")).collect()
}

struct Ctx {
    root: PathBuf,
    suite: String,
    deb: PathBuf,
    commit: Option<String>,
}

fn checks(ctx: &Ctx, report: &mut Report) {
    let root = &ctx.root;
    let suite = ctx.suite.as_str();
    let before = match tree(root) {
        Ok(t) => t,
        Err(e) => {
            report.fail(suite, "listing the clean chroot", e);
            return;
        }
    };
    let deb_name = ctx.deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let installed = report.check(suite, "apt install ./capsd_*.deb", || {
        std::fs::copy(&ctx.deb, root.join("tmp").join(&deb_name)).context("copying the package in")?;
        in_chroot(root, &format!("cd /tmp && apt-get -q -y install ./{deb_name} >/dev/null"))?;
        let status = in_chroot(root, "dpkg-query -W -f '${Status}' capsd")?;
        if status != "install ok installed" {
            bail!("dpkg says '{status}'");
        }
        let fields = in_chroot(root, &format!("dpkg-deb -f /tmp/{deb_name} Depends Recommends Suggests"))?;
        for want in ["libc6 (>= ", "Recommends: qemu-system", "Suggests: libvirt-daemon-system"] {
            if !fields.contains(want) {
                bail!("control fields lack '{want}':\n{fields}");
            }
        }
        Ok(())
    });
    if !installed {
        return;
    }
    report.check(suite, "capsd --version", || {
        let v = in_chroot(root, "capsd --version")?;
        let drivers = "drivers built in: qemu, xen, lxc, test";
        let commit = ctx.commit.as_deref().map(|c| format!("commit: {c}"));
        if !v.starts_with(&format!("capsd {}\n", env!("CARGO_PKG_VERSION")))
            || !v.contains(drivers)
            || commit.is_some_and(|c| !v.contains(&c))
        {
            bail!("unexpected:\n{v}");
        }
        Ok(())
    });
    report.check(suite, "capsd domcapabilities --driver test", || {
        let doc = in_chroot(root, "capsd domcapabilities --driver test")?;
        if !doc.starts_with("<domainCapabilities>\n") || !doc.ends_with("</domainCapabilities>\n") {
            bail!("not a document:\n{}", tail(&doc));
        }
        Ok(())
    });
    report.check(suite, "capsd domcapabilities (the chroot's QEMU)", || {
        let doc = in_chroot(root, "capsd domcapabilities")?;
        if !doc.starts_with("<domainCapabilities>\n  <path>/usr/bin/qemu-system-") || !doc.contains("<machine>") {
            bail!("not a QEMU document:\n{}", tail(&doc));
        }
        Ok(())
    });
    report.check(suite, "man -w capsd, capsd-domcapabilities; man capsd-serve", || {
        let paths = in_chroot(root, "man -w capsd; man -w capsd-domcapabilities")?;
        let want = "/usr/share/man/man1/capsd.1.gz\n/usr/share/man/man1/capsd-domcapabilities.1.gz\n";
        if paths != want {
            bail!("man -w said:\n{paths}");
        }
        let page = in_chroot(root, "MANPAGER=cat MANWIDTH=100 man capsd-serve 2>/dev/null")?;
        // man may hyphenate a long word across lines ("LIS‐\n   TEN_FDS"): join those first.
        let joined: String = page.split('\n').map(str::trim).fold(String::new(), |mut acc, line| {
            if acc.ends_with('\u{2010}') {
                acc.pop();
            } else if !acc.is_empty() {
                acc.push(' ');
            }
            acc.push_str(line);
            acc
        });
        if !joined.contains("LISTEN_FDS") || !joined.contains("--recheck-ms") {
            bail!("capsd-serve(1) lacks the serve options:\n{}", tail(&page));
        }
        Ok(())
    });
    report.check(suite, "bash completes capsd dom<TAB>", || {
        let script = r#"bash -c '
            . /usr/share/bash-completion/bash_completion
            if declare -F _comp_load >/dev/null; then _comp_load capsd; else _completion_loader capsd; fi
            f=$(complete -p capsd | sed -E "s/.* -F ([^ ]+) .*/\1/")
            COMP_WORDS=(capsd dom); COMP_CWORD=1; COMP_LINE="capsd dom"; COMP_POINT=${#COMP_LINE}
            "$f" capsd dom capsd
            printf "%s\n" "${COMPREPLY[@]}"'"#;
        let words = in_chroot(root, script)?;
        let words: Vec<&str> = words.lines().map(str::trim).filter(|w| !w.is_empty()).collect();
        if !words.contains(&"domcapabilities") || words.iter().any(|w| !w.starts_with("dom")) {
            bail!("completions offered: {words:?}");
        }
        Ok(())
    });
    report.check(suite, "systemd-analyze verify capsd.socket capsd.service; security", || {
        let out = Command::new("chroot")
            .arg(root)
            .args(["systemd-analyze", "verify", "/usr/lib/systemd/system/capsd.socket"])
            .arg("/usr/lib/systemd/system/capsd.service")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .output()?;
        let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        // Lines about other units come from the chroot's own (unbooted) system.
        let ours: Vec<&str> = said.lines().filter(|l| l.contains("capsd")).collect();
        if !out.status.success() || !ours.is_empty() {
            bail!("{}:\n{said}", out.status);
        }
        if !said.trim().is_empty() {
            println!("xtask deb: note: systemd-analyze verify also said (about the chroot itself):\n{}", tail(&said));
        }
        // systemd's own rating of the hardening: it must stay in its "OK" band or better.
        let security = in_chroot(
            root,
            "systemd-analyze security --offline=yes --no-pager /usr/lib/systemd/system/capsd.service 2>&1",
        )?;
        let verdict = security.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().trim();
        println!("xtask deb: systemd-analyze security: {verdict}");
        let level = verdict.rsplit(": ").next().and_then(|v| v.split_whitespace().nth(1)).unwrap_or_default();
        if !["SAFE", "OK"].contains(&level) {
            bail!("capsd.service is rated worse than OK:\n{}", tail(&security));
        }
        Ok(())
    });
    report.check(suite, "user capsd, group kvm, /var/cache/capsd, plugin directory", || {
        let said = in_chroot(
            root,
            "getent passwd capsd | cut -d: -f1,6,7; id -nG capsd; stat -c '%U:%G %a' /var/cache/capsd; \
             test -d /usr/lib/capsd/plugins && echo plugins",
        )?;
        let lines: Vec<&str> = said.lines().collect();
        let shell_ok = lines.first().is_some_and(|l| l.starts_with("capsd:/nonexistent:") && l.ends_with("nologin"));
        let groups_ok = lines.get(1).is_some_and(|g| g.split_whitespace().any(|g| g == "kvm"));
        if !shell_ok || !groups_ok || lines.get(2) != Some(&"capsd:capsd 755") || lines.get(3) != Some(&"plugins") {
            bail!("unexpected:\n{said}");
        }
        Ok(())
    });
    report.check(suite, "capsd serve, socket-activated as the units say, answers", || socket_activated(root));
    report.check(suite, "systemctl enable capsd.socket", || {
        in_chroot(root, "systemctl enable capsd.socket 2>&1")?;
        if !root.join("etc/systemd/system/sockets.target.wants/capsd.socket").is_symlink() {
            bail!("no sockets.target.wants/capsd.socket link");
        }
        Ok(())
    });
    let owned = in_chroot(root, "dpkg-query -L capsd").unwrap_or_default();
    report.check(suite, "dpkg --remove, then --purge capsd leaves nothing behind", || {
        in_chroot(root, "dpkg --remove capsd >/dev/null")?;
        if root.join("usr/bin/capsd").exists() {
            bail!("dpkg --remove left /usr/bin/capsd");
        }
        in_chroot(root, "dpkg --purge capsd >/dev/null")?;
        let after = tree(root)?;
        let mut left: Vec<String> = after
            .difference(&before)
            .filter(|p| !STATE_PATHS.iter().any(|s| p.starts_with(s) || p.as_str() == s.trim_end_matches('/')))
            .cloned()
            .collect();
        // And nothing the package listed that was not there before (directories it shares,
        // like /usr/share/man/man1, were).
        for p in owned.lines().map(|l| l.trim_start_matches('/')) {
            if !p.is_empty() && p != "." && !before.contains(p) && root.join(p).symlink_metadata().is_ok() {
                left.push(p.to_owned());
            }
        }
        left.sort();
        left.dedup();
        if !left.is_empty() {
            bail!("left behind: {}", left.join(", "));
        }
        Ok(())
    });
}

/// Every path in the chroot, relative, except the host's file systems bound in and /tmp.
fn tree(root: &Path) -> Result<BTreeSet<String>> {
    Ok(super::walk(root, &["proc", "sys", "dev", "tmp"])?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

/// The value of `key=` in a unit file (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

/// Start `capsd serve` from the installed units' own settings (capsd.socket's ListenStream,
/// capsd.service's User and ExecStart) under systemd-socket-activate, which passes the socket
/// as systemd does; query it on that socket from outside the chroot.
fn socket_activated(root: &Path) -> Result<()> {
    let units = root.join("usr/lib/systemd/system");
    let socket_unit = std::fs::read_to_string(units.join("capsd.socket"))?;
    let service = std::fs::read_to_string(units.join("capsd.service"))?;
    let listen = unit_value(&socket_unit, "ListenStream").context("capsd.socket has no ListenStream=")?;
    let user = unit_value(&service, "User").context("capsd.service has no User=")?;
    let exec = unit_value(&service, "ExecStart").context("capsd.service has no ExecStart=")?;
    let socket = root.join(listen.trim_start_matches('/'));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin", "RUST_LOG=info"])
        .args(["systemd-socket-activate", "-l", &listen, "setpriv"])
        .args(["--reuid", &user, "--regid", &user, "--init-groups", "--"])
        .args(exec.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = Kill(cmd.spawn().context("starting systemd-socket-activate")?);
    let health = get(&socket, "/healthz")?;
    let test = get(&socket, "/v1/domcapabilities?driver=test")?;
    let qemu = get(&socket, "/v1/domcapabilities")?;
    let log = child.stop()?;
    if !health.ends_with("\r\n\r\nok\n") {
        bail!("/healthz answered:\n{health}\nlog:\n{}", tail(&log));
    }
    // The same document as the CLI's, and a QEMU probe made as the unit's user (its cache
    // file belongs to that user).
    let cli = in_chroot(root, "capsd domcapabilities --driver test")?;
    let probed_as_user = in_chroot(root, &format!("find /var/cache/capsd -type f -user {user} -name '*.probe'"))?;
    for (what, resp, body) in
        [("driver=test", &test, cli.as_str()), ("qemu", &qemu, "<domainCapabilities>\n  <path>/usr/bin/qemu-system-")]
    {
        if !resp.starts_with("HTTP/1.1 200") || !resp.contains(&format!("\r\n\r\n{body}")) {
            bail!("{what} answered:\n{}\nlog:\n{}", tail(resp), tail(&log));
        }
    }
    if probed_as_user.trim().is_empty() {
        bail!("no probe cache file of user {user} in /var/cache/capsd\nlog:\n{}", tail(&log));
    }
    Ok(())
}

/// One GET on a Unix socket, the whole response as text.
fn get(socket: &Path, target: &str) -> Result<String> {
    // systemd-socket-activate may not listen yet (the file appears at bind, before listen).
    let t = Instant::now();
    let mut s = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                if !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) {
                    bail!("connecting to {}: {e}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => bail!("nothing listens on {} after 10 s: {e}", socket.display()),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "GET {target} HTTP/1.1\r\nHost: capsd\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out).with_context(|| format!("reading the answer to {target}"))?;
    Ok(out)
}

/// A child process stopped with SIGTERM (SIGKILL after 10 s) at the latest when dropped.
struct Kill(Child);

impl Kill {
    /// Stop it; its stderr.
    fn stop(mut self) -> Result<String> {
        self.terminate();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Ok(err)
    }

    fn terminate(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_values_are_read_as_systemd_reads_them() {
        let unit = "[Service]\n# ExecStart=/commented\nExecStart=/usr/bin/capsd serve\nUser=x\nUser = capsd\nUserX=y\n";
        assert_eq!(super::unit_value(unit, "ExecStart").as_deref(), Some("/usr/bin/capsd serve"));
        assert_eq!(super::unit_value(unit, "User").as_deref(), Some("capsd"));
        assert_eq!(super::unit_value(unit, "Group"), None);
    }
}
