//! The neutral domain capabilities model: one Rust type per element of libvirt's
//! `domaincaps.rng` (newest schema, with `cputypes.rng` and `basictypes.rng`).
//!
//! # Omission semantics
//! Every optional element is an `Option`. `None` means *no statement* (the element is
//! absent from the document); `Some(x)` with `x.supported == Support::No` means *definitely
//! not*; `Support::Yes` means *definitely yes*. Enums are kept as an ordered list of
//! [`Enum`] values: an enum that is absent from the list makes no statement, an enum that is
//! present with no values (`<enum name='capsType'/>`) states that no value is supported.
//! Order of elements inside lists is preserved exactly as given.
//!
//! # Older libvirt versions
//! The model also holds what older libvirt versions wrote, where that is less than the
//! newest schema requires: custom CPU models without `vendor` (before 8.9.0, see
//! [`CustomModel::vendor`]) and SEV parameters without `maxGuests`/`maxESGuests` (see
//! [`SevParams`]); fewer CPU modes, and sections such as `<memoryBacking>` or `<features>`
//! left out, are plain `None`s. Such documents read and write back byte for byte.
//!
//! The model knows nothing about any hypervisor: drivers convert their native data into it.

use serde::{Deserialize, Serialize};

/// `supported='yes'|'no'`: the two definite answers. "No statement" is the absence of the
/// whole element, expressed with `Option` around the element's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    Yes,
    No,
}

impl Support {
    /// `Yes` for `true`, `No` for `false`.
    pub fn from_bool(b: bool) -> Self {
        if b {
            Support::Yes
        } else {
            Support::No
        }
    }
    pub fn is_yes(self) -> bool {
        self == Support::Yes
    }
    /// The attribute value as libvirt writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Support::Yes => "yes",
            Support::No => "no",
        }
    }
}

/// `<enum name='...'><value>...</value>...</enum>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enum {
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl Enum {
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Enum { name: name.into(), values: values.into_iter().map(Into::into).collect() }
    }
}

/// Lookup helpers over an ordered list of enums.
pub trait EnumList {
    /// The enum with this name, `None` when the list makes no statement about it.
    fn get_enum(&self, name: &str) -> Option<&Enum>;
    /// The values of the named enum, `None` when it is absent.
    fn enum_values(&self, name: &str) -> Option<&[String]> {
        self.get_enum(name).map(|e| e.values.as_slice())
    }
}

impl EnumList for [Enum] {
    fn get_enum(&self, name: &str) -> Option<&Enum> {
        self.iter().find(|e| e.name == name)
    }
}

impl EnumList for Vec<Enum> {
    fn get_enum(&self, name: &str) -> Option<&Enum> {
        self.as_slice().get_enum(name)
    }
}

/// An element made of `supported` and a list of enums: `memoryBacking`, every device
/// element, `gic`, `launchSecurity`, `firmwareFeatures`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumElement {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<Enum>,
}

impl EnumElement {
    pub fn new(supported: Support) -> Self {
        EnumElement { supported, enums: Vec::new() }
    }
    /// `supported='no'` with no enums.
    pub fn unsupported() -> Self {
        Self::new(Support::No)
    }
    /// Append an enum (builder style).
    pub fn with_enum(mut self, name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.enums.push(Enum::new(name, values));
        self
    }
}

/// An element that only carries `supported`: `iothreads`, `varstore`, `vmcoreinfo`,
/// `genid`, `backingStoreInput`, `backup`, `async-teardown`, `s390-pv`, `ps2`, `tdx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub supported: Support,
}

impl Flag {
    pub fn new(supported: Support) -> Self {
        Flag { supported }
    }
    pub fn yes() -> Self {
        Flag { supported: Support::Yes }
    }
    pub fn no() -> Self {
        Flag { supported: Support::No }
    }
}

/// The whole `<domainCapabilities>` document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct DomainCapabilities {
    /// `<path>`: the emulator binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `<domain>`: the virt type (`kvm`, `qemu`, `xen`, `bhyve`, `lxc`, ...).
    pub domain: String,
    /// `<machine>`: the canonical machine type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// `<arch>`: the guest architecture.
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<Vcpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iothreads: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Os>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_backing: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Devices>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
}

/// `<vcpu max='N'/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vcpu {
    pub max: u32,
}

/// `<os>`: firmware selection (`enum name='firmware'`), firmware features, loader, varstore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Os {
    pub supported: Support,
    /// Usually the single enum `firmware`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<Enum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_features: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varstore: Option<Flag>,
}

/// `<loader>`: firmware image paths (`<value>`) and enums `type`, `readonly`, `secure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loader {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<Enum>,
}

