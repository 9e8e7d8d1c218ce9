//! The driver interface: a [`Query`] goes in, a [`DomainCapabilities`] (or a
//! [`DriverError`]) comes out. Every hypervisor backend, in-tree or loaded as a plugin,
//! implements [`DomainCapsDriver`].
//!
//! Drivers fill in only what they know: every element of the model is optional, and leaving
//! one out is always a correct answer ("no statement").

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::DomainCapabilities;

/// What a caller asks: the same four inputs as `virsh domcapabilities`. Each is optional;
/// a driver applies its own defaults (host arch, default machine, best virt type) and
/// reports the values it chose in the document (`<path>`, `<arch>`, `<machine>`, `<domain>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    /// `--emulatorbin`: the emulator or device model binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator: Option<PathBuf>,
    /// `--arch`: guest architecture (`x86_64`, `aarch64`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// `--machine`: machine type or alias (`q35`, `pc-q35-7.2`, `virt`, `xenfv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// `--virttype`: `kvm`, `qemu`, `xen`, `lxc`, `bhyve`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_type: Option<String>,
    /// `--libvirt-version`: the libvirt release whose document is wanted (`X.Y[.Z]`). Drivers
    /// that reproduce libvirt's output detect the installed libvirt when this is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<String>,
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(e) = &self.emulator {
            parts.push(format!("emulatorbin={}", e.display()));
        }
        if let Some(a) = &self.arch {
            parts.push(format!("arch={a}"));
        }
        if let Some(m) = &self.machine {
            parts.push(format!("machine={m}"));
        }
        if let Some(v) = &self.virt_type {
            parts.push(format!("virttype={v}"));
        }
        if let Some(v) = &self.libvirt {
            parts.push(format!("libvirt={v}"));
        }
        if parts.is_empty() {
            f.write_str("(defaults)")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Whether a driver can answer on this host, decided cheaply before any query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Availability {
    Available,
    /// The driver cannot answer here; `reason` says why (no binary, no `/dev/xen`, ...).
    Unavailable {
        reason: String,
    },
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}

/// Why a driver did not produce a document.
///
/// The variants fall in three families that callers handle differently:
/// - the driver cannot answer here: [`DriverError::Unavailable`], [`DriverError::NotSupported`];
/// - the input was wrong: [`DriverError::InvalidInput`];
/// - probing failed: [`DriverError::ProbeFailed`], [`DriverError::Io`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The driver does not work on this host at all.
    #[error("driver '{driver}' is not available on this host: {reason}")]
    Unavailable { driver: String, reason: String },
    /// The driver works here but cannot answer this query (an arch, machine or virt type it
    /// does not offer). `what` names the value and, where useful, what is offered instead.
    #[error("driver '{driver}' does not support {what}")]
    NotSupported { driver: String, what: String },
    /// A query value is malformed or contradicts another (emulator/arch mismatch, a path
    /// that does not exist, an unknown virt type).
    #[error("invalid {field} '{value}': {reason}")]
    InvalidInput { field: String, value: String, reason: String },
    /// Asking the hypervisor failed (the binary crashed, hung, or answered garbage).
    #[error("probing {target} failed: {reason}")]
    ProbeFailed { target: String, reason: String },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The three families of [`DriverError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Unavailable or not supported: the driver cannot answer here.
    CannotAnswer,
    /// The caller's input was wrong.
    InvalidInput,
    /// Probing failed.
    ProbeFailed,
}

impl DriverError {
    /// Which family the error belongs to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DriverError::Unavailable { .. } | DriverError::NotSupported { .. } => ErrorKind::CannotAnswer,
            DriverError::InvalidInput { .. } => ErrorKind::InvalidInput,
            DriverError::ProbeFailed { .. } | DriverError::Io { .. } => ErrorKind::ProbeFailed,
        }
    }

    pub fn not_supported(driver: &str, what: impl Into<String>) -> Self {
        DriverError::NotSupported { driver: driver.to_owned(), what: what.into() }
    }

    pub fn invalid(field: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        DriverError::InvalidInput { field: field.to_owned(), value: value.into(), reason: reason.into() }
    }

    pub fn probe_failed(target: impl Into<String>, reason: impl Into<String>) -> Self {
        DriverError::ProbeFailed { target: target.into(), reason: reason.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DriverError::Io { path: path.into(), source }
    }
}

/// A hypervisor backend that answers domain capabilities queries.
///
/// Implementations must be cheap to construct and safe to share between threads; a query
/// may block (it can start processes), so async callers run it on a blocking thread.
pub trait DomainCapsDriver: Send + Sync {
    /// Short stable name used with `--driver` (`qemu`, `xen`, `lxc`, `test`, a plugin's name).
    fn name(&self) -> &str;

    /// Whether this driver can answer on this host. Must not probe expensively.
    fn availability(&self) -> Availability;

    /// Answer one query. Elements the driver cannot establish are left out of the document.
    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError>;

    /// The answer to one query as `render` writes it (`form` names what `render` writes,
    /// e.g. `xml`: distinct renderers have distinct names). By default `render` of
    /// [`Self::domain_capabilities`]; a driver may keep rendered answers (the qemu driver's
    /// probe cache does) as long as it returns what that would.
    fn domain_capabilities_rendered(
        &self,
        query: &Query,
        form: &str,
        render: &dyn Fn(&DomainCapabilities) -> Vec<u8>,
    ) -> Result<Vec<u8>, DriverError> {
        let _ = form;
        Ok(render(&self.domain_capabilities(query)?))
    }

    /// Facts about how this driver answers on this host, as `(name, value)` pairs for
    /// listings (`capsd drivers`): for example the libvirt release whose documents it
    /// reproduces and where that was read. None by default.
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl fmt::Debug for dyn DomainCapsDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainCapsDriver").field("name", &self.name()).finish()
    }
}
