//! `cargo xtask corpus [--release V]... [--ratchet-add] [--keep DIR] [--tarball FILE]...`:
//! libvirt's own test corpus as a second oracle.
//!
//! libvirt's source tree records real QEMU probes of many hosts (Arm, IBM Z, POWER, RISC-V,
//! LoongArch, AMD SEV, ...) as QMP transcripts (`tests/qemucapabilitiesdata/caps_*.replies`)
//! and the documents its `tests/domaincapstest.c` prints from them
//! (`tests/domaincapsdata/qemu_*.xml`). For each release of [`RELEASES`] this task
//!
//! 1. **fetches** Debian's source package of that libvirt (`apt-get source --download-only`
//!    with a deb-src list, package lists and caches of its own under `target/corpus/`, so
//!    the machine's apt configuration is neither used nor changed; the archive's signed
//!    indexes are checked by apt against the machine's Debian keyring), checks the upstream
//!    tarball against the SHA-256 the `.dsc` states (or, where the mirror serves no `.dsc`,
//!    the signed Sources index, which states the same), and extracts the parts it reads
//!    (`tests/` and `src/cpu_map/`). All of it is cached under `target/corpus/`: a second
//!    run downloads nothing. Nothing of it is committed. `--tarball FILE` uses a
//!    `libvirt_<V>.orig.tar.xz` at hand instead of downloading (no `.dsc`: no checksum).
//! 2. **enumerates** the documents domaincapstest makes ([`cases`]): per transcript, by its
//!    arch and variant, the virt types and machines the test asks (x86_64: KVM default and
//!    q35, TCG default; aarch64: KVM default and virt; RISC-V and LoongArch (11.3): virt
//!    with KVM and TCG, RISC-V not at all in 9.0; others: KVM default; `+hvf` transcripts:
//!    hvf, and TCG on x86_64).
//! 3. **runs** `capsd domcapabilities --replay TRANSCRIPT --host-facts FACTS` with the
//!    query of each document and the host facts the harness fakes ([`facts`]), for that
//!    release (`--libvirt-version`), and
//! 4. **compares** byte for byte, after the one harness-only step below.
//!
//! Documents no real host can produce are left out and listed with the reason: hvf ones
//! (capsd probes Linux hosts: KVM and TCG), and KVM documents made from transcripts of
//! QEMU runs without KVM (the harness prints a KVM document whatever the transcript).
//!
//! **Harness-only step** (applied here to capsd's output, never inside capsd):
//! domaincapstest replaces the `<loader>` values with placeholder paths of its own (9.0:
//! three AAVMF/OVMF paths, 11.3: `/obviously/fake/firmware{1,2}.fd`) whatever the firmware
//! descriptors say; capsd's loader values are replaced by the same list.
//!
//! Prints `corpus libvirt V: N/M identical` per release and, for each document that
//! differs, its first differing line (expected and capsd's). A ratchet per release
//! (`driver-qemu/tests/data/corpus/libvirt-V.txt`) lists the documents that must stay
//! identical: one that no longer is fails the task; `--ratchet-add` adds the documents
//! that now are. `--keep DIR` writes capsd's documents (after the harness-only step) and the
//! facts files to `DIR/<release>/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::conformance::{build_capsd, read_ratchet};
use crate::test::workspace_root;

/// A libvirt release of the corpus and where Debian ships it.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// Upstream version (`libvirt_<version>.orig.tar.xz`).
    pub version: &'static str,
    /// The Debian suite whose source package is that version.
    pub suite: &'static str,
    /// Separator between the QEMU version and the arch in transcript names (9.0:
    /// `caps_8.0.0.x86_64`, 11.3: `caps_8.0.0_x86_64+variant`).
    pub caps_sep: char,
    /// The loader values domaincapstest puts in every document.
    pub placeholder_loaders: &'static [&'static str],
}

pub const RELEASES: [Release; 2] = [
    Release {
        version: "9.0.0",
        suite: "bookworm",
        caps_sep: '.',
        placeholder_loaders: &[
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF32_CODE.fd",
            "/usr/share/OVMF/OVMF_CODE.fd",
        ],
    },
    Release {
        version: "11.3.0",
        suite: "trixie",
        caps_sep: '_',
        placeholder_loaders: &["/obviously/fake/firmware1.fd", "/obviously/fake/firmware2.fd"],
    },
];

/// Debian's archive (sources).
const MIRROR: &str = "http://deb.debian.org/debian";