/// `<cpu>`: the four CPU modes, in libvirt's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// `<mode name='host-passthrough'>` with enum `hostPassthroughMigratable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_passthrough: Option<CpuModeEnums>,
    /// `<mode name='maximum'>` with enum `maximumMigratable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<CpuModeEnums>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_model: Option<HostModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomModels>,
}

impl Cpu {
    /// All four modes present and `supported='no'`: what a driver states when it knows the
    /// guest CPU cannot be chosen at all (libvirt's libxl and bhyve drivers, empty caps).
    pub fn unsupported() -> Self {
        Cpu {
            host_passthrough: Some(CpuModeEnums::unsupported()),
            maximum: Some(CpuModeEnums::unsupported()),
            host_model: Some(HostModel::unsupported()),
            custom: Some(CustomModels::unsupported()),
        }
    }
}

/// A CPU mode described by `supported` and enums (host-passthrough, maximum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModeEnums {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<Enum>,
}

impl CpuModeEnums {
    /// `supported='no'` with no enums.
    pub fn unsupported() -> Self {
        CpuModeEnums { supported: Support::No, enums: Vec::new() }
    }
}

/// `<mode name='host-model'>`: the CPU model a guest gets for `host-model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HostModel {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModelName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxphysaddr: Option<MaxPhysAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<CpuFeature>,
}

impl HostModel {
    /// `supported='no'` with nothing else.
    pub fn unsupported() -> Self {
        HostModel { supported: Support::No, model: None, vendor: None, maxphysaddr: None, features: Vec::new() }
    }
}

/// `<model fallback='allow|forbid' vendor_id='...'>NAME</model>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct CpuModelName {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    Allow,
    Forbid,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Allow => "allow",
            Fallback::Forbid => "forbid",
        }
    }
}

/// `<maxphysaddr mode='emulate|passthrough' bits='N' limit='N'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPhysAddr {
    pub mode: MaxPhysAddrMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxPhysAddrMode {
    Emulate,
    Passthrough,
}

impl MaxPhysAddrMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MaxPhysAddrMode::Emulate => "emulate",
            MaxPhysAddrMode::Passthrough => "passthrough",
        }
    }
}

/// `<feature policy='...' name='...'/>` inside host-model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeature {
    pub policy: FeaturePolicy,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeaturePolicy {
    Force,
    Require,
    Optional,
    Disable,
    Forbid,
}

impl FeaturePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FeaturePolicy::Force => "force",
            FeaturePolicy::Require => "require",
            FeaturePolicy::Optional => "optional",
            FeaturePolicy::Disable => "disable",
            FeaturePolicy::Forbid => "forbid",
        }
    }
}

/// `<mode name='custom'>`: the named CPU models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomModels {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<CustomModel>,
}

impl CustomModels {
    /// `supported='no'` with no models.
    pub fn unsupported() -> Self {
        CustomModels { supported: Support::No, models: Vec::new() }
    }
}

/// One `<model usable=... deprecated=... vendor=... canonical=...>NAME</model>`, with the
/// `<blockers>` element that follows it in the document, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomModel {
    pub name: String,
    pub usable: Usable,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// `vendor` attribute (libvirt writes it since 8.9.0; `None` for older documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blockers: Option<Blockers>,
}

/// `usable='yes'|'no'|'unknown'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Usable {
    Yes,
    No,
    Unknown,
}

impl Usable {
    pub fn as_str(self) -> &'static str {
        match self {
            Usable::Yes => "yes",
            Usable::No => "no",
            Usable::Unknown => "unknown",
        }
    }
}

/// `<blockers model='NAME'><feature name='...'/>...</blockers>`: the features that keep a
/// model from being usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blockers {
    pub model: String,
    pub features: Vec<String>,
}

/// `<devices>`: one optional [`EnumElement`] per device kind, in libvirt's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostdev: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirdev: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<EnumElement>,
}

impl Devices {
    /// The device element names, in document order, with accessors. Used by generic code
    /// (writer, reader, diff, baseline) so the list exists once.
    pub const NAMES: [&'static str; 13] = [
        "disk",
        "graphics",
        "video",
        "hostdev",
        "rng",
        "filesystem",
        "tpm",
        "redirdev",
        "channel",
        "crypto",
        "interface",
        "panic",
        "console",
    ];

    /// The device element with this XML name.
    pub fn get(&self, name: &str) -> Option<&EnumElement> {
        self.slot(name).and_then(|s| s.as_ref())
    }

