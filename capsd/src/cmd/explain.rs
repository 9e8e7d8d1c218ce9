//! `capsd explain [QUERY] [SELECTOR...]`: the evidence behind each element of the qemu
//! driver's document, recorded by the derivation while it derives the document (one
//! derivation: the explanation cannot disagree with the document). `--diff A B`: what
//! changes between two recordings, or one recording under two libvirt releases.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use capsd_core::evidence::{self, Explanation, ExplanationDiff, Node, Selection, Selector};
use capsd_core::{DomainCapabilities, Query};

use crate::registry::DriverOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    /// A tree for people.
    Text,
    /// JSON for programs.
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Selectors are XPath-like paths below <domainCapabilities>, for example:
  devices/tpm/enum[@name='backendModel']/value[.='emulator']
  cpu/mode[@name='host-model']
  os/loader/enum[@name='secure']
A step without a predicate matches any element of that name. A selector also names things
the document leaves out (a value not offered, an element this release does not print): the
answer then says why it is left out, which is not the same as supported='no'. A selector
that matches nothing is an error.

Facts: QMP (the command and what its reply has or lacks), host (the file or program and
what was read there, or that it is absent), libvirt rule (the CHANGES row of the target
release and its source), query (the arch, machine or virt type that decided).")]
pub struct Args {
    /// Elements to explain (default: all of them).
    #[arg(value_name = "SELECTOR")]
    selectors: Vec<String>,
    /// Emulator binary (default: chosen from --arch, or the host's arch).
    #[arg(long = "emulatorbin", value_name = "PATH")]
    emulatorbin: Option<PathBuf>,
    /// Guest architecture (default: from the emulator, or the host's arch).
    #[arg(long)]
    arch: Option<String>,
    /// Machine type or alias (default: the emulator's default machine for the arch).
    #[arg(long)]
    machine: Option<String>,
    /// Virtualization type: kvm or qemu (default: the best one usable here).
    #[arg(long = "virttype", value_name = "TYPE")]
    virttype: Option<String>,
    /// The libvirt release whose document to explain (X.Y or X.Y.Z). Default as for
    /// `capsd domcapabilities`.
    #[arg(long = "libvirt-version", value_name = "X.Y[.Z]")]
    libvirt_version: Option<String>,
    /// Explain the document of a recorded probe (`capsd probe --record`, or a libvirt
    /// `.replies` file) instead of this host's.
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    replay: Option<PathBuf>,
    /// With --replay or --diff: host facts replacing or completing the recorded ones.
    #[arg(long, value_name = "FACTS.json")]
    host_facts: Option<PathBuf>,
    /// Follow unusable custom CPU models with `<blockers>`.
    #[arg(long)]
    cpu_blockers: bool,
    /// Compare two recordings (A B), or one recording under two releases (A A with
    /// --libvirt-version for A and --against-libvirt-version for B): which facts differ and
    /// which elements they change. Exit 1 when something differs.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    diff: Option<Vec<PathBuf>>,
    /// With --diff: the libvirt release of B (default: --libvirt-version).
    #[arg(long = "against-libvirt-version", value_name = "X.Y[.Z]", requires = "diff")]
    against_libvirt_version: Option<String>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    format: ExplainFormat,
}

impl Args {
    fn query(&self, libvirt: Option<String>) -> Query {
        Query {
            emulator: self.emulatorbin.clone(),
            arch: self.arch.clone(),
            machine: self.machine.clone(),
            virt_type: self.virttype.clone(),
            libvirt,
        }
    }
}

/// A document and the evidence its derivation recorded.
pub struct Explained {
    pub caps: DomainCapabilities,
    pub evidence: Explanation,
}

/// The live qemu driver's document for `query`, derived once with the recorder on.
pub fn live(ctx: &super::Context, query: &Query, cpu_blockers: bool) -> Result<Explained> {
    let opts = DriverOptions { cache_dir: ctx.cache_dir.clone(), cpu_blockers, ..DriverOptions::default() };
    let driver = super::domcaps::driver(ctx, &opts, "qemu")?;
    let (caps, evidence) = evidence::record(|| driver.domain_capabilities(query));
    let caps = caps.with_context(|| format!("driver 'qemu', query {query}"))?;
    Ok(Explained { caps, evidence })
}

/// A recording's document for `query`, derived once with the recorder on.
#[cfg(feature = "qemu")]
pub fn replayed(file: &Path, facts: Option<&Path>, query: &Query, cpu_blockers: bool) -> Result<Explained> {
    use driver_qemu::replay;
    let mut rec = replay::load(file)?;
    if let Some(f) = facts {
        let facts = replay::FactsFile::load(f)?;
        rec.data.host = facts.apply(&f.display().to_string(), &rec.data.host)?;
    }
    let options = driver_qemu::cpu::CpuOptions { blockers: cpu_blockers, ..Default::default() };
    let (caps, evidence) = evidence::record(|| replay::domain_capabilities(&rec, query, options));
    let caps = caps.with_context(|| format!("replaying {}, query {query}", file.display()))?;
    Ok(Explained { caps, evidence })
}