/// The ratchet of a release.
fn ratchet_path(root: &Path, r: &Release) -> PathBuf {
    root.join(format!("driver-qemu/tests/data/corpus/libvirt-{}.txt", r.version))
}

/// One document of domaincapstest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The document's name (`qemu_9.2.0-q35.x86_64+amdsev`).
    pub name: String,
    /// QEMU version of the transcript (`9.2.0`).
    pub qemu: String,
    /// Guest arch (libvirt's name, as in the file name).
    pub arch: String,
    /// `+amdsev`, `+hvf`, or empty.
    pub variant: String,
    /// `kvm`, `qemu` or `hvf`.
    pub virt: &'static str,
    pub machine: Option<&'static str>,
    /// The transcript file name (`caps_9.2.0_x86_64+amdsev.replies`).
    pub transcript: String,
}

/// Why a document is left out, when it is.
fn harness_only(case: &Case, transcript_has_kvm: bool) -> Option<&'static str> {
    if case.variant == "+hvf" {
        return Some("hvf transcript (macOS): capsd probes Linux hosts with KVM and TCG");
    }
    if case.virt == "kvm" && !transcript_has_kvm {
        return Some("KVM document from a transcript whose QEMU ran without KVM: no real host prints it");
    }
    None
}

/// Parse a transcript name `caps_<qemu><sep><arch>[+variant].replies`.
fn parse_transcript_name(r: &Release, file: &str) -> Option<(String, String, String)> {
    let base = file.strip_prefix("caps_")?.strip_suffix(".replies")?;
    // The QEMU version is three dot-separated numbers.
    let mut dots = 0;
    let split = base.char_indices().find(|(_, c)| {
        if *c == '.' {
            dots += 1;
        }
        (dots == 2 && *c == r.caps_sep && r.caps_sep != '.') || (r.caps_sep == '.' && *c == '.' && dots == 3)
    })?;
    let (qemu, rest) = (&base[..split.0], &base[split.0 + 1..]);
    let (arch, variant) = match rest.find('+') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Some((qemu.to_owned(), arch.to_owned(), variant.to_owned()))
}

