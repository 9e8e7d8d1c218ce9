//! `cargo xtask deb [--test] [--suite SUITE]...`: the Debian package
//! `target/debian/capsd_<version>_<arch>.deb`, and with `--test` its installation tests in
//! clean Debian chroots (`deb/chroot.rs`).
//!
//! Packaged with `dpkg-deb`, driven from here, rather than with cargo-deb: dpkg-deb is part of
//! every Debian system (nothing to build or install on CI), the dependencies come from
//! `dpkg-shlibdeps` as Debian's own tooling computes them, and the package's parts that are
//! not Rust (the units, sysusers.d and tmpfiles.d files, maintainer scripts, control template,
//! copyright and changelog) are plain files under `dist/` a reviewer reads as they ship.
//! The man pages and completions are written by the release binary itself (its hidden
//! `generate-assets`), so they describe exactly the binary in the package.
//!
//! The package is assembled in a staging directory and renamed into place when complete:
//! a failed run leaves no package behind.

mod chroot;
mod vm;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::test::workspace_root;

const USAGE: &str = "usage: cargo xtask deb [--test] [--suite bookworm|trixie]... [--only chroots|vm]";

const HELP: &str = "Builds the release binary and target/debian/capsd_<version>_<arch>.deb from it and dist/.
  --test         then (as root) run lintian on it, install and check it in clean chroots of each
                 suite, and use its units under systemd as PID 1 in a Debian 13 VM booted by QEMU
                 (KVM when it works here, else TCG; CAPSD_DEB_TEST_ACCEL=kvm|tcg forces one).
                 debootstrap bases and the VM image are cached in /var/lib/capsd-deb-test (or
                 $CAPSD_DEB_TEST_DIR)
  --suite SUITE  only this suite's chroot (repeatable; default: bookworm and trixie)
  --only WHAT    with --test: only the chroots (and lintian), or only the VM";

/// What `--test` installs into when no `--suite` is given: Debian 12 and Debian 13.
const SUITES: [&str; 2] = ["bookworm", "trixie"];

pub fn run(args: &[String]) -> Result<()> {
    let mut test = false;
    let mut suites = Vec::new();
    let (mut chroots, mut vm) = (true, true);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}\n\n{HELP}");
                return Ok(());
            }
            "--test" => test = true,
            "--suite" => {
                let s = it.next().with_context(|| format!("--suite needs a value\n{USAGE}"))?;
                if !SUITES.contains(&s.as_str()) {
                    bail!("--suite '{s}': not a suite the tests know (have: {})", SUITES.join(", "));
                }
                suites.push(s.clone());
            }
            "--only" => match it.next().map(String::as_str) {
                Some("chroots") => vm = false,
                Some("vm") => chroots = false,
                other => bail!("--only takes 'chroots' or 'vm', not {other:?}\n{USAGE}"),
            },
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    if suites.is_empty() {
        suites = SUITES.iter().map(|s| s.to_string()).collect();
    }
    let root = workspace_root();
    let deb = build(&root)?;
    println!("xtask deb: wrote {}", deb.display());
    if test {
        if !crate::test::is_root() {
            bail!("cargo xtask deb --test builds and enters chroots and boots a VM: run it as root");
        }
        let mut report = Report::default();
        if chroots {
            chroot::run(&root, &deb, &suites, &mut report)?;
        }
        if vm {
            vm::run(&deb, &mut report)?;
        }
        let failed = report.failed.len();
        for (name, why) in &report.failed {
            println!("xtask deb: FAILED {name}: {why:#}");
        }
        println!("deb: {} passed, {failed} failed", report.passed);
        if failed > 0 {
            bail!("{failed} package check(s) failed");
        }
    }
    Ok(())
}

/// The package checks' results, printed as they come.
#[derive(Debug, Default)]
struct Report {
    passed: usize,
    failed: Vec<(String, anyhow::Error)>,
}

impl Report {
    fn check(&mut self, place: &str, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        let t = std::time::Instant::now();
        match f() {
            Ok(()) => {
                self.pass(place, &format!("{name} ({:.1} s)", t.elapsed().as_secs_f64()));
                true
            }
            Err(e) => {
                self.fail(place, name, e);
                false
            }
        }
    }

