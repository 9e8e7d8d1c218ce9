//! `capsd fleet`: questions about many hosts, from the documents their agents publish to etcd
//! (`capsd serve --etcd ENDPOINTS --host-id ID`). Data model: `capsd_fleet`'s crate docs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_analysis::{Domain, Verdict};
use capsd_fleet::{Layout, Scope, Selection, Snapshot};

use super::check::ReportFormat;

use super::check::{BAD_INPUT, NO_CAPABILITIES};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: check: 0 when at least one host can run the domain (it publishes the \
                  domain's document and nothing in it is unsupported, as `capsd check` exits 0; with --strict: \
                  everything supported), 1 when none; diff: 0 same, 1 different; 2 for bad input; 3 when \
                  the store could not be read (etcd unreachable or refusing). A damaged or forged key is \
                  reported on standard error and left out; the rest of the fleet is answered.\n\n\
                  Hosts publish with `capsd serve --etcd ENDPOINTS --host-id ID`; a host that publishes \
                  nothing for what a domain needs is 'unknown', never 'unsupported'.")]
pub struct Args {
    /// etcd endpoints, comma-separated (http://HOST:PORT, https://HOST:PORT or HOST:PORT).
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', env = "CAPSD_ETCD", required = true)]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_auth: EtcdAuthArgs,
    /// Key prefix of the fleet in etcd (as given to `capsd serve --etcd-prefix`).
    #[arg(long, value_name = "P", default_value = "/capsd", global = true)]
    etcd_prefix: String,
    /// Output form: text (for people) or JSON.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text, global = true)]
    format: ReportFormat,
    #[command(subcommand)]
    command: Command,
}

/// TLS and authentication towards etcd (`capsd fleet` and `capsd serve`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdAuthArgs {
    /// CA certificates (PEM) the etcd members' certificates must chain to (https:// endpoints;
    /// default: the system's CA bundle).
    #[arg(long, value_name = "FILE", env = "CAPSD_ETCD_CACERT", global = true)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for members that require one (with --etcd-key).
    #[arg(long, value_name = "FILE", env = "CAPSD_ETCD_CERT", requires = "etcd_key", global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "CAPSD_ETCD_KEY", requires = "etcd_cert", global = true)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's authentication enabled), with --etcd-password-file.
    #[arg(long, value_name = "NAME", env = "CAPSD_ETCD_USER", requires = "etcd_password_file", global = true)]
    pub etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, value_name = "FILE", env = "CAPSD_ETCD_PASSWORD_FILE", requires = "etcd_user", global = true)]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAuthArgs {
    /// The connection settings for `endpoints` (files are checked when connecting; the
    /// password file is read here, named when unreadable).
    pub fn config(&self, endpoints: &[String]) -> Result<capsd_fleet::EtcdConfig> {
        let password = match &self.etcd_password_file {
            Some(p) => Some(capsd_fleet::etcd::read_password_file(p).context("--etcd-password-file")?),
            None => None,
        };
        Ok(capsd_fleet::EtcdConfig {
            endpoints: endpoints.to_vec(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password,
        })
    }
}

/// Text read from the store, made safe for a terminal: control characters escaped
/// (`\u{1b}`, `\n`), so a host cannot clear a screen, set a window title or fake rows.
pub fn esc(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
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
    /// Delete stored documents that no host refers to any more (needs write access to
    /// P/docs/: etcd's root, or a role granting it).
    Gc,
    /// Least privilege (etcd's authentication enabled, run as etcd's root): make etcd user
    /// USER (default capsd-host-ID) with a role that may write only host ID's own keys
    /// (its record, claim and references) and add documents; another host's credentials
    /// cannot change or delete them.
    GrantHost {
        /// The host id (as given to `capsd serve --host-id`).
        id: String,
        /// The user's name (default: capsd-host-ID).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// File whose first line is the new user's password.
        #[arg(long, value_name = "FILE", required = true)]
        password_file: PathBuf,
    },
    /// A read-only web page of the fleet (hosts, capability matrix, "where can this VM
    /// run?") and the JSON behind it, following the store while open.
    Serve(super::fleet_serve::ServeArgs),
    /// Least privilege: make etcd user NAME with a read-only role on the fleet's prefix (for
    /// `capsd fleet hosts|check|baseline|diff`).
    GrantReader {
        /// The user's name.
        name: String,
        /// File whose first line is the new user's password.
        #[arg(long, value_name = "FILE", required = true)]
        password_file: PathBuf,
    },
}

impl Args {
    /// `capsd fleet serve`, which handles its signals itself (SIGHUP reads the token again).
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    match rt.block_on(fleet(args)) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("capsd: error: {e:#}");
            // A file or endpoint given wrong is bad input; anything else about etcd is the store.
            let store = e.chain().any(|c| match c.downcast_ref::<capsd_fleet::FleetError>() {
                Some(capsd_fleet::FleetError::Etcd { error, .. }) => {
                    !matches!(error, capsd_fleet::EtcdError::Config { .. } | capsd_fleet::EtcdError::BadEndpoint(_))
                }
                Some(capsd_fleet::FleetError::Corrupt { .. }) => true,
                _ => false,
            });
            Ok(ExitCode::from(if store { NO_CAPABILITIES } else { BAD_INPUT }))
        }
    }
}