    /// Mutable access to the slot of the device element with this XML name; `None` for an
    /// unknown name.
    pub fn slot_mut(&mut self, name: &str) -> Option<&mut Option<EnumElement>> {
        Some(match name {
            "disk" => &mut self.disk,
            "graphics" => &mut self.graphics,
            "video" => &mut self.video,
            "hostdev" => &mut self.hostdev,
            "rng" => &mut self.rng,
            "filesystem" => &mut self.filesystem,
            "tpm" => &mut self.tpm,
            "redirdev" => &mut self.redirdev,
            "channel" => &mut self.channel,
            "crypto" => &mut self.crypto,
            "interface" => &mut self.interface,
            "panic" => &mut self.panic,
            "console" => &mut self.console,
            _ => return None,
        })
    }

    fn slot(&self, name: &str) -> Option<&Option<EnumElement>> {
        Some(match name {
            "disk" => &self.disk,
            "graphics" => &self.graphics,
            "video" => &self.video,
            "hostdev" => &self.hostdev,
            "rng" => &self.rng,
            "filesystem" => &self.filesystem,
            "tpm" => &self.tpm,
            "redirdev" => &self.redirdev,
            "channel" => &self.channel,
            "crypto" => &self.crypto,
            "interface" => &self.interface,
            "panic" => &self.panic,
            "console" => &self.console,
            _ => return None,
        })
    }

    /// Present device elements with their names, in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &EnumElement)> {
        Self::NAMES.into_iter().filter_map(move |n| self.get(n).map(|e| (n, e)))
    }
}

/// `<features>`, in libvirt's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// `<gic>` with enum `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gic: Option<EnumElement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmcoreinfo: Option<Flag>,
    /// `<genid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genid: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_store_input: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Flag>,
    /// `<async-teardown>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_teardown: Option<Flag>,
    /// `<s390-pv>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s390_pv: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ps2: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sev: Option<Sev>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgx: Option<Sgx>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cca: Option<Cca>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<Hyperv>,
    /// `<launchSecurity>` with enum `sectype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_security: Option<EnumElement>,
}

impl Features {
    /// `gic`, `vmcoreinfo`, `genid`, `sev` and `sgx` present and `supported='no'`, nothing
    /// else: what libvirt's libxl and bhyve drivers state (their common formatter writes
    /// these five even when the driver fills none of them).
    pub fn unsupported() -> Self {
        Features {
            gic: Some(EnumElement::unsupported()),
            vmcoreinfo: Some(Flag::no()),
            genid: Some(Flag::no()),
            sev: Some(Sev::unsupported()),
            sgx: Some(Sgx::unsupported()),
            ..Features::default()
        }
    }
}

/// `<sev>`: AMD Secure Encrypted Virtualization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Sev {
    pub supported: Support,
    /// `cbitpos` and `reducedPhysBits`, with `maxGuests` and `maxESGuests` where the
    /// document has them; `None` when none of them is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<SevParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu0_id: Option<String>,
}

impl Sev {
    /// `supported='no'` with no details.
    pub fn unsupported() -> Self {
        Sev { supported: Support::No, params: None, cpu0_id: None }
    }
}

/// The SEV parameters. `cbitpos` and `reducedPhysBits` come together (every libvirt version
/// that reports SEV details writes both); `maxGuests` and `maxESGuests` are optional because
/// older libvirt versions (7.x and before) did not write them (`None` = element absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct SevParams {
    pub cbitpos: u32,
    pub reduced_phys_bits: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guests: Option<u32>,
    #[serde(default, rename = "maxESGuests", skip_serializing_if = "Option::is_none")]
    pub max_es_guests: Option<u32>,
}

/// `<sgx>`: Intel Software Guard Extensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sgx {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<SgxInfo>,
}

impl Sgx {
    /// `supported='no'` with no details.
    pub fn unsupported() -> Self {
        Sgx { supported: Support::No, info: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct SgxInfo {
    pub flc: bool,
    pub sgx1: bool,
    pub sgx2: bool,
    /// `<section_size unit='KiB'>`.
    pub section_size_kib: u64,
    /// `<sections>`: `None` when the element is absent, `Some(vec![])` for `<sections/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<SgxSection>>,
}

/// `<section node='N' size='N' unit='KiB'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct SgxSection {
    pub node: u32,
    pub size_kib: u64,
}

/// `<cca>`: Arm Confidential Compute Architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Cca {
    pub supported: Support,
    /// `measurement-log` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_log: Option<bool>,
    /// `<enum name='measurement-algo'>` values; `None` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_algo: Option<Vec<String>>,
    /// `<personalization-value>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalization_value: Option<String>,
}

/// `<hyperv>`: Hyper-V enlightenments (enum `features`) and their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperv {
    pub supported: Support,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<Enum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<HypervDefaults>,
}

/// `<defaults>` inside `<hyperv>`; each child is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stimer_direct: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlbflush_direct: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlbflush_extended: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
}