/// The documents domaincapstest makes from the transcripts in `caps_dir` (sorted by name).
pub fn cases(r: &Release, caps_dir: &Path) -> Result<Vec<Case>> {
    let mut files: Vec<String> = std::fs::read_dir(caps_dir)
        .with_context(|| format!("reading {}", caps_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("caps_") && n.ends_with(".replies"))
        .collect();
    files.sort();
    let new_layout = r.caps_sep == '_';
    let mut out = Vec::new();
    for f in files {
        let Some((qemu, arch, variant)) = parse_transcript_name(r, &f) else {
            bail!("{}: a transcript name this task does not know", caps_dir.join(&f).display());
        };
        let hvf = variant == "+hvf";
        let combos: Vec<(&'static str, Option<&'static str>)> = match arch.as_str() {
            "x86_64" if hvf => vec![("hvf", None), ("qemu", None)],
            "x86_64" => vec![("kvm", None), ("kvm", Some("q35")), ("qemu", None)],
            "aarch64" if hvf => vec![("hvf", None)],
            "aarch64" => vec![("kvm", None), ("kvm", Some("virt"))],
            a if a.starts_with("riscv") && !new_layout => vec![],
            a if new_layout && (a.starts_with("riscv") || a.starts_with("loongarch64")) => {
                vec![("kvm", Some("virt")), ("qemu", Some("virt"))]
            }
            _ => vec![("kvm", None)],
        };
        for (virt, machine) in combos {
            let t = match virt {
                "qemu" => "-tcg",
                "hvf" => "-hvf",
                _ => "",
            };
            let m = machine.map(|m| format!("-{m}")).unwrap_or_default();
            out.push(Case {
                name: format!("qemu_{qemu}{t}{m}.{arch}{variant}"),
                qemu: qemu.clone(),
                arch: arch.clone(),
                variant: variant.clone(),
                virt,
                machine,
                transcript: f.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The host facts domaincapstest's harness and mocks fake for `case` (see the module docs
/// of `driver_qemu::replay` for the fields), with `tree` the release's extracted source.
pub fn facts(r: &Release, tree: &Path, case: &Case) -> Value {
    let fw = tree.join("tests/qemufirmwaredata");
    // The TPM versions swtpm_setup offers, by the QEMU version's major (domaincapstest).
    let tpm: Vec<&str> = match case.qemu.split('.').next().unwrap_or("") {
        "3" | "4" | "5" => vec!["tpm-1.2"],
        "6" => vec!["tpm-1.2", "tpm-2.0"],
        _ => vec!["tpm-2.0"],
    };
    let s390 = case.arch.starts_with("s390");
    // The host CPU the test fakes per arch (testutilshostcpus.h).
    let cpu_model = match case.arch.as_str() {
        "x86_64" | "i686" => Some("Broadwell"),
        "ppc64" | "ppc64le" => Some("POWER8"),
        _ => None,
    };
    let mut f = json!({
        "host_arch": case.arch,
        // domaincapsmock: KVM's vCPU limit is INT_MAX; physical address bits 64 (0 on s390).
        "kvm_max_vcpus": i32::MAX,
        // domaincapstest sets the PCI backends (default, vfio) by hand.
        "vfio": {"iommu_groups": true, "dev_vfio": true, "module": true},
        // testutilsqemu: CPUID 0x8000001F answers ECX 509, EDX 451; SEV is QEMU's to say.
        "sev": {"kvm_amd_sev": true, "dev_sev": true, "cpuid_asids": [509, 451]},
        // domaincapsmock: secure guests are supported when QEMU supports s390 PV.
        "s390_pv": {"prot_virt_host": true, "kvm_prot_virt": true},
        // testutilsqemu: swtpm is usable; swtpm_setup offers the TPM versions above.
        "swtpm": {
            "swtpm": "/usr/bin/swtpm",
            "swtpm_setup": "/usr/bin/swtpm_setup",
            "swtpm_ioctl": "/usr/bin/swtpm_ioctl",
            "swtpm_features": [],
            "swtpm_setup_features": tpm,
        },
        // testutilsqemu (11.3): qemu-rdp is usable.
        "qemu_rdp": true,
        "firmware_dirs": [
            fw.join("usr/share/qemu/firmware"),
            fw.join("etc/qemu/firmware"),
            fw.join("home/user/.config/qemu/firmware"),
        ],
        "firmware_images_exist": true,
        "cpu_map_dir": tree.join("src/cpu_map"),
    });
    if !s390 {
        f["phys_addr_bits"] = json!(64);
    }
    if let Some(m) = cpu_model {
        f["host_cpu_model"] = json!(m);
    }
    let _ = r;
    f
}

/// The harness-only step: `doc`'s `<loader>` values replaced by `placeholders`.
pub fn apply_placeholder_loaders(doc: &str, placeholders: &[&str]) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut in_loader = false;
    for line in doc.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with("<loader supported='yes'>") {
            in_loader = true;
            out.push_str(line);
            let indent = &line[..line.len() - line.trim_start().len()];
            for p in placeholders {
                out.push_str(&format!("{indent}  <value>{p}</value>\n"));
            }
            continue;
        }
        if in_loader {
            if t.starts_with("<value>") {
                continue;
            }
            in_loader = false;
        }
        out.push_str(line);
    }
    out
}

/// The first line where `expected` and `got` differ: (line, expected's, got's).
pub fn first_difference(expected: &str, got: &str) -> Option<(usize, String, String)> {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.trim_end().lines().collect(), got.trim_end().lines().collect());
    let i = (0..e.len().max(g.len())).find(|&i| e.get(i) != g.get(i))?;
    let show = |v: &Vec<&str>| v.get(i).map_or("(end)".to_owned(), |s| s.trim().to_owned());
    Some((i + 1, show(&e), show(&g)))
}

/// Whether the first run of a `.replies` transcript had KVM (its `query-kvm` answer).
fn transcript_has_kvm(text: &str) -> bool {
    let mut it = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    while let Some(Ok(v)) = it.next() {
        if v.get("execute").and_then(Value::as_str) == Some("query-kvm") {
            return match it.next() {
                Some(Ok(r)) => r["return"]["enabled"] == json!(true) && r["return"]["present"] == json!(true),
                _ => false,
            };
        }
    }
    false
}

/// The release's source tree, fetched and extracted under `target/corpus/` when not there
/// yet. `tarball`: an `orig.tar.xz` at hand instead of downloading.
fn source_tree(cache: &Path, r: &Release, tarball: Option<&Path>) -> Result<PathBuf> {
    let tree = cache.join(format!("libvirt-{}", r.version));
    let stamp = tree.join(".capsd-extracted");
    if stamp.exists() {
        return Ok(tree);
    }
    let orig = match tarball {
        Some(t) => t.to_owned(),
        None => download(cache, r)?,
    };
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(cache)?;
    let top = format!("libvirt-{}", r.version);
    let status = Command::new("tar")
        .current_dir(cache)
        .arg("-xJf")
        .arg(&orig)
        .arg(format!("{top}/tests"))
        .arg(format!("{top}/src/cpu_map"))
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("extracting {} failed", orig.display());
    }
    std::fs::write(&stamp, format!("{}\n", orig.display()))?;
    Ok(tree)
}

/// Download Debian's source package of `r` with apt, into `cache/<suite>/`, and return the
/// upstream tarball after checking its SHA-256: against the `.dsc`, or, when the archive
/// (or a mirror) does not serve the `.dsc`, against the archive's Sources index, which apt
/// checked against the suite's signed `InRelease` (the same checksums the `.dsc` states).
fn download(cache: &Path, r: &Release) -> Result<PathBuf> {
    let dir = cache.join(r.suite);
    let orig = dir.join(format!("libvirt_{}.orig.tar.xz", r.version));
    if orig.exists() && verify(&dir, &orig, r).unwrap_or(false) {
        return Ok(orig);
    }
    for sub in ["lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("etc/sources.list"), format!("deb-src {MIRROR} {} main\n", r.suite))?;
    let mut update = apt(&dir, "apt-get");
    update.arg("update");
    run_checked(&mut update, "apt-get update (the corpus's own deb-src list)")?;
    let mut source = apt(&dir, "apt-get");
    source.current_dir(&dir).args(["source", "--download-only", "libvirt"]);
    if let Err(e) = run_checked(&mut source, "apt-get source --download-only libvirt") {
        // A mirror may lack the .dsc or a signature while serving the tarball.
        if !orig.exists() {
            return Err(e);
        }
        eprintln!("corpus: {e}; {} was downloaded, checking it against the archive's index", orig.display());
    }
    if !verify(&dir, &orig, r)? {
        bail!("{}: its SHA-256 is not the one the archive states", orig.display());
    }
    Ok(orig)
}

/// `apt-get`/`apt-cache` with the corpus's own configuration under `dir`: its deb-src list
/// alone, its own package lists and caches, no package status.
fn apt(dir: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("-q");
    for (k, v) in [
        ("Dir::Etc::SourceList", dir.join("etc/sources.list")),
        ("Dir::Etc::SourceParts", dir.join("etc/sources.list.d")),
        ("Dir::Etc::PreferencesParts", dir.join("etc/preferences.d")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
        ("Dir::State::Status", PathBuf::from("/dev/null")),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd.args(["-o", "APT::Sandbox::User=root"]);
    cmd
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The SHA-256 a `Checksums-Sha256:` field in `text` states for `name`.
fn sha256_in(text: &str, name: &str) -> Option<String> {
    let mut in_sha = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_sha = line.starts_with("Checksums-Sha256:");
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if in_sha && w.len() == 3 && w[2] == name {
            return Some(w[0].to_owned());
        }
    }
    None
}

/// Whether `orig` has the SHA-256 the `.dsc` in `dir` states for it, or, without a `.dsc`,
/// the one the suite's Sources index states (`apt-cache showsrc`).
fn verify(dir: &Path, orig: &Path, r: &Release) -> Result<bool> {
    let name = orig.file_name().and_then(|n| n.to_str()).context("tarball name")?;
    let dsc = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "dsc"));
    let want = match dsc {
        Some(dsc) => {
            let text = std::fs::read_to_string(&dsc).with_context(|| format!("reading {}", dsc.display()))?;
            sha256_in(&text, name).with_context(|| format!("{} names no {name}", dsc.display()))?
        }
        None => {
            let out =
                apt(dir, "apt-cache").args(["showsrc", "libvirt"]).output().context("running apt-cache showsrc")?;
            let text = String::from_utf8_lossy(&out.stdout);
            sha256_in(&text, name)
                .with_context(|| format!("neither a .dsc nor {}'s Sources index names {name}", r.suite))?
        }
    };
    let out = Command::new("sha256sum").arg(orig).output().context("running sha256sum")?;
    let got = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned();
    Ok(got == want)
}

/// Result of one release.
struct Tally {
    identical: BTreeSet<String>,
    differing: Vec<String>,
    total: usize,
}

/// How one replayed document compares.
enum Outcome {
    Identical,
    /// capsd failed, or the first differing line.
    Differs(String),
}

/// Replay one document with capsd and compare it with `expected`.
fn replay_one(
    capsd: &Path,
    r: &Release,
    case: &Case,
    transcript: &Path,
    facts_file: &Path,
    expected: &str,
    keep: Option<&Path>,
) -> Result<Outcome> {
    let mut cmd = Command::new(capsd);
    cmd.args(["domcapabilities", "--replay"])
        .arg(transcript)
        .arg("--host-facts")
        .arg(facts_file)
        .args(["--libvirt-version", r.version, "--arch", &case.arch, "--virttype", case.virt])
        .arg("--emulatorbin")
        .arg(format!("/usr/bin/qemu-system-{}", case.arch));
    if let Some(m) = case.machine {
        cmd.args(["--machine", m]);
    }
    let out = cmd.output().with_context(|| format!("running {}", capsd.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Ok(Outcome::Differs(format!("capsd failed: {err}")));
    }
    let got = apply_placeholder_loaders(&String::from_utf8_lossy(&out.stdout), r.placeholder_loaders);
    if let Some(k) = keep {
        std::fs::write(k.join(format!("{}.xml", case.name)), &got)?;
    }
    Ok(match first_difference(expected, &got) {
        None => Outcome::Identical,
        Some((line, e, g)) => Outcome::Differs(format!("line {line}: expected `{e}`, capsd `{g}`")),
    })
}

fn run_release(capsd: &Path, cache: &Path, r: &Release, tarball: Option<&Path>, keep: Option<&Path>) -> Result<Tally> {
    let tree = source_tree(cache, r, tarball)?;
    let caps_dir = tree.join("tests/qemucapabilitiesdata");
    let docs_dir = tree.join("tests/domaincapsdata");
    let keep = keep.map(|k| k.join(r.version));
    let keep = keep.as_deref();
    let facts_dir = keep.map(Path::to_owned).unwrap_or_else(|| cache.join(format!("facts-{}", r.version)));
    std::fs::create_dir_all(&facts_dir)?;
    let mut tally = Tally { identical: BTreeSet::new(), differing: Vec::new(), total: 0 };
    let mut left_out = Vec::new();
    let mut kvm_of = std::collections::BTreeMap::new();
    let mut jobs = Vec::new();
    for case in cases(r, &caps_dir)? {
        let expected_path = docs_dir.join(format!("{}.xml", case.name));
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            left_out.push(format!("{}: the release has no such document", case.name));
            continue;
        };
        let transcript = caps_dir.join(&case.transcript);
        let has_kvm = match kvm_of.get(&case.transcript) {
            Some(k) => *k,
            None => {
                let text = std::fs::read_to_string(&transcript)
                    .with_context(|| format!("reading {}", transcript.display()))?;
                let k = transcript_has_kvm(&text);
                kvm_of.insert(case.transcript.clone(), k);
                k
            }
        };
        if let Some(why) = harness_only(&case, has_kvm) {
            left_out.push(format!("{}: {why}", case.name));
            continue;
        }
        let facts_file = facts_dir.join(format!("{}.facts.json", case.name));
        std::fs::write(&facts_file, serde_json::to_string_pretty(&facts(r, &tree, &case))?)?;
        jobs.push((case, transcript, facts_file, expected));
    }
    tally.total = jobs.len();
    // The replays, several at once (each is one capsd process; the machine's CPUs).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Outcome>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((case, transcript, facts_file, expected)) = jobs.get(i) else { break };
                let r = replay_one(capsd, r, case, transcript, facts_file, expected, keep);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    for ((case, ..), slot) in jobs.iter().zip(results) {
        let outcome = slot.into_inner().ok().flatten().unwrap_or_else(|| Err(anyhow::anyhow!("replay thread failed")));
        match outcome? {
            Outcome::Identical => {
                tally.identical.insert(case.name.clone());
            }
            Outcome::Differs(why) => tally.differing.push(format!("{}: {why}", case.name)),
        }
    }
    println!("corpus libvirt {}: {}/{} identical", r.version, tally.identical.len(), tally.total);
    for d in &tally.differing {
        println!("  differs  {d}");
    }
    for l in &left_out {
        println!("  left out {l}");
    }
    Ok(tally)
}

pub fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let mut picked: Vec<String> = Vec::new();
    let mut ratchet_add = false;
    let mut keep: Option<PathBuf> = None;
    let mut tarballs: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--release" => picked.push(it.next().context("--release needs a version (9.0.0, 11.3.0)")?.clone()),
            "--ratchet-add" => ratchet_add = true,
            "--keep" => keep = Some(PathBuf::from(it.next().context("--keep needs a directory")?)),
            "--tarball" => tarballs.push(PathBuf::from(it.next().context("--tarball needs a file")?)),
            other => bail!(
                "unknown argument '{other}' (usage: cargo xtask corpus [--release V]... [--ratchet-add] [--keep DIR] \
                 [--tarball libvirt_V.orig.tar.xz]...)"
            ),
        }
    }
    for p in &picked {
        if !RELEASES.iter().any(|r| r.version == p) {
            bail!("unknown release '{p}' (known: {})", RELEASES.map(|r| r.version).join(", "));
        }
    }
    let capsd = build_capsd(&root)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() { root.join(target) } else { target };
    let cache = target.join("corpus");
    if let Some(k) = &keep {
        std::fs::create_dir_all(k).with_context(|| format!("creating {}", k.display()))?;
    }
    let mut regressions = Vec::new();
    for r in RELEASES.iter().filter(|r| picked.is_empty() || picked.iter().any(|p| p == r.version)) {
        let tarball = tarballs
            .iter()
            .find(|t| t.file_name().and_then(|n| n.to_str()) == Some(&format!("libvirt_{}.orig.tar.xz", r.version)));
        let tally = run_release(&capsd, &cache, r, tarball.map(PathBuf::as_path), keep.as_deref())?;
        let path = ratchet_path(&root, r);
        let ratchet = read_ratchet(&path)?;
        for name in &ratchet {
            if !tally.identical.contains(name) {
                regressions.push(format!("libvirt {}: {name}", r.version));
            }
        }
        let new: Vec<&String> = tally.identical.iter().filter(|n| !ratchet.contains(*n)).collect();
        if ratchet_add && !new.is_empty() {
            let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                format!(
                    "# libvirt {} corpus documents (tests/domaincapsdata) that capsd's replay must keep\n\
                     # byte-identical: checked by `cargo xtask corpus`. Only ever add lines\n\
                     # (`cargo xtask corpus --ratchet-add`).\n",
                    r.version
                )
            });
            for n in &new {
                text.push_str(n);
                text.push('\n');
            }
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("  ratchet: {} document(s) added to {}", new.len(), path.display());
        } else if !new.is_empty() {
            println!("  ratchet: {} identical document(s) not in {} yet (--ratchet-add)", new.len(), path.display());
        }
    }
    if !regressions.is_empty() {
        bail!(
            "{} ratcheted corpus document(s) are no longer identical:\n  {}",
            regressions.len(),
            regressions.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_names_of_both_layouts() {
        assert_eq!(
            parse_transcript_name(&RELEASES[0], "caps_4.2.0.x86_64.replies"),
            Some(("4.2.0".into(), "x86_64".into(), String::new()))
        );
        assert_eq!(
            parse_transcript_name(&RELEASES[1], "caps_9.2.0_x86_64+amdsev.replies"),
            Some(("9.2.0".into(), "x86_64".into(), "+amdsev".into()))
        );
        assert_eq!(
            parse_transcript_name(&RELEASES[1], "caps_10.0.0_s390x.replies"),
            Some(("10.0.0".into(), "s390x".into(), String::new()))
        );
        assert_eq!(parse_transcript_name(&RELEASES[1], "caps_x.replies"), None);
    }

    #[test]
    fn placeholder_loaders_replace_the_values_only() {
        let doc = "  <os supported='yes'>\n    <loader supported='yes'>\n      <value>/a.fd</value>\n      <enum name='type'>\n        <value>rom</value>\n      </enum>\n    </loader>\n";
        let got = apply_placeholder_loaders(doc, &["/x", "/y"]);
        assert_eq!(
            got,
            "  <os supported='yes'>\n    <loader supported='yes'>\n      <value>/x</value>\n      <value>/y</value>\n      <enum name='type'>\n        <value>rom</value>\n      </enum>\n    </loader>\n"
        );
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb"), None);
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some((2, "b".into(), "c".into())));
        assert_eq!(first_difference("a\n", "a\nc\n"), Some((2, "(end)".into(), "c".into())));
    }
}
