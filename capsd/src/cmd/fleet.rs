//! `capsd fleet`: questions about many hosts, from the documents their agents publish to etcd
//! (`capsd serve --etcd ENDPOINTS --host-id ID`). Data model: `capsd_fleet`'s crate docs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_analysis::{Domain, Verdict};
use capsd_fleet::{Layout, Selection, Snapshot};

use super::check::ReportFormat;

use super::check::{BAD_INPUT, NO_CAPABILITIES};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: check: 0 when at least one host can run the domain (it publishes the \
                  domain's document and nothing in it is unsupported, as `capsd check` exits 0; with --strict: \
                  everything supported), 1 when none; diff: 0 same, 1 different; 2 for bad input; 3 when \
                  the store could not be read (etcd unreachable, a damaged key).\n\n\
                  Hosts publish with `capsd serve --etcd ENDPOINTS --host-id ID`; a host that publishes \
                  nothing for what a domain needs is 'unknown', never 'unsupported'.")]
pub struct Args {
    /// etcd endpoints, comma-separated (http://HOST:PORT or HOST:PORT).
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', env = "CAPSD_ETCD", required = true)]
    etcd: Vec<String>,
    /// Key prefix of the fleet in etcd (as given to `capsd serve --etcd-prefix`).
    #[arg(long, value_name = "P", default_value = "/capsd", global = true)]
    etcd_prefix: String,
    /// Output form: text (for people) or JSON.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text, global = true)]
    format: ReportFormat,
    #[command(subcommand)]
    command: Command,
}

/// Which hosts to use.
#[derive(Debug, Clone, clap::Args)]
struct Select {
    /// Only these hosts (comma-separated ids).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// Only hosts whose record has NAME=VALUE (repeatable, all must match). NAME: id, driver,
    /// capsd_version, libvirt_version, arch, cpu.vendor, cpu.model, emulator, qemu_version.
    #[arg(long, value_name = "NAME=VALUE")]
    selector: Vec<String>,
}

impl QueryArgs {
    /// Refuse values a published query could not have (named), before reaching for etcd.
    fn validate(&self) -> Result<()> {
        capsd_fleet::QueryKey::new(&self.virttype, self.arch.as_deref().unwrap_or("any"), self.machine.as_deref())?;
        Ok(())
    }
}

impl Select {
    fn selection(&self) -> Result<Selection> {
        let selectors =
            self.selector.iter().map(|s| capsd_fleet::Selection::parse_selector(s)).collect::<Result<_, _>>()?;
        Ok(Selection { hosts: self.hosts.clone(), selectors })
    }
}

/// The query whose documents are compared.
#[derive(Debug, Clone, clap::Args)]
struct QueryArgs {
    /// Virt type.
    #[arg(long = "virttype", value_name = "TYPE", default_value = "kvm")]
    virttype: String,
    /// Guest arch (default: each host's own).
    #[arg(long)]
    arch: Option<String>,
    /// Machine alias or name (default: the arch's default machine).
    #[arg(long)]
    machine: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The hosts in the store: id, arch, CPU, libvirt and QEMU versions, documents, age.
    Hosts(Select),
    /// Which hosts can run this domain definition: per host supported / unsupported / unknown,
    /// with the finding that decides.
    Check {
        /// The libvirt domain definition (`<domain type=...>`), or `-` for standard input.
        domain: PathBuf,
        #[command(flatten)]
        select: Select,
        /// A host counts as able to run the domain only when everything is supported
        /// (unknown parts count against it).
        #[arg(long)]
        strict: bool,
    },
    /// The document every selected host satisfies (for a pool's live-migration promise).
    Baseline {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// What HOST_A's document states and HOST_B's lacks, and the reverse, for one query.
    Diff {
        host_a: String,
        host_b: String,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Delete stored documents that no host refers to any more.
    Gc,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    match rt.block_on(fleet(args)) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("capsd: error: {e:#}");
            let store = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<capsd_fleet::FleetError>(),
                    Some(capsd_fleet::FleetError::Etcd { .. } | capsd_fleet::FleetError::Corrupt { .. })
                )
            });
            Ok(ExitCode::from(if store { NO_CAPABILITIES } else { BAD_INPUT }))
        }
    }
}

