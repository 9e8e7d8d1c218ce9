//! Kubernetes node labels in KubeVirt's conventions and placement traits in OpenStack Nova's,
//! derived from one capabilities document. An omitted element produces no label and no
//! trait: there are no "false" outputs. See the crate documentation for the mapping and the
//! sources of each naming convention.

use std::collections::BTreeMap;

use capsd_core::{DomainCapabilities, EnumElement, EnumList, FeaturePolicy, Support, Usable};

/// KubeVirt's label prefixes (kubevirt.io/api core/v1 `types.go`).
pub mod kubevirt {
    pub const CPU_FEATURE: &str = "cpu-feature.node.kubevirt.io/";
    pub const CPU_MODEL: &str = "cpu-model.node.kubevirt.io/";
    pub const CPU_MODEL_MIGRATION: &str = "cpu-model-migration.node.kubevirt.io/";
    pub const HYPERV: &str = "hyperv.node.kubevirt.io/";
    pub const CPU_VENDOR: &str = "cpu-vendor.node.kubevirt.io/";
    pub const HOST_MODEL_CPU: &str = "host-model-cpu.node.kubevirt.io/";
    pub const HOST_MODEL_REQUIRED_FEATURES: &str = "host-model-required-features.node.kubevirt.io/";
    pub const SEV: &str = "kubevirt.io/sev";
    pub const SEV_ES: &str = "kubevirt.io/sev-es";
    /// KubeVirt's default `obsoleteCPUModels` (virt-handler node-labeller util): never
    /// labelled as models (and the host-model is then not labelled for migration).
    pub const DEFAULT_OBSOLETE_CPU_MODELS: [&str; 34] = [
        "486",
        "486-v1",
        "pentium",
        "pentium-v1",
        "pentium2",
        "pentium2-v1",
        "pentium3",
        "pentium3-v1",
        "pentiumpro",
        "pentiumpro-v1",
        "coreduo",
        "coreduo-v1",
        "n270",
        "n270-v1",
        "core2duo",
        "core2duo-v1",
        "Conroe",
        "Conroe-v1",
        "athlon",
        "athlon-v1",
        "phenom",
        "phenom-v1",
        "qemu64",
        "qemu64-v1",
        "qemu32",
        "qemu32-v1",
        "kvm64",
        "kvm64-v1",
        "kvm32",
        "kvm32-v1",
        "Opteron_G1",
        "Opteron_G1-v1",
        "Opteron_G2",
        "Opteron_G2-v1",
    ];
    /// libvirt's Hyper-V enlightenment names (domcaps `<hyperv><enum name='features'>`) and
    /// the label KubeVirt gives the same KVM capability (kvm-caps-info-plugin_amd64.go).
    pub const HYPERV_NAMES: [(&str, &str); 9] = [
        ("vpindex", "vpindex"),
        ("runtime", "runtime"),
        ("synic", "synic"),
        ("stimer", "synictimer"),
        ("reset", "reset"),
        ("frequencies", "frequencies"),
        ("reenlightenment", "reenlightenment"),
        ("tlbflush", "tlbflush"),
        ("ipi", "ipi"),
    ];
}

/// Node labels, sorted by key. Values are `"true"`, except the SEV labels, which KubeVirt
/// sets with an empty value.
pub fn kubevirt_labels(caps: &DomainCapabilities) -> BTreeMap<String, String> {
    use kubevirt::*;
    let mut l = BTreeMap::new();
    let mut put = |k: String, v: &str| {
        l.insert(k, v.to_owned());
    };
    let obsolete = |m: &str| DEFAULT_OBSOLETE_CPU_MODELS.contains(&m);
    if let Some(cpu) = &caps.cpu {
        if let Some(hm) = cpu.host_model.as_ref().filter(|h| h.supported.is_yes()) {
            if let Some(m) = &hm.model {
                put(format!("{HOST_MODEL_CPU}{}", m.name), "true");
                if !obsolete(&m.name) {
                    put(format!("{CPU_MODEL_MIGRATION}{}", m.name), "true");
                }
            }
            if let Some(v) = &hm.vendor {
                put(format!("{CPU_VENDOR}{v}"), "true");
            }
            for f in hm.features.iter().filter(|f| f.policy == FeaturePolicy::Require) {
                put(format!("{HOST_MODEL_REQUIRED_FEATURES}{}", f.name), "true");
                put(format!("{CPU_FEATURE}{}", f.name), "true");
            }
        }
        if let Some(custom) = cpu.custom.as_ref().filter(|c| c.supported.is_yes()) {
            for m in custom.models.iter().filter(|m| m.usable == Usable::Yes && !obsolete(&m.name)) {
                put(format!("{CPU_MODEL}{}", m.name), "true");
                put(format!("{CPU_MODEL_MIGRATION}{}", m.name), "true");
            }
        }
    }
    if let Some(f) = &caps.features {
        if let Some(sev) = f.sev.as_ref().filter(|s| s.supported.is_yes()) {
            put(SEV.to_owned(), "");
            if sev.params.as_ref().is_some_and(|p| p.max_es_guests.is_some_and(|n| n > 0)) {
                put(SEV_ES.to_owned(), "");
            }
        }
        if let Some(hv) = f.hyperv.as_ref().filter(|h| h.supported.is_yes()) {
            put(format!("{HYPERV}base"), "true");
            if let Some(vals) = hv.enums.enum_values("features") {
                for (libvirt, label) in HYPERV_NAMES {
                    if vals.iter().any(|v| v == libvirt) {
                        put(format!("{HYPERV}{label}"), "true");
                    }
                }
            }
        }
    }
    l
}