async fn fleet(args: Args) -> Result<ExitCode> {
    let layout = Layout::new(&args.etcd_prefix).context("--etcd-prefix")?;
    if let Command::Serve(s) = args.command {
        return super::fleet_serve::serve(s, layout, args.etcd_auth.config(&args.etcd)?).await;
    }
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
        Command::GrantHost { id, .. } => capsd_fleet::validate_host_id(id)?,
        Command::Gc | Command::GrantReader { .. } | Command::Serve(_) => {}
    }
    let cfg = args.etcd_auth.config(&args.etcd)?;
    let client = capsd_fleet::connect(&cfg).await?;
    let json = args.format == ReportFormat::Json;
    let (out, code) = match args.command {
        Command::Serve(_) => unreachable!("served above"),
        Command::Gc => {
            let n = capsd_fleet::gc(&client, &layout).await?;
            (format!("deleted {n} unreferenced document(s)\n"), 0)
        }
        Command::GrantHost { id, user, password_file } => {
            let pw = capsd_fleet::etcd::read_password_file(&password_file).context("--password-file")?;
            let user = user.unwrap_or_else(|| format!("capsd-host-{id}"));
            let role = capsd_fleet::grant::grant_host(&client, &layout, &id, &user, &pw).await?;
            (
                format!(
                    "etcd user '{user}' with role '{role}': may write host {id}'s keys and add documents under {}\n",
                    layout.prefix()
                ),
                0,
            )
        }
        Command::GrantReader { name, password_file } => {
            let pw = capsd_fleet::etcd::read_password_file(&password_file).context("--password-file")?;
            let role = capsd_fleet::grant::grant_reader(&client, &layout, &name, &pw).await?;
            (format!("etcd user '{name}' with role '{role}': may read {}/\n", layout.prefix()), 0)
        }
        Command::Hosts(sel) => {
            let snap = Snapshot::read(&client, &layout, &Scope::All).await?;
            warn_problems(&snap, json);
            (hosts(&snap, &sel.selection()?, json)?, 0)
        }
        Command::Check { select, strict, .. } => {
            let (name, domain) = domain.context("no domain")?;
            let sel = select.selection()?;
            let scope = Scope::Query {
                virt_type: domain.virt_type().to_owned(),
                arch: domain.arch().map(str::to_owned),
                machine: domain.machine().map(str::to_owned),
                records: domain.arch().is_none() || !sel.selectors.is_empty(),
                prefetch: sel.hosts.is_empty() && sel.selectors.is_empty(),
            };
            let mut snap = Snapshot::read(&client, &layout, &scope).await?;
            let need = capsd_fleet::analysis::needed(&snap, &sel, domain.virt_type(), domain.arch(), domain.machine())?;
            snap.fetch(&client, &layout, need).await?;
            warn_problems(&snap, json);
            // Verdicts of 100,000 hosts are about 16 MB of JSON: written 1 MiB at a time (with
            // the default 8 KiB, 2,000 writes to a pipe, each waking its reader).
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            check(&snap, &name, &domain, &sel, strict, json, &mut out)?
        }
        Command::Baseline { select, query } => {
            let sel = select.selection()?;
            let scope = Scope::Query {
                virt_type: query.virttype.clone(),
                arch: query.arch.clone(),
                machine: query.machine.clone(),
                records: query.arch.is_none() || !sel.selectors.is_empty(),
                prefetch: sel.hosts.is_empty() && sel.selectors.is_empty(),
            };
            let mut snap = Snapshot::read(&client, &layout, &scope).await?;
            fetch_needed(&client, &layout, &mut snap, &sel, &query, json).await?;
            (baseline(&snap, &sel, &query, json)?, 0)
        }
        Command::Diff { host_a, host_b, query } => {
            let mut snap = Snapshot::read(&client, &layout, &Scope::All).await?;
            let sel = Selection { hosts: vec![host_a.clone(), host_b.clone()], selectors: Vec::new() };
            fetch_needed(&client, &layout, &mut snap, &sel, &query, json).await?;
            diff(&snap, &host_a, &host_b, &query, json)?
        }
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::from(code))
}

