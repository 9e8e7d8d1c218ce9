//! The Debian libvirt + QEMU stacks `cargo xtask conformance` compares capsd with, besides
//! this machine's own libvirt: chroots built and run by the shared
//! `../shared/tools/stack-oracle.sh` (Debian 12 with backports QEMU, Debian 13, Debian
//! testing; each also without the optional helpers swtpm, passt and QEMU's spice module).
//!
//! Each stack has a ratchet file (`driver-qemu/tests/data/conformance/STACK.txt`): a
//! `# stack: libvirt X qemu Y` line with the versions it was learnt on, then the cases that
//! must stay byte-identical (`NAME`) or identical with the CPU model lists masked
//! (`NAME cpu-masked`). When a stack's versions differ from the recorded ones (Debian testing
//! moves), the task says so, does not fail on that stack, and re-learns its ratchet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::record_qemu::Case;

/// A stack: the name `stack-oracle.sh` knows, and whether it is the minimal variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub name: String,
    pub oracle_stack: &'static str,
    pub minimal: bool,
}

/// Every chroot stack, in the order they are reported.
pub fn all() -> Vec<Stack> {
    let mut out = Vec::new();
    for minimal in [false, true] {
        for s in ["bookworm-bpo", "trixie", "forky"] {
            let name = if minimal { format!("{s}-minimal") } else { s.to_owned() };
            out.push(Stack { name, oracle_stack: s, minimal });
        }
    }
    out
}

/// The stack called `name` (`bookworm-bpo`, `trixie`, `forky`, each optionally `-minimal`).
pub fn by_name(name: &str) -> Option<Stack> {
    all().into_iter().find(|s| s.name == name)
}

impl Stack {
    /// Where its chroot lives.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(if self.minimal { "/var/lib/capsd-stacks-min" } else { "/var/lib/capsd-stacks" })
            .join(self.oracle_stack)
    }

    fn stacks_dir(&self) -> PathBuf {
        self.root().parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// The lock file that serializes runs on its chroot (the same name `stack-run`-style
    /// wrappers take): two runs at once unmount each other's /proc, /sys and /dev.
    pub fn lock_path(&self) -> String {
        format!("/tmp/stack-lock{}", self.root().display().to_string().replace('/', "_"))
    }

    pub fn ratchet_path(&self, root: &Path) -> PathBuf {
        root.join("driver-qemu/tests/data/conformance").join(format!("{}.txt", self.name))
    }
}

/// Compares a reference and a candidate document (with the CPU model lists masked or not):
/// whether they are identical, and facts.py's summary line.
pub type FactsFn<'a> = dyn Fn(&Path, &Path, bool) -> Result<(bool, String)> + Sync + 'a;

/// The per-case verdicts of one stack run.
#[derive(Debug, Default)]
pub struct StackResult {
    /// `libvirt X qemu Y` read from the run's STACK.md.
    pub versions: String,
    /// Case -> (exact, cpu-masked) identity; refusals by both count as identical.
    pub cases: BTreeMap<String, (bool, bool)>,
    pub lines: Vec<String>,
    /// The stack's libvirtd stopped answering during the run.
    pub libvirt_died: bool,
}

/// Cases a stack's libvirt cannot answer without dying, with the reason: its daemon exits
/// and every later case would fail to connect.
const LIBVIRT_CRASHES: [(&str, &str, &str); 2] = [
    ("trixie", "/usr/bin/qemu-system-x86_64-microvm", "libvirtd 11.3 exits while probing qemu-system-x86_64-microvm"),
    ("forky", "/usr/bin/qemu-system-x86_64-microvm", "libvirtd 12.x exits while probing qemu-system-x86_64-microvm"),
];

