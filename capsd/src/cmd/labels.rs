//! `capsd labels` and `capsd traits`: Kubernetes node labels (KubeVirt's conventions) and
//! placement traits (OpenStack Nova's) from a capabilities document or a driver query. See
//! the capsd-analysis crate docs for the mapping and its sources.
//!
//! `--format nfd` writes Node Feature Discovery's local feature-file format (one
//! `name=value` per line, `#` comments), which nfd-worker's `local` source reads from
//! `/etc/kubernetes/node-feature-discovery/features.d/` and publishes as node labels, so
//! capsd never talks to the API server. `--output FILE` replaces the file atomically through
//! a dot-file in the same directory (NFD ignores dot-files).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_core::Query;

use super::check::CapsSource;

/// Where nfd-worker's `local` feature source reads feature files.
pub const NFD_FEATURES_DIR: &str = "/etc/kubernetes/node-feature-discovery/features.d";

/// `--format` of labels and traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    /// Node Feature Discovery's local feature file (labels only).
    Nfd,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Kubernetes without capsd talking to the API server: \
    `capsd labels --format nfd --output /etc/kubernetes/node-feature-discovery/features.d/capsd` \
    (from a timer or after `capsd probe`); NFD's worker reads that directory (its `local` source) \
    and publishes the lines as node labels. NFD before v0.15 needs the label namespaces allowed \
    on nfd-master (-extra-label-ns=kubevirt.io,cpu-model.node.kubevirt.io,...).")]
pub struct Args {
    #[command(flatten)]
    source: CapsSource,
    /// Output form: `text` is one `key=value` (labels) or one name (traits) per line; `nfd` is
    /// Node Feature Discovery's feature-file format (labels only).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write to this file instead of standard output, atomically (a dot-file in the same
    /// directory renamed over it).
    #[arg(long, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
}

/// NFD's local feature-file form of `labels`: a comment naming the source, then one
/// `name=value` line per label.
pub fn nfd_feature_file(
    labels: &std::collections::BTreeMap<String, String>,
    caps: &capsd_core::DomainCapabilities,
) -> String {
    let mut out = format!(
        "# KubeVirt-style node labels from capsd {} (domain capabilities: {} {} {}).\n# Read by Node Feature Discovery's local source from {NFD_FEATURES_DIR}/.\n",
        env!("CARGO_PKG_VERSION"),
        caps.domain,
        caps.arch,
        caps.machine.as_deref().unwrap_or("-"),
    );
    for (k, v) in labels {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

fn emit(out: &str, to: Option<&std::path::Path>) -> Result<()> {
    let Some(path) = to else {
        return std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output");
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().with_context(|| format!("--output {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, out).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

pub fn run_labels(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let caps = args.source.load(ctx, Query::default())?;
    let labels = capsd_analysis::kubevirt_labels(&caps);
    let out = match args.format {
        Format::Text => labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
        Format::Json => serde_json::to_string_pretty(&labels)? + "\n",
        Format::Nfd => nfd_feature_file(&labels, &caps),
    };
    emit(&out, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_traits(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let caps = args.source.load(ctx, Query::default())?;
    let traits = capsd_analysis::nova_traits(&caps);
    let out = match args.format {
        Format::Text => traits.iter().map(|t| format!("{t}\n")).collect::<String>(),
        Format::Json => serde_json::to_string_pretty(&traits)? + "\n",
        Format::Nfd => {
            anyhow::bail!("--format nfd: Node Feature Discovery files hold labels; use `capsd labels --format nfd`")
        }
    };
    emit(&out, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