/// Fetch the documents `sel`'s hosts publish for `q` into `snap`, then warn about what the
/// read left out.
async fn fetch_needed(
    client: &capsd_fleet::Client,
    layout: &Layout,
    snap: &mut Snapshot,
    sel: &Selection,
    q: &QueryArgs,
    json: bool,
) -> Result<()> {
    let need = capsd_fleet::analysis::needed(snap, sel, &q.virttype, q.arch.as_deref(), q.machine.as_deref())?;
    snap.fetch(client, layout, need).await?;
    warn_problems(snap, json);
    Ok(())
}

/// What the read left out, as warnings on standard error (escaped; in JSON output they are
/// also in the answer where it has a place for them).
fn warn_problems(snap: &Snapshot, _json: bool) {
    for p in &snap.problems {
        match &p.host {
            Some(h) => eprintln!("capsd: warning: host {}: {}: {} (left out)", esc(h), esc(&p.key), esc(&p.reason)),
            None => eprintln!("capsd: warning: {}: {} (left out)", esc(&p.key), esc(&p.reason)),
        }
    }
}

fn hosts(snap: &Snapshot, sel: &Selection, json: bool) -> Result<String> {
    let hosts = sel.apply(snap)?;
    if json {
        let v: Vec<serde_json::Value> = hosts
            .iter()
            .map(|(_, h)| {
                let docs: serde_json::Map<String, serde_json::Value> =
                    h.docs.iter().map(|(q, hash)| (q.to_string(), hash.clone().into())).collect();
                let mut o = serde_json::json!({"record": h.record, "documents": docs});
                if let Some(d) = &h.damaged {
                    o["damaged"] = d.clone().into();
                }
                o
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
        if let Some(d) = &h.damaged {
            out.push_str(&format!("{:<24} (record not usable: {})\n", esc(id), esc(d)));
            continue;
        }
        out.push_str(&format!(
            "{:<24} {:<8} {:<9} {:<10} {:>4}  {:<10} {}\n",
            esc(id),
            esc(&r.cpu.arch),
            esc(r.libvirt_version.as_deref().unwrap_or("-")),
            esc(&if qemu.is_empty() { "-".to_owned() } else { qemu.join(",") }),
            h.docs.len(),
            format!("{}s ago", now.saturating_sub(r.updated_ms) / 1000),
            esc(r.cpu.model.as_deref().unwrap_or("-")),
        ));
    }
    out.push_str(&format!("{} host(s)\n", hosts.len()));
    Ok(out)
}

/// Per-host verdicts as `fleet check` prints them (text or JSON), written to `w` as they
/// are made (standard output for the command: at 100,000 hosts the text is tens of MB), and
/// the summary line still to print and the exit status; the fleet page (`fleet_serve`)
/// answers with this JSON, written to a buffer.
pub(super) fn check(
    snap: &Snapshot,
    name: &str,
    domain: &Domain,
    sel: &Selection,
    strict: bool,
    json: bool,
    w: &mut dyn Write,
) -> Result<(String, u8)> {
    // Only the analysis's own refusal is the domain's fault; a store problem is not.
    let verdicts = capsd_fleet::analysis::check(snap, domain, sel).map_err(|e| match e {
        capsd_fleet::FleetError::Analysis(_) => {
            anyhow::Error::new(e).context(format!("{name}: not a usable domain definition"))
        }
        e => anyhow::Error::new(e),
    })?;
    let count = |v: Verdict| verdicts.iter().filter(|h| h.verdict == v).count();
    let can_run = |h: &&capsd_fleet::HostVerdict| match h.verdict {
        Verdict::Supported => true,
        Verdict::Unknown => !strict && h.query.is_some(),
        Verdict::Unsupported => false,
    };
    let hosts_can_run: Vec<&str> = verdicts.iter().filter(can_run).map(|h| h.host.as_str()).collect();
    let code = if hosts_can_run.is_empty() { 1 } else { 0 };
    if json {
        // Written straight from the verdicts (a JSON tree of 100,000 hosts' verdicts first
        // would be hundreds of MB).
        #[derive(serde::Serialize)]
        struct Summary {
            supported: usize,
            unsupported: usize,
            unknown: usize,
        }
        #[derive(serde::Serialize)]
        struct Out<'a> {
            domain: &'a str,
            revision: i64,
            hosts: &'a [capsd_fleet::HostVerdict],
            can_run: &'a [&'a str],
            summary: Summary,
        }
        let out = Out {
            domain: name,
            revision: snap.revision,
            hosts: &verdicts,
            can_run: &hosts_can_run,
            summary: Summary {
                supported: count(Verdict::Supported),
                unsupported: count(Verdict::Unsupported),
                unknown: count(Verdict::Unknown),
            },
        };
        serde_json::to_writer_pretty(&mut *w, &out).context("writing the verdicts")?;
        w.write_all(b"\n").and_then(|()| w.flush()).context("writing the verdicts")?;
        return Ok((String::new(), code));
    }
    for h in &verdicts {
        let mut out = String::new();
        out.push_str(&format!("{:<24} {:<12} {}", esc(&h.host), h.verdict.as_str(), h.query.as_deref().unwrap_or("-")));
        if let Some(f) = &h.finding {
            out.push_str(&format!("  {} = {} by {}", esc(&f.path), esc(&f.value), esc(&f.capability)));
            if let Some(n) = &f.note {
                out.push_str(&format!(": {}", esc(n)));
            }
        }
        if let Some(n) = &h.note {
            out.push_str(&format!("  {}", esc(n)));
        }
        out.push('\n');
        w.write_all(out.as_bytes()).context("writing the verdicts")?;
    }
    w.flush().context("writing the verdicts")?;
    let out = format!(
        "{name}: {} host(s) can run it; {} host(s): {} supported, {} unsupported, {} unknown\n",
        hosts_can_run.len(),
        verdicts.len(),
        count(Verdict::Supported),
        count(Verdict::Unsupported),
        count(Verdict::Unknown)
    );
    Ok((out, code))
}

fn baseline(snap: &Snapshot, sel: &Selection, q: &QueryArgs, json: bool) -> Result<String> {
    let (docs, missing) =
        capsd_fleet::analysis::documents(snap, sel, &q.virttype, q.arch.as_deref(), q.machine.as_deref())?;
    for (id, why) in &missing {
        eprintln!("capsd: warning: host {} left out of the baseline: {}", esc(id), esc(why));
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

fn diff(snap: &Snapshot, a: &str, b: &str, q: &QueryArgs, json: bool) -> Result<(String, u8)> {
    let get = |id: &str| -> Result<std::sync::Arc<capsd_core::DomainCapabilities>> {
        let sel = Selection { hosts: vec![id.to_owned()], selectors: Vec::new() };
        let (mut docs, missing) =
            capsd_fleet::analysis::documents(snap, &sel, &q.virttype, q.arch.as_deref(), q.machine.as_deref())?;
        if let Some((_, why)) = missing.first() {
            eprintln!("capsd: warning: host {}: {}", esc(id), esc(why));
        }
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