async fn fleet(args: Args) -> Result<ExitCode> {
    let layout = Layout::new(&args.etcd_prefix).context("--etcd-prefix")?;
    // Inputs are read before the store, so bad input is named even when etcd is down.
    let domain = match &args.command {
        Command::Check { domain, .. } => {
            let (name, text) = super::fmt::read_input(domain)?;
            let d = Domain::parse(&text).with_context(|| format!("{name}: not a usable domain definition"))?;
            Some((name, d))
        }
        _ => None,
    };
    match &args.command {
        Command::Hosts(sel) | Command::Check { select: sel, .. } => drop(sel.selection()?),
        Command::Baseline { select, query } => {
            select.selection()?;
            query.validate()?;
        }
        Command::Diff { host_a, host_b, query } => {
            capsd_fleet::validate_host_id(host_a)?;
            capsd_fleet::validate_host_id(host_b)?;
            query.validate()?;
        }
        Command::Gc => {}
    }
    let mut client = capsd_fleet::connect(&args.etcd).await?;
    if matches!(args.command, Command::Gc) {
        let n = capsd_fleet::gc(&mut client, &args.etcd, &layout).await?;
        println!("deleted {n} unreferenced document(s)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut snap = Snapshot::read(&mut client, &args.etcd, &layout).await?;
    let json = args.format == ReportFormat::Json;
    let (out, code) = match args.command {
        Command::Hosts(sel) => (hosts(&snap, &sel.selection()?, json)?, 0),
        Command::Check { select, strict, .. } => {
            let (name, domain) = domain.context("no domain")?;
            check(&mut snap, &name, &domain, &select.selection()?, strict, json)?
        }
        Command::Baseline { select, query } => (baseline(&mut snap, &select.selection()?, &query, json)?, 0),
        Command::Diff { host_a, host_b, query } => diff(&mut snap, &host_a, &host_b, &query, json)?,
        Command::Gc => unreachable!("handled above"),
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::from(code))
}

fn hosts(snap: &Snapshot, sel: &Selection, json: bool) -> Result<String> {
    let hosts = sel.apply(snap)?;
    if json {
        let v: Vec<serde_json::Value> = hosts
            .iter()
            .map(|(_, h)| {
                let docs: serde_json::Map<String, serde_json::Value> =
                    h.docs.iter().map(|(q, hash)| (q.to_string(), hash.clone().into())).collect();
                serde_json::json!({"record": h.record, "documents": docs})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let now = capsd_fleet::now_ms();
    let mut out =
        format!("{:<24} {:<8} {:<9} {:<10} {:>4}  {:<10} CPU\n", "HOST", "ARCH", "LIBVIRT", "QEMU", "DOCS", "UPDATED");
    for (id, h) in &hosts {
        let r = &h.record;
        let mut qemu: Vec<&str> = r.emulators.iter().filter_map(|e| e.version.as_deref()).collect();
        qemu.dedup();
        out.push_str(&format!(
            "{:<24} {:<8} {:<9} {:<10} {:>4}  {:<10} {}\n",
            id,
            r.cpu.arch,
            r.libvirt_version.as_deref().unwrap_or("-"),
            if qemu.is_empty() { "-".to_owned() } else { qemu.join(",") },
            h.docs.len(),
            format!("{}s ago", now.saturating_sub(r.updated_ms) / 1000),
            r.cpu.model.as_deref().unwrap_or("-"),
        ));
    }
    out.push_str(&format!("{} host(s)\n", hosts.len()));
    Ok(out)
}

fn check(
    snap: &mut Snapshot,
    name: &str,
    domain: &Domain,
    sel: &Selection,
    strict: bool,
    json: bool,
) -> Result<(String, u8)> {
    let verdicts = capsd_fleet::analysis::check(snap, domain, sel)
        .with_context(|| format!("{name}: not a usable domain definition"))?;
    let count = |v: Verdict| verdicts.iter().filter(|h| h.verdict == v).count();
    let can_run = |h: &&capsd_fleet::HostVerdict| match h.verdict {
        Verdict::Supported => true,
        Verdict::Unknown => !strict && h.query.is_some(),
        Verdict::Unsupported => false,
    };
    let hosts_can_run: Vec<&str> = verdicts.iter().filter(can_run).map(|h| h.host.as_str()).collect();
    let code = if hosts_can_run.is_empty() { 1 } else { 0 };
    if json {
        let v = serde_json::json!({
            "domain": name,
            "revision": snap.revision,
            "hosts": verdicts,
            "can_run": hosts_can_run,
            "summary": {
                "supported": count(Verdict::Supported),
                "unsupported": count(Verdict::Unsupported),
                "unknown": count(Verdict::Unknown),
            },
        });
        return Ok((serde_json::to_string_pretty(&v)? + "\n", code));
    }
    let mut out = String::new();
    for h in &verdicts {
        out.push_str(&format!("{:<24} {:<12} {}", h.host, h.verdict.as_str(), h.query.as_deref().unwrap_or("-")));
        if let Some(f) = &h.finding {
            out.push_str(&format!("  {} = {} by {}", f.path, f.value, f.capability));
            if let Some(n) = &f.note {
                out.push_str(&format!(": {n}"));
            }
        }
        if let Some(n) = &h.note {
            out.push_str(&format!("  {n}"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{name}: {} host(s) can run it; {} host(s): {} supported, {} unsupported, {} unknown\n",
        hosts_can_run.len(),
        verdicts.len(),
        count(Verdict::Supported),
        count(Verdict::Unsupported),
        count(Verdict::Unknown)
    ));
    Ok((out, code))
}

fn baseline(snap: &mut Snapshot, sel: &Selection, q: &QueryArgs, json: bool) -> Result<String> {
    let (docs, missing) =
        capsd_fleet::analysis::documents(snap, sel, &q.virttype, q.arch.as_deref(), q.machine.as_deref())?;
    if !missing.is_empty() {
        eprintln!("capsd: warning: left out of the baseline, no document for the query: {}", missing.join(", "));
    }
    if docs.is_empty() {
        anyhow::bail!(
            "no selected host publishes a document for virt type {}, arch {}, machine {}",
            q.virttype,
            q.arch.as_deref().unwrap_or("(each host's)"),
            q.machine.as_deref().unwrap_or("(default)")
        );
    }
    let base = capsd_fleet::analysis::baseline(&docs)?;
    tracing::info!(hosts = docs.len(), "baseline");
    Ok(if json { capsd_core::json::to_json(&base) } else { capsd_core::xml::to_xml(&base) })
}

fn diff(snap: &mut Snapshot, a: &str, b: &str, q: &QueryArgs, json: bool) -> Result<(String, u8)> {
    let mut get = |id: &str| -> Result<std::sync::Arc<capsd_core::DomainCapabilities>> {
        let sel = Selection { hosts: vec![id.to_owned()], selectors: Vec::new() };
        let (mut docs, _) =
            capsd_fleet::analysis::documents(snap, &sel, &q.virttype, q.arch.as_deref(), q.machine.as_deref())?;
        let (_, d) = docs.pop().ok_or_else(|| capsd_fleet::FleetError::NoDocument {
            host: id.to_owned(),
            query: format!(
                "virt type {}, arch {}, machine {}",
                q.virttype,
                q.arch.as_deref().unwrap_or("(the host's)"),
                q.machine.as_deref().unwrap_or("(default)")
            ),
        })?;
        Ok(d)
    };
    let (da, db) = (get(a)?, get(b)?);
    let d = capsd_analysis::diff(&da, &db);
    let code = if d.is_empty() { 0 } else { 1 };
    let out = if json { serde_json::to_string_pretty(&d)? + "\n" } else { d.to_text(a, b) };
    Ok((out, code))
}