/// The cases run on `stack`: those whose emulator exists there (a missing binary is covered
/// by the host's own run), less [`LIBVIRT_CRASHES`].
pub fn cases_for(stack: &Stack, cases: &[Case]) -> Vec<Case> {
    let root = stack.root();
    cases
        .iter()
        .filter(|c| match c.arg("--emulatorbin") {
            Some(e) => {
                let crashes = LIBVIRT_CRASHES.iter().find(|(s, bin, _)| *s == stack.oracle_stack && *bin == e);
                if let Some((_, _, why)) = crashes {
                    println!("stack {}: case {} left out: {why}", stack.name, c.name);
                    return false;
                }
                root.join(e.trim_start_matches('/')).exists() || !root.join("usr/bin").exists()
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// Run one stack: `stack-oracle.sh` writes libvirt's and capsd's documents, then both are
/// compared with facts.py as is and with the CPU model lists masked.
pub fn run_stack(
    stack: &Stack,
    tools: &Path,
    capsd: &Path,
    cases: &[Case],
    out: &Path,
    facts: &FactsFn<'_>,
) -> Result<StackResult> {
    std::fs::create_dir_all(out)?;
    let case_file = out.join("cases.txt");
    let text: String = cases.iter().map(|c| format!("{} {}\n", c.name, c.args.join(" "))).collect();
    std::fs::write(&case_file, text)?;
    // One run per stack at a time, serialized with flock.
    let mut cmd = Command::new("flock");
    cmd.arg(stack.lock_path())
        .arg("bash")
        .arg(tools.join("stack-oracle.sh"))
        .arg(stack.oracle_stack)
        .arg(out)
        .arg(&case_file);
    cmd.env("CAPSD", capsd).env("STACKS_DIR", stack.stacks_dir());
    if stack.minimal {
        cmd.env("STACK_MINIMAL", "1");
    } else {
        cmd.env_remove("STACK_MINIMAL");
    }
    let log = std::fs::File::create(out.join("oracle.log"))?;
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running stack-oracle.sh {}", stack.oracle_stack))?;
    if !status.success() {
        let tail = std::fs::read_to_string(out.join("oracle.log")).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        bail!(
            "stack {}: stack-oracle.sh failed ({status}): {}",
            stack.name,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let mut r = StackResult { versions: versions(&out.join("STACK.md")), ..StackResult::default() };
    for c in cases {
        let reference = out.join(format!("{}.xml", c.name));
        let candidate = out.join("capsd").join(format!("{}.xml", c.name));
        let answered = std::fs::metadata(&candidate).map(|m| m.len() > 0).unwrap_or(false);
        if !reference.exists() {
            let why = std::fs::read_to_string(out.join(format!("{}.err", c.name))).unwrap_or_default();
            if why.contains("Failed to connect socket") || why.contains("End of file while reading data") {
                // Not a refusal: the stack's libvirtd is gone (it died on this or an earlier
                // case), so nothing is known about this case.
                r.lines.push(format!("{:<28} no answer: the stack's libvirtd died ({})", c.name, why.trim()));
                r.libvirt_died = true;
                continue;
            }
            let both = !answered;
            r.lines.push(format!(
                "{:<28} {}: libvirt refuses ({})",
                c.name,
                if both { "both refuse" } else { "capsd answered" },
                why.lines().last().unwrap_or("").trim()
            ));
            r.cases.insert(c.name.clone(), (both, both));
            continue;
        }
        if !answered {
            let err = std::fs::read_to_string(out.join("capsd").join(format!("{}.err", c.name))).unwrap_or_default();
            r.lines.push(format!("{:<28} capsd failed: {}", c.name, err.lines().last().unwrap_or("").trim()));
            r.cases.insert(c.name.clone(), (false, false));
            continue;
        }
        let (exact, full) = facts(&reference, &candidate, false)?;
        let (masked, cpu_masked) = facts(&reference, &candidate, true)?;
        r.lines.push(format!("{:<28} full: {full}", c.name));
        if !exact {
            r.lines.push(format!("{:<28} cpu-masked: {cpu_masked}", ""));
        }
        r.cases.insert(c.name.clone(), (exact, masked));
    }
    Ok(r)
}

/// `libvirt X qemu Y` from a STACK.md.
fn versions(stack_md: &Path) -> String {
    let text = std::fs::read_to_string(stack_md).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())))
            .unwrap_or("?")
            .to_owned()
    };
    format!("libvirt {} qemu {}", field("libvirt"), field("QEMU"))
}

/// A stack's ratchet: the versions it was learnt on and the required level per case.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ratchet {
    pub versions: Option<String>,
    /// Case -> true for byte-identical, false for identical with CPU models masked.
    pub cases: BTreeMap<String, bool>,
}

pub fn read_ratchet(path: &Path) -> Result<Ratchet> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ratchet::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut r = Ratchet::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("# versions:") {
            r.versions = Some(v.trim().to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = line.split_whitespace();
        let name = w.next().unwrap_or_default().to_owned();
        let exact = match w.next() {
            None => true,
            Some("cpu-masked") => false,
            Some(other) => bail!("{}: unknown level '{other}' for case {name}", path.display()),
        };
        r.cases.insert(name, exact);
    }
    Ok(r)
}

pub fn write_ratchet(path: &Path, stack: &str, r: &Ratchet) -> Result<()> {
    let mut text = format!(
        "# Cases of stack {stack} that must stay identical to its libvirt (`cargo xtask conformance`):\n\
         # NAME byte for byte, NAME cpu-masked with the CPU model lists masked. Re-learnt when\n\
         # the stack's versions change.\n"
    );
    if let Some(v) = &r.versions {
        text.push_str(&format!("# versions: {v}\n"));
    }
    for (name, exact) in &r.cases {
        text.push_str(name);
        if !exact {
            text.push_str(" cpu-masked");
        }
        text.push('\n');
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("txt.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What a run means for a ratchet: regressions (cases it requires that fell below their
/// level), and the ratchet that records this run's results.
pub fn judge(ratchet: &Ratchet, result: &StackResult) -> (Vec<String>, Ratchet) {
    let mut regressions = Vec::new();
    for (name, exact) in &ratchet.cases {
        let (got_exact, got_masked) = result.cases.get(name).copied().unwrap_or((false, false));
        if (*exact && !got_exact) || (!*exact && !got_masked) {
            regressions.push(name.clone());
        }
    }
    let mut learnt = Ratchet { versions: Some(result.versions.clone()), cases: BTreeMap::new() };
    for (name, (exact, masked)) in &result.cases {
        if *exact {
            learnt.cases.insert(name.clone(), true);
        } else if *masked {
            learnt.cases.insert(name.clone(), false);
        }
    }
    (regressions, learnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(cases: &[(&str, bool, bool)]) -> StackResult {
        StackResult {
            versions: "libvirt 12.8.0 qemu 11.1.2".into(),
            cases: cases.iter().map(|(n, e, m)| (n.to_string(), (*e, *m))).collect(),
            lines: vec![],
            libvirt_died: false,
        }
    }

    #[test]
    fn ratchet_round_trips_and_judges_levels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forky.txt");
        let r = Ratchet {
            versions: Some("libvirt 12.8.0 qemu 11.1.2".into()),
            cases: [("a".to_string(), true), ("b".to_string(), false)].into_iter().collect(),
        };
        write_ratchet(&path, "forky", &r).unwrap();
        assert_eq!(read_ratchet(&path).unwrap(), r);
        // a must be exact: only masked now is a regression; b must be masked: exact is fine.
        let (reg, learnt) = judge(&r, &result(&[("a", false, true), ("b", true, true), ("c", false, false)]));
        assert_eq!(reg, ["a"]);
        assert_eq!(learnt.cases.get("a"), Some(&false));
        assert_eq!(learnt.cases.get("b"), Some(&true));
        assert!(!learnt.cases.contains_key("c"));
        // A case missing from the run is a regression too.
        let (reg, _) = judge(&r, &result(&[("b", true, true)]));
        assert_eq!(reg, ["a"]);
    }

    #[test]
    fn versions_come_from_stack_md() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("STACK.md");
        std::fs::write(
            &md,
            "| fact | value |\n| --- | --- |\n| libvirt | libvirtd (libvirt) 12.8.0 |\n\
             | QEMU | QEMU emulator version 11.1.2 (Debian 1:11.1.2+ds-3) |\n",
        )
        .unwrap();
        assert_eq!(versions(&md), "libvirt 12.8.0 qemu 11.1.2");
    }
}
