//! What a probe learned: the QMP transcript of each QEMU run plus the host facts read at the
//! same time. This is the unit that is recorded (`cargo xtask record-qemu`), replayed in
//! tests, and cached by the agent. Derivation (`derive`, `cpu`) reads only this: it never
//! talks to QEMU or the host itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::reply::{QmpError, Reply, View};

/// Version of the recording / cache format. Bump when the meaning of a field changes.
pub const PROBE_FORMAT_VERSION: u32 = 1;

/// The accelerator a QEMU run was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// `-accel kvm`: virt type `kvm`.
    Kvm,
    /// `-accel tcg`: virt type `qemu`.
    Tcg,
}

impl Accel {
    /// libvirt's virt type name for this accelerator.
    pub fn virt_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

/// One command and its reply, as exchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub execute: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// `Ok(return value)` or `Err(the error reply)`.
    pub reply: Reply,
}

/// Everything one QEMU process answered.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Transcript {
    /// The QMP greeting's `QMP` object (version, capabilities).
    #[serde(default)]
    pub greeting: Value,
    pub exchanges: Vec<Exchange>,
}

impl Transcript {
    /// The successful reply to `execute` with exactly these arguments (`None` = no arguments).
    /// `None` when the command was not asked or failed: derivation treats both as
    /// "QEMU did not say", never as "no".
    pub fn reply(&self, execute: &str, arguments: Option<&Value>) -> Option<&Value> {
        let e = self.exchange(execute, arguments);
        self.note(execute, arguments, e);
        e.and_then(|e| e.reply.get().ok())
    }

    /// The reply to a command asked without arguments.
    pub fn get(&self, execute: &str) -> Option<&Value> {
        self.reply(execute, None)
    }

    /// The successful reply to a command asked without arguments, read in place
    /// ([`Reply::view`]).
    pub fn view(&self, execute: &str) -> Option<View<'_>> {
        let e = self.exchange(execute, None);
        self.note(execute, None, e);
        e.and_then(|e| e.reply.view())
    }

    /// Evidence (`capsd explain`): whether `execute` was answered, failed or not asked.
    fn note(&self, execute: &str, arguments: Option<&Value>, e: Option<&Exchange>) {
        use capsd_core::evidence::{fact, Answer, Fact};
        fact(|| Fact::Reply {
            command: match arguments {
                Some(a) => format!("{execute} {a}"),
                None => execute.to_owned(),
            },
            run: None,
            answer: match e {
                None => Answer::NotAsked,
                Some(e) if e.reply.is_ok() => Answer::Answered,
                Some(_) => Answer::Failed,
            },
        });
    }

    /// The whole exchange, including an error reply.
    pub fn exchange(&self, execute: &str, arguments: Option<&Value>) -> Option<&Exchange> {
        self.exchanges.iter().find(|e| e.execute == execute && e.arguments.as_ref() == arguments)
    }
}

/// The result of probing one emulator binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeData {
    pub format_version: u32,
    /// The binary as given (absolute path).
    pub binary: String,
    /// One transcript per accelerator that was probed (KVM only where usable).
    pub runs: BTreeMap<Accel, Transcript>,
    /// Host facts read when probing.
    pub host: crate::host::HostFacts,
}

impl ProbeData {
    pub fn run(&self, accel: Accel) -> Option<&Transcript> {
        self.runs.get(&accel)
    }
}