#[cfg(not(feature = "qemu"))]
pub fn replayed(_file: &Path, _facts: Option<&Path>, _query: &Query, _cpu_blockers: bool) -> Result<Explained> {
    bail!("explaining a recording needs the qemu driver, which this capsd was built without")
}

/// The selections `selectors` name (all nodes for none); an error names a selector that
/// does not parse or matches nothing.
pub fn select(e: &Explained, selectors: &[String]) -> Result<Vec<Selection>> {
    if selectors.is_empty() {
        return Ok(vec![Selection {
            selector: String::new(),
            note: None,
            context: Vec::new(),
            nodes: e.evidence.nodes.clone(),
        }]);
    }
    let doc = evidence::document_paths(&e.caps);
    let mut out = Vec::new();
    for s in selectors {
        let sel = Selector::parse(s)?;
        out.push(e.evidence.selection(&sel, &doc)?);
    }
    Ok(out)
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    if let Some(files) = &args.diff {
        return run_diff(&args, &files[0], &files[1]);
    }
    let query = args.query(args.libvirt_version.clone());
    let explained = match &args.replay {
        Some(file) => replayed(file, args.host_facts.as_deref(), &query, args.cpu_blockers)?,
        None => {
            if args.host_facts.is_some() {
                bail!("--host-facts needs --replay or --diff");
            }
            live(ctx, &query, args.cpu_blockers)?
        }
    };
    let selections = select(&explained, &args.selectors)?;
    let out = match args.format {
        ExplainFormat::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({ "selections": selections }))?;
            s.push('\n');
            s
        }
        ExplainFormat::Text => selections.iter().map(text).collect::<Vec<_>>().join("\n"),
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

fn run_diff(args: &Args, a: &Path, b: &Path) -> Result<ExitCode> {
    let lv_a = args.libvirt_version.clone();
    let lv_b = args.against_libvirt_version.clone().or_else(|| lv_a.clone());
    let facts = args.host_facts.as_deref();
    let ea = replayed(a, facts, &args.query(lv_a), args.cpu_blockers)?;
    let eb = replayed(b, facts, &args.query(lv_b), args.cpu_blockers)?;
    let d = evidence::diff(
        &ea.evidence,
        &evidence::document_paths(&ea.caps),
        &eb.evidence,
        &evidence::document_paths(&eb.caps),
    );
    let out = match args.format {
        ExplainFormat::Json => {
            let mut s = serde_json::to_string_pretty(&d)?;
            s.push('\n');
            s
        }
        ExplainFormat::Text => diff_text(&d),
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(if d.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Control characters of text read from a recording are escaped.
fn clean(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

fn status(n: &Node) -> String {
    match (n.present, n.omitted) {
        (true, _) => "present".into(),
        (false, Some(why)) => format!("LEFT OUT: {why}"),
        (false, None) => "LEFT OUT".into(),
    }
}

/// One selection as an indented tree.
fn text(s: &Selection) -> String {
    let mut out = String::new();
    if !s.selector.is_empty() {
        out.push_str(&format!("== {}\n", clean(&s.selector)));
    }
    if let Some(note) = &s.note {
        out.push_str(&format!("   ({})\n", clean(note)));
    }
    let node = |out: &mut String, n: &Node, indent: usize| {
        let pad = "  ".repeat(indent);
        out.push_str(&format!("{pad}{} [{}]\n", clean(evidence::display_path(&n.path)), status(n)));
        for f in &n.facts {
            out.push_str(&format!("{pad}  - {}\n", clean(&f.to_string())));
        }
    };
    if s.context.iter().any(|n| !n.facts.is_empty() && !n.path.is_empty()) {
        out.push_str("decided within:\n");
        // The document's own node (what resolving the query read) is in the JSON form.
        for n in s.context.iter().filter(|n| !n.facts.is_empty() && !n.path.is_empty()) {
            node(&mut out, n, 1);
        }
        out.push_str("evidence:\n");
    }
    let base = s.nodes.first().map(|n| evidence::depth(&n.path)).unwrap_or(0);
    for n in &s.nodes {
        node(&mut out, n, evidence::depth(&n.path).saturating_sub(base) + 1);
    }
    out
}

fn diff_text(d: &ExplanationDiff) -> String {
    if d.is_empty() {
        return "no difference: the same facts decide the same elements\n".into();
    }
    let mut out = String::new();
    if !d.facts_only_a.is_empty() || !d.facts_only_b.is_empty() {
        out.push_str("facts that differ (- only A, + only B):\n");
        for f in &d.facts_only_a {
            out.push_str(&format!("  - {}\n", clean(f)));
        }
        for f in &d.facts_only_b {
            out.push_str(&format!("  + {}\n", clean(f)));
        }
    }
    if !d.changed.is_empty() {
        out.push_str("elements that change (- only in A's document, + only in B's):\n");
        for c in &d.changed {
            let sign = if c.in_b { '+' } else { '-' };
            out.push_str(&format!("  {sign} {}\n", clean(&c.path)));
            for f in &c.only_a {
                out.push_str(&format!("      because A: {}\n", clean(f)));
            }
            for f in &c.only_b {
                out.push_str(&format!("      because B: {}\n", clean(f)));
            }
        }
    }
    out
}
