//! capsd-analysis: the questions management software asks of a domain capabilities document,
//! answered once, from the [`capsd_core`] model, with its omission semantics (an omitted
//! element means "no statement", never "no"):
//!
//! - [`check`](mod@check): does a libvirt domain definition ask only for what the capabilities support?
//!   One finding per checked value: `supported`, `unsupported` or `unknown`.
//! - [`diff`](mod@diff): what one document states that another does not, fact by fact.
//! - [`baseline`](mod@baseline): the document every one of several hosts satisfies.
//! - [`labels`]: Kubernetes node labels in KubeVirt's conventions and placement traits in
//!   OpenStack Nova's.
//!
//! # Labels: mapping and sources
//!
//! The label names are those of KubeVirt's virt-handler node labeller
//! (kubevirt/kubevirt `pkg/virt-handler/node-labeller/{node_labeller.go,cpu_plugin.go,
//! kvm-caps-info-plugin_amd64.go}`, prefixes in `staging/src/kubevirt.io/api/core/v1/types.go`):
//!
//! | label | from the document | KubeVirt |
//! | --- | --- | --- |
//! | `cpu-model.node.kubevirt.io/<m>=true` and `cpu-model-migration.node.kubevirt.io/<m>=true` | `mode[@name='custom']/model[@usable='yes']`, minus KubeVirt's default obsolete models | same source; KubeVirt also drops a model whose libvirt `cpu_map` features are not all host features, which needs `cpu_map` (not in the document): capsd does not |
//! | `host-model-cpu.node.kubevirt.io/<m>=true` | `mode[@name='host-model']/model` | same |
//! | `cpu-model-migration.node.kubevirt.io/<host-model>=true` | the host-model name unless obsolete | same |
//! | `host-model-required-features.node.kubevirt.io/<f>=true` | host-model `feature[@policy='require']` | same |
//! | `cpu-feature.node.kubevirt.io/<f>=true` | host-model `feature[@policy='require']` | KubeVirt reads the expanded host-model (`virsh hypervisor-cpu-baseline --features`), a superset the document does not carry |
//! | `cpu-vendor.node.kubevirt.io/<v>=true` | host-model `<vendor>` | same |
//! | `kubevirt.io/sev=` (empty value) | `features/sev[@supported='yes']` | same |
//! | `kubevirt.io/sev-es=` (empty value) | the same, with `maxESGuests` > 0 | same |
//! | `hyperv.node.kubevirt.io/base=true` | `features/hyperv[@supported='yes']` | KVM_CAP_HYPERV |
//! | `hyperv.node.kubevirt.io/<n>=true` | hyperv enum `features` values vpindex, runtime, synic, reset, frequencies, reenlightenment, tlbflush, ipi (as is) and stimer (as `synictimer`) | KubeVirt probes /dev/kvm (KVM_CHECK_EXTENSION and the MSR list); `time` and `synic2` have no libvirt counterpart and are never produced |
//!
//! A host-model mode without `<model>` gives no host-model label; `supported='no'` or an
//! omitted element gives none of its labels.
//!
//! # Traits: mapping and sources
//!
//! The trait names are os-traits names as OpenStack Nova's libvirt driver reports them
//! (openstack/nova `nova/virt/libvirt/driver.py` `_get_storage_bus_traits`,
//! `_get_video_model_traits`, `_get_tpm_traits`, `nova/virt/libvirt/host.py`
//! `supports_secure_boot`/`supports_amd_sev`, `nova/virt/libvirt/config.py`
//! `LibvirtConfigDomainCapsOS`). Nova sets a trait false when the value is absent; capsd
//! lists only true traits:
//!
//! | trait | from the document |
//! | --- | --- |
//! | `COMPUTE_STORAGE_BUS_<BUS>` | disk enum `bus` values that Nova knows (virtio, scsi, ide, usb, fdc, sata, lxc, xen, uml) |
//! | `COMPUTE_GRAPHICS_MODEL_<MODEL>` | video enum `modelType` values in Nova's `VideoModel.ALL` (cirrus, qxl, vga, vmvga, xen, virtio, gop, none, bochs) |
//! | `COMPUTE_SECURITY_TPM_TIS` / `_CRB` | tpm enum `model` lists `tpm-tis` / `tpm-crb` |
//! | `COMPUTE_SECURITY_TPM_1_2` / `_2_0` | tpm `backendModel` lists `emulator` and `backendVersion` lists `1.2` / `2.0` (Nova assumes both without the version enum; capsd does not guess) |
//! | `COMPUTE_SECURITY_UEFI_SECURE_BOOT` | os loader enum `secure` lists `yes` |
//! | `HW_CPU_X86_AMD_SEV` | `features/sev[@supported='yes']` (Nova also checks the kvm_amd `sev` kernel parameter, outside the document) |
//!
//! Nova's other traits (NIC models, sound, vIOMMU, address space, stateless firmware,
//! CPU features via libvirt's baseline API) come from version checks or other libvirt
//! calls, not from the domain capabilities document, so capsd does not produce them; os-traits
//! has no firmware-type (BIOS/UEFI) trait.

pub mod baseline;
pub mod check;
pub mod diff;
pub mod labels;
pub mod tree;

pub use baseline::baseline;
pub use check::{check, Domain, Finding, Report, Verdict};
pub use diff::{diff, facts, Diff, Fact};
pub use labels::{kubevirt_labels, nova_traits};
pub use tree::XmlError;

/// Why an analysis could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// The domain definition is not well-formed XML (or is refused: DTD, size...).
    #[error("{0}")]
    Xml(#[from] XmlError),
    /// The domain definition is XML but not a usable domain.
    #[error("line {line}: {path}: {message}")]
    Domain { line: usize, path: String, message: String },
    /// Baseline inputs describe different domain types or arches.
    #[error("document {index} has {what} '{other}', the first has '{first}': a baseline needs one {what}")]
    Mismatch { what: &'static str, first: String, index: usize, other: String },
    /// Baseline of nothing.
    #[error("a baseline needs at least one capabilities document")]
    NoInput,
}