/// The values of enum `name` of a supported element; empty when omitted or unsupported.
fn listed<'a>(e: Option<&'a EnumElement>, name: &str) -> &'a [String] {
    match e {
        Some(e) if e.supported == Support::Yes => e.enums.enum_values(name).unwrap_or(&[]),
        _ => &[],
    }
}

/// os-traits names Nova's libvirt driver can report for storage buses (from
/// `blockinfo.SUPPORTED_DEVICE_BUSES`) and video models (`fields.VideoModel.ALL`).
const NOVA_BUSES: [&str; 9] = ["virtio", "scsi", "ide", "usb", "fdc", "sata", "lxc", "xen", "uml"];
const NOVA_VIDEO: [&str; 9] = ["cirrus", "qxl", "vga", "vmvga", "xen", "virtio", "gop", "none", "bochs"];

/// Placement traits, sorted. Only traits that are true are listed.
pub fn nova_traits(caps: &DomainCapabilities) -> Vec<String> {
    let mut t: Vec<String> = Vec::new();
    let trait_name = |prefix: &str, v: &str| format!("{prefix}{}", v.replace('-', "_").to_uppercase());
    let devices = caps.devices.as_ref();
    for bus in listed(devices.and_then(|d| d.disk.as_ref()), "bus") {
        if NOVA_BUSES.contains(&bus.as_str()) {
            t.push(trait_name("COMPUTE_STORAGE_BUS_", bus));
        }
    }
    for model in listed(devices.and_then(|d| d.video.as_ref()), "modelType") {
        if NOVA_VIDEO.contains(&model.as_str()) {
            t.push(trait_name("COMPUTE_GRAPHICS_MODEL_", model));
        }
    }
    let tpm = devices.and_then(|d| d.tpm.as_ref());
    let models = listed(tpm, "model");
    if models.iter().any(|m| m == "tpm-tis") {
        t.push("COMPUTE_SECURITY_TPM_TIS".into());
    }
    if models.iter().any(|m| m == "tpm-crb") {
        t.push("COMPUTE_SECURITY_TPM_CRB".into());
    }
    // Versions need the emulator backend (swtpm); without a backendVersion enum (libvirt
    // before 8.6) Nova assumes both, but that is a guess we do not make.
    if listed(tpm, "backendModel").iter().any(|b| b == "emulator") {
        for (v, name) in [("1.2", "COMPUTE_SECURITY_TPM_1_2"), ("2.0", "COMPUTE_SECURITY_TPM_2_0")] {
            if listed(tpm, "backendVersion").iter().any(|x| x == v) {
                t.push(name.into());
            }
        }
    }
    if let Some(loader) = caps.os.as_ref().filter(|o| o.supported.is_yes()).and_then(|o| o.loader.as_ref()) {
        if loader.supported.is_yes() && loader.enums.enum_values("secure").is_some_and(|v| v.iter().any(|x| x == "yes"))
        {
            t.push("COMPUTE_SECURITY_UEFI_SECURE_BOOT".into());
        }
    }
    if caps.features.as_ref().and_then(|f| f.sev.as_ref()).is_some_and(|s| s.supported.is_yes()) {
        t.push("HW_CPU_X86_AMD_SEV".into());
    }
    t.sort();
    t.dedup();
    t
}
