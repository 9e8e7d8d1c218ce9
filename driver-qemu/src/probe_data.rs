//! What a probe learned: the QMP transcript of each QEMU run plus the host facts read at the
//! same time. This is the unit that is recorded (`cargo xtask record-qemu`), replayed in
//! tests, and cached by the agent. Derivation (`derive`, `cpu`) reads only this: it never
//! talks to QEMU or the host itself.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::cache::compact::View;

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

/// A QMP error reply (`{"error": {"class": ..., "desc": ...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpError {
    pub class: String,
    pub desc: String,
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

/// A QMP reply: `Ok(return value)` or `Err(the error reply)`, serialized as that `Result`.
///
/// A reply read from the probe cache stays in its stored (compact, already verified) form
/// until something reads it, and is decoded once then: a derivation reads a few of a run's
/// replies (most of the bytes are per-model CPU expansions that only some queries need), so
/// a warm lookup no longer builds and frees the JSON trees of the others.
#[derive(Clone)]
pub struct Reply {
    value: OnceLock<Result<Value, QmpError>>,
    /// The compact bytes (`crate::cache::compact`) of a reply not decoded yet.
    stored: Option<StoredReply>,
    /// The compact bytes of a reply that was not stored, made for [`Reply::view`].
    encoded: OnceLock<Vec<u8>>,
}

/// Where a stored reply's bytes are: a range of a cache file read into memory.
#[derive(Clone)]
pub(crate) struct StoredReply {
    pub(crate) buf: Arc<Vec<u8>>,
    pub(crate) range: Range<usize>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(value: Value) -> Self {
        Reply::from(Ok(value))
    }

    /// An error reply.
    pub fn err(error: QmpError) -> Self {
        Reply::from(Err(error))
    }

    /// A reply decoded from `stored` on first read. The bytes must have been checked by
    /// `crate::cache::compact` (a decoding failure is still no panic: it reads as an error
    /// reply of class `CapsdDamagedCache`).
    pub(crate) fn stored(stored: StoredReply) -> Self {
        Reply { value: OnceLock::new(), stored: Some(stored), encoded: OnceLock::new() }
    }

    fn resolved(&self) -> &Result<Value, QmpError> {
        self.value.get_or_init(|| {
            let damaged = |desc: String| QmpError { class: "CapsdDamagedCache".into(), desc };
            match &self.stored {
                Some(s) => match s.buf.get(s.range.clone()) {
                    Some(bytes) => crate::cache::compact::decode_reply(bytes).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "a cached QMP reply cannot be decoded; treated as not answered");
                        Err(damaged(e.to_string()))
                    }),
                    None => Err(damaged("stored reply out of range".into())),
                },
                None => Err(damaged("no reply".into())),
            }
        })
    }

    /// The reply, decoding it first when it is still in its stored form.
    pub fn get(&self) -> Result<&Value, &QmpError> {
        self.resolved().as_ref()
    }

    /// A successful reply read in place, without decoding it into a `Value` tree (for
    /// lookups in large replies). `None` for an error reply.
    pub fn view(&self) -> Option<View<'_>> {
        if let Some(s) = &self.stored {
            let bytes = s.buf.get(s.range.clone())?;
            return match bytes.split_first() {
                Some((0, value)) => Some(View::new(value)),
                _ => None,
            };
        }
        let v = self.get().ok()?;
        Some(View::new(self.encoded.get_or_init(|| crate::cache::compact::encode_value(v))))
    }

    /// Whether QEMU answered without an error.
    pub fn is_ok(&self) -> bool {
        self.get().is_ok()
    }

    /// The reply as an owned `Result`.
    pub fn into_result(self) -> Result<Value, QmpError> {
        self.resolved();
        let Reply { value, .. } = self;
        value.into_inner().unwrap_or_else(|| Err(QmpError { class: "CapsdDamagedCache".into(), desc: String::new() }))
    }
}

impl From<Result<Value, QmpError>> for Reply {
    fn from(r: Result<Value, QmpError>) -> Self {
        Reply { value: OnceLock::from(r), stored: None, encoded: OnceLock::new() }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.resolved().fmt(f)
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        self.resolved() == other.resolved()
    }
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.resolved().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Result::<Value, QmpError>::deserialize(d).map(Reply::from)
    }
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
        self.exchange(execute, arguments).and_then(|e| e.reply.get().ok())
    }

    /// The reply to a command asked without arguments.
    pub fn get(&self, execute: &str) -> Option<&Value> {
        self.reply(execute, None)
    }

    /// The successful reply to a command asked without arguments, read in place
    /// ([`Reply::view`]).
    pub fn view(&self, execute: &str) -> Option<View<'_>> {
        self.exchange(execute, None).and_then(|e| e.reply.view())
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
