//! Host facts that decide parts of the document and that QEMU cannot tell: read from the
//! real host by `HostFacts::read` (probe infrastructure), stored in recordings, replayed
//! in tests. Fields are added as derivation needs them; each one documents its source.

use serde::{Deserialize, Serialize};

/// Facts about the host, as read at probe time. Every field is `Option`/empty when the fact
/// could not be established: derivation then omits what depends on it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// Host architecture (`uname -m`, normalized to libvirt's arch names).
    pub host_arch: String,
    /// `/dev/kvm` exists and can be opened read-write by the probing user.
    pub kvm_usable: bool,
    /// Remaining facts are defined by the probe infrastructure (issue 3).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}
