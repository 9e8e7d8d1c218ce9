//! Typed access to what QEMU answered, for derivation: the set of QOM types, the QMP
//! schema, the TPM models/backends, the machine table, the GIC/SEV/SGX replies.
//!
//! Two transcripts matter, as in libvirt: the *primary* run (the KVM run when there is
//! one, else the TCG run) answers everything that does not depend on the accelerator
//! (device types, schema, TPM, GIC, SEV, SGX), while the run of the queried accelerator
//! answers what does (the machine table).

use std::collections::HashSet;

use serde_json::Value;

use super::schema::Schema;
use crate::probe_data::{Accel, ProbeData, Transcript};

/// One `query-machines` entry, reduced to what derivation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub name: String,
    pub alias: Option<String>,
    pub cpu_max: u32,
}

/// One `query-gic-capabilities` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicCap {
    pub version: u32,
    /// QEMU can emulate it (usable with TCG).
    pub emulated: bool,
    /// The host kernel provides it (usable with KVM).
    pub kernel: bool,
}

/// The answers derivation reads, borrowed from the probe data.
#[derive(Debug)]
pub struct Answers<'a> {
    pub primary: &'a Transcript,
    pub accel_run: &'a Transcript,
    /// The binary was probed with KVM (KVM is usable for it on this host).
    pub kvm_probed: bool,
    types: HashSet<&'a str>,
    pub schema: Schema<'a>,
}

impl<'a> Answers<'a> {
    /// Select the transcripts for `accel`. `None` when the probe has no run for it.
    pub fn new(data: &'a ProbeData, accel: Accel) -> Option<Answers<'a>> {
        let accel_run = data.run(accel)?;
        let primary = data.run(Accel::Kvm).unwrap_or(accel_run);
        let types = primary
            .view("qom-list-types")
            .into_iter()
            .flat_map(|l| l.array())
            .filter_map(|t| t.get("name")?.as_str())
            .collect();
        let schema = Schema::new(primary.view("query-qmp-schema")).with_run(if data.run(Accel::Kvm).is_some() {
            "kvm"
        } else {
            "tcg"
        });
        Some(Answers { primary, accel_run, kvm_probed: data.run(Accel::Kvm).is_some(), types, schema })
    }

    /// Whether `qom-list-types` listed `name`.
    pub fn has_type(&self, name: &str) -> bool {
        let holds = self.types.contains(name);
        self.note("qom-list-types", name, holds);
        holds
    }

    /// The run that answers accelerator-independent questions (`kvm` or `tcg`).
    pub fn primary_run(&self) -> &'static str {
        if self.kvm_probed {
            "kvm"
        } else {
            "tcg"
        }
    }

    /// Evidence (`capsd explain`): the primary run's `command` has `item` or not.
    pub fn note(&self, command: &str, item: &str, holds: bool) {
        capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Qmp {
            command: command.to_owned(),
            run: Some(self.primary_run().to_owned()),
            item: item.to_owned(),
            holds,
        });
    }

    /// Whether the string list `command` returned has `item` (see [`Self::string_list`]).
    pub fn list_has(&self, command: &str, item: &str) -> bool {
        let holds = self.string_list(command).contains(&item);
        self.note(command, item, holds);
        holds
    }

    /// Whether any of `names` is a QOM type.
    /// Every name is looked up (no short cut), so the evidence cites all that were there.
    pub fn has_any_type(&self, names: &[&str]) -> bool {
        names.iter().fold(false, |any, n| self.has_type(n) | any)
    }

    /// The string list a command returned (`query-tpm-models`, `query-tpm-types`); empty
    /// when it was not asked or failed.
    pub fn string_list(&self, command: &str) -> Vec<&'a str> {
        self.primary.get(command).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
    }

    /// The machine table of the queried accelerator's run.
    pub fn machines(&self) -> Vec<MachineInfo> {
        self.accel_run
            .get("query-machines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some(MachineInfo {
                    name: m.get("name")?.as_str()?.to_owned(),
                    alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                    cpu_max: m.get("cpu-max").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok())?,
                })
            })
            .collect()
    }

    /// The machine called `name` (by name or alias).
    pub fn machine(&self, name: &str) -> Option<MachineInfo> {
        let all = self.machines();
        let by_name = all.iter().find(|m| m.name == name).cloned();
        by_name.or_else(|| all.into_iter().find(|m| m.alias.as_deref() == Some(name)))
    }

    /// The GIC versions QEMU reported (`query-gic-capabilities`); empty when not asked or
    /// not an ARM binary.
    pub fn gic_capabilities(&self) -> Vec<GicCap> {
        self.primary
            .get("query-gic-capabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| {
                Some(GicCap {
                    version: u32::try_from(g.get("version")?.as_u64()?).ok()?,
                    emulated: g.get("emulated").and_then(Value::as_bool).unwrap_or(false),
                    kernel: g.get("kernel").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect()
    }

    /// Whether QEMU has command-line option group `option` (`query-command-line-options`),
    /// `None` when it was not asked or failed.
    pub fn cmdline_option(&self, option: &str) -> Option<bool> {
        let list = self.primary.get("query-command-line-options")?.as_array()?;
        Some(list.iter().any(|o| o.get("option").and_then(Value::as_str) == Some(option)))
    }

    /// Whether option group `option` has parameter `param`; `None` when QEMU did not say.
    pub fn cmdline_param(&self, option: &str, param: &str) -> Option<bool> {
        let list = self.primary.get("query-command-line-options")?.as_array()?;
        Some(list.iter().filter(|o| o.get("option").and_then(Value::as_str) == Some(option)).any(|o| {
            o.get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p.get("name").and_then(Value::as_str) == Some(param)))
        }))
    }

    /// Whether QOM type `typename` has property `prop`; `None` when its properties were not
    /// asked (or the question failed).
    pub fn type_has_property(&self, typename: &str, prop: &str) -> Option<bool> {
        crate::cpu::plan::qom_has_property(self.primary, typename, prop)
    }

    /// QEMU has the spice display: its `spice` option group (present once the spice module
    /// is loaded). Recordings made before capsd asked `query-command-line-options` fall back
    /// to the schema's `query-spice` command.
    pub fn has_spice(&self) -> bool {
        match self.cmdline_option("spice") {
            Some(holds) => {
                self.note("query-command-line-options", "option group spice", holds);
                holds
            }
            None => self.schema.has_command("query-spice"),
        }
    }

    /// The successful reply of a command in the primary run.
    pub fn reply(&self, command: &str) -> Option<&'a Value> {
        self.primary.get(command)
    }
}
