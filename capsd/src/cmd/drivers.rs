//! `capsd drivers`: list the drivers and whether each is available on this host.

use std::process::ExitCode;

use anyhow::Result;
use capsd_core::Availability;

use crate::registry::{DriverOptions, Registry, IN_TREE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Describe this libvirt release (X.Y or X.Y.Z) instead of the installed one: which
    /// release's rules capsd prints its documents by (a release newer than every one capsd
    /// knows gets the newest known release's rules, with a warning).
    #[arg(long = "libvirt-version", value_name = "X.Y[.Z]")]
    libvirt_version: Option<String>,
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let reg = super::domcaps::registry(ctx, &DriverOptions::default())?;
    let mut overrides = Vec::new();
    if let Some(v) = &args.libvirt_version {
        for d in reg.all() {
            if let Some(rows) = crate::registry::libvirt_details(d.name(), v)? {
                overrides.push((d.name().to_owned(), rows));
            }
        }
    }
    print!("{}", render_with(&reg, args.json, &overrides));
    Ok(ExitCode::SUCCESS)
}

/// A listed driver: name, availability and details.
type Row = (String, Availability, Vec<(String, String)>);

/// The listing: a table, or JSON (also the agent's `/v1/drivers` body).
pub fn render(reg: &Registry, json: bool) -> String {
    render_with(reg, json, &[])
}

/// [`render`], with the `libvirt_*` details of some drivers replaced (`--libvirt-version`).
fn render_with(reg: &Registry, json: bool, libvirt: &[(String, Vec<(String, String)>)]) -> String {
    let rows: Vec<Row> = reg
        .all()
        .iter()
        .map(|d| {
            let mut details = d.details();
            if let Some((_, rows)) = libvirt.iter().find(|(n, _)| n == d.name()) {
                details.retain(|(k, _)| !k.starts_with("libvirt_"));
                details.extend(rows.iter().cloned());
            }
            (d.name().to_owned(), d.availability(), details)
        })
        .collect();
    let missing: Vec<&str> = IN_TREE.iter().copied().filter(|n| !rows.iter().any(|(r, _, _)| r == n)).collect();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, a, details)| {
                let mut v =
                    serde_json::json!({"name": n, "built_in": IN_TREE.contains(&n.as_str()), "availability": a});
                if !details.is_empty() {
                    v["details"] =
                        details.iter().map(|(k, x)| (k.clone(), serde_json::Value::from(x.as_str()))).collect();
                }
                v
            })
            .chain(missing.iter().map(|n| serde_json::json!({"name": n, "built_in": false})))
            .chain(reg.refused().iter().map(|(f, why)| serde_json::json!({"refused_plugin": f, "reason": why})))
            .chain(reg.failed().iter().map(|(f, how)| serde_json::json!({"failed_plugin": f, "reason": how})))
            .collect();
        return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    }
    let mut out = String::new();
    for (name, a, details) in &rows {
        match a {
            Availability::Available => out.push_str(&format!("{name:<12} available\n")),
            Availability::Unavailable { reason } => out.push_str(&format!("{name:<12} unavailable: {reason}\n")),
        }
        for (k, v) in details {
            out.push_str(&format!("{:<12}   {k}: {v}\n", ""));
        }
    }
    for name in missing {
        out.push_str(&format!("{name:<12} not built in\n"));
    }
    for (_, why) in reg.refused() {
        out.push_str(&format!("refused plugin: {why}\n"));
    }
    for (file, how) in reg.failed() {
        out.push_str(&format!("failed plugin: {}: {how}\n", file.display()));
    }
    out
}
