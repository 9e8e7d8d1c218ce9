//! `cargo xtask test`: the whole test suite, exactly as CI runs it (`.ci/run` calls this).
//!
//! Steps: make sure the system tools the tests use are installed (runs `.ci/setup` when
//! something is missing and we are root), `cargo fmt --check`, `cargo clippy -D warnings`,
//! `cargo test` for the workspace, then the out-of-tree plugin example's own tests.
//! `--quick` skips fmt and clippy.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Tools the test suite needs on PATH.
const TOOLS: [&str; 4] = ["xmllint", "qemu-system-x86_64", "virsh", "etcd"];

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument '{bad}' (usage: cargo xtask test [--quick])");
    }
    let root = workspace_root();
    ensure_tools(&root)?;
    if !quick {
        cargo(&root, &["fmt", "--all", "--check"])?;
        cargo(&root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    }
    let mut totals = Totals::default();
    // Tests skipped for missing reference data list themselves here (capsd-tests' `reference`).
    let skip_log = std::env::temp_dir().join(format!("capsd-xtask-skipped-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    std::env::set_var("CAPSD_SKIP_LOG", &skip_log);
    let result = run_tests(&root, quick, &mut totals);
    let skipped = read_skips(&skip_log);
    let _ = std::fs::remove_file(&skip_log);
    if !skipped.is_empty() {
        println!("xtask test: skipped for missing reference data (CAPSD_REQUIRE_REFERENCE=1 makes them fail):");
        for (test, data) in &skipped {
            println!("  {test}: {data}");
        }
    }
    if result.is_ok() {
        println!("xtask test: all steps passed");
    }
    // They ran and returned, so cargo counted them as passed.
    let data_skips = skipped.len() as u64;
    // One plain closing line for the whole suite, whatever the outcome, last.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed.saturating_sub(data_skips),
        totals.failed,
        totals.ignored + data_skips
    );
    result
}

/// The `test<TAB>data` lines of the skip log, sorted, without repeats.
fn read_skips(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let set: std::collections::BTreeSet<(String, String)> =
        text.lines().filter_map(|l| l.split_once('\t')).map(|(t, d)| (t.to_owned(), d.to_owned())).collect();
    set.into_iter().collect()
}

fn run_tests(root: &Path, quick: bool, totals: &mut Totals) -> Result<()> {
    cargo_test(root, &["test", "--workspace", "--no-fail-fast"], totals)?;
    for example in examples(root)? {
        let manifest = example.join("Cargo.toml");
        let manifest = manifest.to_str().context("non-UTF-8 path")?;
        if !quick {
            cargo(root, &["clippy", "--manifest-path", manifest, "--all-targets", "--", "-D", "warnings"])?;
        }
        cargo_test(root, &["test", "--no-fail-fast", "--manifest-path", manifest], totals)?;
    }
    Ok(())
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Add the counts of a line like `test result: ok. 8 passed; 0 failed; 2 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `cargo test ...`, its output passed through and its result lines counted.
fn cargo_test(root: &Path, args: &[&str], totals: &mut Totals) -> Result<()> {
    use std::io::BufReader;
    println!("xtask test: cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let passed = pass_through(BufReader::new(stdout), &mut std::io::stdout().lock(), totals);
    // Reaped whatever happened to its output.
    let status = child.wait().context("waiting for cargo")?;
    passed?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Copy `input` to `out` line by line, counting result lines. Bytes, not text: a test may
/// print something that is not UTF-8, which must neither stop the copy nor the counting.
fn pass_through(mut input: impl std::io::BufRead, out: &mut impl std::io::Write, totals: &mut Totals) -> Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).context("reading cargo's output")? == 0 {
            return Ok(());
        }
        totals.add_line(&String::from_utf8_lossy(&line));
        out.write_all(&line).context("writing cargo's output")?;
    }
}

/// The repository root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}

/// Out-of-tree crates under `examples/` that have their own Cargo.toml.
fn examples(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("examples");
    let mut out = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.join("Cargo.toml").is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ensure_tools(root: &Path) -> Result<()> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if is_root() {
        println!("xtask test: missing {}: running .ci/setup", missing.join(", "));
        let status = Command::new("bash").arg(root.join(".ci/setup")).status().context("running .ci/setup")?;
        if !status.success() {
            bail!(".ci/setup failed ({status})");
        }
        return Ok(());
    }
    bail!("missing tools: {} (run `sudo .ci/setup` once)", missing.join(", "))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

pub(crate) fn is_root() -> bool {
    // `id -u` keeps xtask free of libc bindings.
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    println!("xtask test: cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo).args(args).current_dir(root).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn counts_result_lines() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 8 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 4 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (11, 1, 2));
    }

    #[test]
    fn output_that_is_not_utf8_is_copied_and_counted() {
        let input: &[u8] = b"garbage \xff\xfe from a test\ntest result: ok. 2 passed; 0 failed; 1 ignored\nlast";
        let mut out = Vec::new();
        let mut t = Totals::default();
        super::pass_through(input, &mut out, &mut t).unwrap();
        assert_eq!(out, input);
        assert_eq!((t.passed, t.failed, t.ignored), (2, 0, 1));
    }
}