    fn pass(&mut self, place: &str, name: &str) {
        println!("xtask deb: ok {place}: {name}");
        self.passed += 1;
    }

    fn fail(&mut self, place: &str, name: &str, why: anyhow::Error) {
        println!("xtask deb: FAILED {place}: {name}: {why:#}");
        self.failed.push((format!("{place}: {name}"), why));
    }
}

/// Command output as text, failing with the command and its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{what}: output is not UTF-8"))
}

fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .map(|(t, pkg)| format!("{t} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {} (`sudo .ci/setup` installs them)", missing.join(", "));
    }
    Ok(())
}

/// Build the release binary and the package; the path of the `.deb`.
fn build(root: &Path) -> Result<PathBuf> {
    require_tools(&[
        ("dpkg-deb", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("strip", "binutils"),
        ("gzip", "gzip"),
        ("md5sum", "coreutils"),
    ])?;
    let version = env!("CARGO_PKG_VERSION");
    let dist = root.join("dist");
    let changelog = std::fs::read_to_string(dist.join("debian/changelog")).context("reading dist/debian/changelog")?;
    let top = changelog_version(&changelog)?;
    if top != version {
        bail!("dist/debian/changelog's latest entry is version {top}, the crates are {version}: add an entry");
    }
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let bin = crate::bench::agent::build_capsd()?;

    let out_dir = bin.parent().and_then(Path::parent).context("target directory")?.join("debian");
    let name = format!("capsd_{version}_{arch}");
    let stage = out_dir.join(format!(".stage-{name}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let result = assemble(root, &bin, &stage, version, &arch, &changelog).and_then(|()| {
        let tmp = out_dir.join(format!(".{name}.deb.tmp"));
        output(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&tmp))?;
        let deb = out_dir.join(format!("{name}.deb"));
        std::fs::rename(&tmp, &deb).with_context(|| format!("renaming {} to {}", tmp.display(), deb.display()))?;
        Ok(deb)
    });
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// The version of the first entry of a Debian changelog: `capsd (VERSION) suite; ...`.
fn changelog_version(text: &str) -> Result<&str> {
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("capsd (")
        .and_then(|r| r.split_once(')'))
        .map(|(v, _)| v)
        .with_context(|| format!("dist/debian/changelog: first line '{first}' is not 'capsd (VERSION) ...'"))
}

/// A file under the staging tree with `mode`, its directories 0755.
fn put(stage: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = stage.join(rel);
    let dir = path.parent().context("file without directory")?;
    mkdirs(dir)?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn mkdirs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // dpkg-deb wants plain directory modes whatever the umask.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("waiting for gzip")?;
    writer.join().map_err(|_| anyhow::anyhow!("gzip writer panicked"))?.context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The staging tree: every file of the package and its DEBIAN control directory.
fn assemble(root: &Path, bin: &Path, stage: &Path, version: &str, arch: &str, changelog: &str) -> Result<()> {
    let dist = root.join("dist");
    let read = |rel: &str| std::fs::read(dist.join(rel)).with_context(|| format!("reading dist/{rel}"));
    mkdirs(stage)?;

    // The binary, stripped of debug information and symbols as Debian ships binaries.
    let usr_bin = stage.join("usr/bin");
    mkdirs(&usr_bin)?;
    let staged_bin = usr_bin.join("capsd");
    output(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note", "--strip-unneeded", "-o"])
            .arg(&staged_bin)
            .arg(bin),
    )?;
    std::fs::set_permissions(&staged_bin, std::fs::Permissions::from_mode(0o755))?;
    mkdirs(&stage.join("usr/lib/capsd/plugins"))?;

    put(stage, "usr/lib/systemd/system/capsd.service", &read("capsd.service")?, 0o644)?;
    put(stage, "usr/lib/systemd/system/capsd.socket", &read("capsd.socket")?, 0o644)?;
    put(stage, "usr/lib/sysusers.d/capsd.conf", &read("capsd.sysusers")?, 0o644)?;
    put(stage, "usr/lib/tmpfiles.d/capsd.conf", &read("capsd.tmpfiles")?, 0o644)?;
    // The drop-in a fleet host installs to let the agent reach etcd members off loopback.
    put(stage, "usr/share/doc/capsd/examples/fleet.conf", &read("fleet.conf")?, 0o644)?;

    // Man pages and completions, written by the binary being packaged.
    let gen = Scratch::new(stage, "generated")?;
    let (man, comp) = (gen.0.join("man"), gen.0.join("completions"));
    mkdirs(&man)?;
    mkdirs(&comp)?;
    output(Command::new(&staged_bin).arg("generate-assets").arg("--man").arg(&man).arg("--completions").arg(&comp))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("capsd.1")) {
        bail!("capsd generate-assets wrote no capsd.1 into {}", man.display());
    }
    for page in &pages {
        let file = page.file_name().context("page name")?.to_string_lossy().into_owned();
        put(stage, &format!("usr/share/man/man1/{file}.gz"), &gzip(&std::fs::read(page)?)?, 0o644)?;
    }
    for (generated, installed) in [
        ("capsd.bash", "usr/share/bash-completion/completions/capsd"),
        ("_capsd", "usr/share/zsh/vendor-completions/_capsd"),
        ("capsd.fish", "usr/share/fish/vendor_completions.d/capsd.fish"),
    ] {
        let bytes = std::fs::read(comp.join(generated)).with_context(|| format!("generated completion {generated}"))?;
        put(stage, installed, &bytes, 0o644)?;
    }
    drop(gen);

    let copyright = String::from_utf8(read("debian/copyright")?)?;
    put(stage, "usr/share/doc/capsd/copyright", with_crates(root, &copyright)?.as_bytes(), 0o644)?;
    put(stage, "usr/share/doc/capsd/changelog.gz", &gzip(changelog.as_bytes())?, 0o644)?;

    // DEBIAN: control (template filled), md5sums, maintainer scripts.
    let md5sums = md5sums(stage)?;
    let installed_kib = installed_size(stage)?;
    let control = String::from_utf8(read("debian/control")?)?
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@INSTALLED_SIZE@", &installed_kib.to_string())
        .replace("@SHLIBS@", &shlibs(stage, &staged_bin)?)
        .replace("@QEMU@", qemu_for(arch));
    if let Some(left) = placeholder(&control) {
        bail!("dist/debian/control: unknown placeholder {left}");
    }
    put(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(stage, "DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(stage, &format!("DEBIAN/{script}"), &read(&format!("debian/{script}"))?, 0o755)?;
    }
    Ok(())
}

/// The first `@NAME@` (capitals and '_') left in `text`.
fn placeholder(text: &str) -> Option<&str> {
    text.match_indices('@').find_map(|(i, _)| {
        let rest = &text[i + 1..];
        let end = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_'))?;
        (end > 0 && rest[end..].starts_with('@')).then(|| &text[i..i + end + 2])
    })
}

/// A fresh scratch directory beside the staging tree (not in it: it is not packaged),
/// removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(stage: &Path, what: &str) -> Result<Scratch> {
        let mut name = stage.file_name().context("staging directory name")?.to_os_string();
        name.push(format!("-{what}"));
        let dir = stage.with_file_name(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        mkdirs(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The package that runs this host's own emulator (QEMU is recommended, not required:
/// capsd's other drivers and commands work without it).
fn qemu_for(arch: &str) -> &'static str {
    match arch {
        "amd64" | "i386" => "qemu-system-x86",
        "arm64" | "armhf" | "armel" => "qemu-system-arm",
        "ppc64el" | "ppc64" | "powerpc" => "qemu-system-ppc",
        "s390x" => "qemu-system-s390x",
        _ => "qemu-system",
    }
}

/// The binary's shared library dependencies as Debian states them (`dpkg-shlibdeps`, which
/// wants a `debian/control` to run in).
fn shlibs(stage: &Path, bin: &Path) -> Result<String> {
    let scratch = Scratch::new(stage, "shlibdeps")?;
    let dir = &scratch.0;
    std::fs::create_dir_all(dir.join("debian"))?;
    std::fs::write(dir.join("debian/control"), "Source: capsd\n\nPackage: capsd\nArchitecture: any\n")?;
    let text = output(Command::new("dpkg-shlibdeps").arg("-O").arg(bin).current_dir(dir))?;
    let deps = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends line: {text}"))?;
    Ok(deps.trim().to_owned())
}

/// Every path under `dir` (directories too), relative and sorted, without the paths in
/// `skip` and what is below them.
fn walk(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let rel = e.path().strip_prefix(dir)?.to_path_buf();
            if skip.iter().any(|s| rel == Path::new(s)) {
                continue;
            }
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

fn md5sums(stage: &Path) -> Result<String> {
    let regular: Vec<PathBuf> = walk(stage, &["DEBIAN"])?.into_iter().filter(|p| stage.join(p).is_file()).collect();
    output(Command::new("md5sum").arg("--").args(&regular).current_dir(stage))
}

/// `Installed-Size` as dpkg-gencontrol counts it: KiB per file rounded up, one per directory.
fn installed_size(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for rel in walk(stage, &["DEBIAN"])? {
        let m = std::fs::symlink_metadata(stage.join(rel))?;
        kib += if m.is_file() { m.len().div_ceil(1024) } else { 1 };
    }
    Ok(kib)
}

/// The copyright file with the crates linked into the binary listed in its header comment:
/// the packages reachable from capsd through normal dependencies on this platform, proc-macro
/// crates (compiler plugins, not linked) and the workspace's own crates left out.
fn with_crates(root: &Path, template: &str) -> Result<String> {
    let host = output(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let meta: Value = serde_json::from_str(&output(
        Command::new(cargo).args(["metadata", "--format-version", "1", "--filter-platform", &host]).current_dir(root),
    )?)?;
    let packages = meta["packages"].as_array().context("cargo metadata: packages")?;
    let by_id = |id: &str| packages.iter().find(|p| p["id"] == id);
    let nodes = meta["resolve"]["nodes"].as_array().context("cargo metadata: resolve")?;
    let start = packages
        .iter()
        .find(|p| p["name"] == "capsd" && p["source"].is_null())
        .and_then(|p| p["id"].as_str())
        .context("cargo metadata: no capsd package")?;
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![start.to_owned()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).context("cargo metadata: node")?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().context("dep id")?.to_owned());
            }
        }
    }
    let mut lines = Vec::new();
    for id in &seen {
        let p = by_id(id).context("cargo metadata: package")?;
        let proc_macro = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "proc-macro")));
        if p["source"].is_null() || proc_macro {
            continue;
        }
        let license = p["license"].as_str().unwrap_or("(no license field: see the crate)");
        lines.push(format!(
            " {} {}: {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            license
        ));
    }
    lines.sort();
    lines.dedup();
    let mut listing = String::new();
    for l in &lines {
        let _ = writeln!(listing, "{l}");
    }
    let (head, rest) =
        template.split_once("\n\n").context("dist/debian/copyright: no blank line after the header paragraph")?;
    Ok(format!("{head}\n .\n{}\n{rest}", listing.trim_end()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn changelog_version_is_read_from_the_first_entry() {
        assert_eq!(super::changelog_version("capsd (1.2.3-1) unstable; urgency=medium\n\n  * x").unwrap(), "1.2.3-1");
        let e = super::changelog_version("foo (1.0) unstable").unwrap_err();
        assert!(e.to_string().contains("'foo (1.0) unstable'"), "{e}");
    }

    #[test]
    fn placeholders_left_are_found_and_mail_addresses_are_not_placeholders() {
        assert_eq!(super::placeholder("Maintainer: a <b@c.example>\nVersion: 1\n"), None);
        assert_eq!(super::placeholder("Depends: @SHLIBS@, x\n"), Some("@SHLIBS@"));
        assert_eq!(super::placeholder("a@b @QEMU_X@"), Some("@QEMU_X@"));
    }
}
