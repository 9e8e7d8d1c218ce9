//! Documents in the forms older (and other-driver) libvirt versions write: each is read,
//! checked for what the model says, and written again byte for byte, directly and through
//! the JSON form. The documents are small ones written for these tests; each mirrors one
//! feature of an older output format.

use capsd_core::{json, xml, DomainCapabilities, Fallback, Support, Usable};

/// Read `doc`, check XML -> model -> XML and XML -> JSON -> model -> XML are byte-identical,
/// and hand back the model.
fn round_trip(doc: &str) -> DomainCapabilities {
    let caps = xml::from_xml(doc).unwrap_or_else(|e| panic!("not read: {e}\n{doc}"));
    let out = xml::to_xml(&caps);
    assert_eq!(out, doc, "XML round trip differs");
    let j = json::to_json(&caps);
    let back = json::from_json(&j).unwrap_or_else(|e| panic!("JSON not read back: {e}\n{j}"));
    assert_eq!(back, caps, "JSON round trip changes the model");
    assert_eq!(xml::to_xml(&back), doc, "XML -> JSON -> XML differs");
    caps
}

fn json_of(caps: &DomainCapabilities) -> serde_json::Value {
    serde_json::from_str(&json::to_json(caps)).expect("the JSON form is JSON")
}

/// libvirt before 8.9.0 wrote custom CPU models without the `vendor` attribute (and before
/// 7.1.0 without `deprecated`).
#[test]
fn custom_models_without_vendor() {
    let doc = "<domainCapabilities>
  <path>/opt/emu/bin/qemu-system-x86_64</path>
  <domain>kvm</domain>
  <machine>pc-i440fx-3.1</machine>
  <arch>x86_64</arch>
  <cpu>
    <mode name='custom' supported='yes'>
      <model usable='yes'>qemu64</model>
      <model usable='no'>EPYC</model>
      <model usable='unknown'>core2duo</model>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let custom = caps.cpu.as_ref().and_then(|c| c.custom.as_ref()).expect("custom mode");
    let names: Vec<(&str, Usable)> = custom.models.iter().map(|m| (m.name.as_str(), m.usable)).collect();
    assert_eq!(names, [("qemu64", Usable::Yes), ("EPYC", Usable::No), ("core2duo", Usable::Unknown)]);
    assert!(custom.models.iter().all(|m| m.vendor.is_none() && m.deprecated.is_none()));
    // No statement about the vendor: the JSON form leaves the field out too.
    let j = json_of(&caps);
    let models = &j["cpu"]["custom"]["models"];
    assert!(models.as_array().is_some_and(|a| a.iter().all(|m| m.get("vendor").is_none())), "{j}");
}

/// libvirt 7.1.0 to 8.8.0: `deprecated` written, `vendor` not yet; mixed with a later-style
/// model in the same list, every attribute is kept as given.
#[test]
fn custom_models_with_deprecated_but_no_vendor() {
    let doc = "<domainCapabilities>
  <domain>qemu</domain>
  <arch>x86_64</arch>
  <cpu>
    <mode name='custom' supported='yes'>
      <model usable='no' deprecated='yes'>Icelake-Client</model>
      <model usable='yes' deprecated='no'>Nehalem</model>
      <model usable='yes' deprecated='no' vendor='Intel'>Westmere</model>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let models = &caps.cpu.as_ref().and_then(|c| c.custom.as_ref()).expect("custom mode").models;
    assert_eq!(models[0].deprecated, Some(true));
    assert_eq!(models[0].vendor, None);
    assert_eq!(models[1].deprecated, Some(false));
    assert_eq!(models[1].vendor, None);
    assert_eq!(models[2].vendor.as_deref(), Some("Intel"));
}

/// An empty `vendor` attribute is a statement (an empty string), not an absent attribute.
#[test]
fn empty_vendor_attribute_is_kept() {
    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>ppc64</arch>
  <cpu>
    <mode name='custom' supported='yes'>
      <model usable='unknown' vendor=''>POWER10</model>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let m = &caps.cpu.as_ref().and_then(|c| c.custom.as_ref()).expect("custom mode").models[0];
    assert_eq!(m.vendor.as_deref(), Some(""));
}

/// libvirt 6.x and 7.x reported SEV with `<cbitpos>` and `<reducedPhysBits>` only.
#[test]
fn sev_without_guest_limits() {
    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <features>
    <vmcoreinfo supported='yes'/>
    <genid supported='yes'/>
    <sev supported='yes'>
      <cbitpos>51</cbitpos>
      <reducedPhysBits>5</reducedPhysBits>
    </sev>
  </features>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let sev = caps.features.as_ref().and_then(|f| f.sev.as_ref()).expect("sev");
    assert_eq!(sev.supported, Support::Yes);
    let p = sev.params.as_ref().expect("SEV parameters");
    assert_eq!((p.cbitpos, p.reduced_phys_bits), (51, 5));
    assert_eq!((p.max_guests, p.max_es_guests), (None, None));
    assert_eq!(sev.cpu0_id, None);
    let j = json_of(&caps);
    let params = &j["features"]["sev"]["params"];
    assert!(params.get("maxGuests").is_none() && params.get("maxESGuests").is_none(), "{j}");
}

/// The later form with all four parameters still reads and writes the same.
#[test]
fn sev_with_guest_limits() {
    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <features>
    <sev supported='yes'>
      <cbitpos>47</cbitpos>
      <reducedPhysBits>1</reducedPhysBits>
      <maxGuests>15</maxGuests>
      <maxESGuests>0</maxESGuests>
    </sev>
  </features>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let p = caps.features.as_ref().and_then(|f| f.sev.as_ref()).and_then(|s| s.params.as_ref()).expect("params");
    assert_eq!((p.max_guests, p.max_es_guests), (Some(15), Some(0)));
}

/// What no libvirt version writes stays an error: guest limits without the C-bit position,
/// or half of the C-bit pair.
#[test]
fn incomplete_sev_parameters_are_rejected() {
    for (body, missing) in [
        ("<maxGuests>3</maxGuests>\n<maxESGuests>1</maxESGuests>", "<cbitpos>, <reducedPhysBits>"),
        ("<cbitpos>47</cbitpos>\n<maxGuests>3</maxGuests>", "<reducedPhysBits>"),
        ("<reducedPhysBits>1</reducedPhysBits>", "<cbitpos>"),
    ] {
        let doc = format!(
            "<domainCapabilities>\n<domain>kvm</domain>\n<arch>x86_64</arch>\n<features>\n<sev supported='yes'>\n{body}\n</sev>\n</features>\n</domainCapabilities>\n"
        );
        let e = xml::from_xml(&doc).expect_err(body);
        assert_eq!(e.path, "/domainCapabilities/features/sev", "{e}");
        assert!(e.message.contains(&format!("missing {missing}")), "{e}");
    }
}

/// Older CPU sections: no `maximum` mode (before 7.x), `host-passthrough` without the
/// migratable enum, host-model with a named model and required features (s390x style).
#[test]
fn cpu_with_three_modes_and_no_enums() {
    let doc = "<domainCapabilities>
  <path>/usr/local/bin/qemu-system-s390x</path>
  <domain>kvm</domain>
  <machine>s390-ccw-virtio-4.0</machine>
  <arch>s390x</arch>
  <vcpu max='240'/>
  <iothreads supported='yes'/>
  <cpu>
    <mode name='host-passthrough' supported='yes'/>
    <mode name='host-model' supported='yes'>
      <model fallback='forbid'>gen15a-base</model>
      <feature policy='require' name='vxpdeh'/>
      <feature policy='disable' name='bpb'/>
    </mode>
    <mode name='custom' supported='yes'>
      <model usable='yes'>z13-base</model>
      <model usable='no'>gen15a</model>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let cpu = caps.cpu.as_ref().expect("cpu");
    assert!(cpu.maximum.is_none());
    assert!(cpu.host_passthrough.as_ref().is_some_and(|m| m.enums.is_empty()));
    let hm = cpu.host_model.as_ref().expect("host-model");
    let model = hm.model.as_ref().expect("model");
    assert_eq!((model.name.as_str(), model.fallback), ("gen15a-base", Some(Fallback::Forbid)));
    assert_eq!(hm.vendor, None);
    assert_eq!(hm.features.len(), 2);
}

/// Host-model modes as several versions wrote them: unsupported (no children), and a model
/// without a `fallback` attribute followed by the vendor.
#[test]
fn host_model_variants() {
    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>aarch64</arch>
  <cpu>
    <mode name='host-passthrough' supported='yes'/>
    <mode name='host-model' supported='no'/>
    <mode name='custom' supported='yes'>
      <model usable='unknown'>cortex-a76</model>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let hm = caps.cpu.as_ref().and_then(|c| c.host_model.as_ref()).expect("host-model");
    assert_eq!(hm.supported, Support::No);
    assert!(hm.model.is_none() && hm.features.is_empty());

    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <cpu>
    <mode name='host-model' supported='yes'>
      <model>Opteron_G4</model>
      <vendor>AMD</vendor>
    </mode>
  </cpu>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let hm = caps.cpu.as_ref().and_then(|c| c.host_model.as_ref()).expect("host-model");
    let model = hm.model.as_ref().expect("model");
    assert_eq!(model.fallback, None);
    assert_eq!(hm.vendor.as_deref(), Some("AMD"));
}

/// The first documents libvirt wrote (1.2 era) had no `<cpu>`, `<features>`,
/// `<memoryBacking>`, `<iothreads>` or firmware enum: a loader with paths and two enums and
/// a few devices.
#[test]
fn early_document_without_later_sections() {
    let doc = "<domainCapabilities>
  <path>/usr/bin/kvm</path>
  <domain>kvm</domain>
  <machine>pc-i440fx-2.1</machine>
  <arch>x86_64</arch>
  <vcpu max='255'/>
  <os supported='yes'>
    <loader supported='yes'>
      <value>/srv/fw/OVMF_CODE.fd</value>
      <enum name='type'>
        <value>rom</value>
        <value>pflash</value>
      </enum>
      <enum name='readonly'>
        <value>yes</value>
        <value>no</value>
      </enum>
    </loader>
  </os>
  <devices>
    <disk supported='yes'>
      <enum name='diskDevice'>
        <value>disk</value>
        <value>cdrom</value>
      </enum>
    </disk>
    <hostdev supported='no'/>
  </devices>
</domainCapabilities>
";
    let caps = round_trip(doc);
    assert!(caps.cpu.is_none() && caps.features.is_none() && caps.memory_backing.is_none());
    assert!(caps.iothreads.is_none());
    let os = caps.os.as_ref().expect("os");
    assert!(os.enums.is_empty() && os.firmware_features.is_none() && os.varstore.is_none());
    let loader = os.loader.as_ref().expect("loader");
    assert_eq!(loader.values, ["/srv/fw/OVMF_CODE.fd"]);
    assert_eq!(loader.enums.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["type", "readonly"]);
}

/// The features section of a 5.x/6.x-era aarch64 output: GIC with its version enum and a
/// few flags, nothing after `<sev>`.
#[test]
fn short_features_section() {
    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>aarch64</arch>
  <features>
    <gic supported='yes'>
      <enum name='version'>
        <value>2</value>
        <value>3</value>
      </enum>
    </gic>
    <vmcoreinfo supported='yes'/>
    <genid supported='no'/>
    <sev supported='no'/>
  </features>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let f = caps.features.as_ref().expect("features");
    assert!(f.backing_store_input.is_none() && f.backup.is_none() && f.hyperv.is_none() && f.sgx.is_none());
    assert_eq!(f.gic.as_ref().and_then(|g| g.enums.first()).map(|e| e.values.len()), Some(2));
    assert!(f.sev.as_ref().is_some_and(|s| s.supported == Support::No && s.params.is_none()));
}

/// Hyper-V as reported without an enum (unsupported) and the enum-only form that came
/// before `<defaults>`.
#[test]
fn hyperv_without_enum_or_defaults() {
    let doc = "<domainCapabilities>
  <domain>qemu</domain>
  <arch>x86_64</arch>
  <features>
    <hyperv supported='no'/>
  </features>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let h = caps.features.as_ref().and_then(|f| f.hyperv.as_ref()).expect("hyperv");
    assert!(h.enums.is_empty() && h.defaults.is_none());

    let doc = "<domainCapabilities>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <features>
    <hyperv supported='yes'>
      <enum name='features'>
        <value>relaxed</value>
        <value>vapic</value>
      </enum>
    </hyperv>
  </features>
</domainCapabilities>
";
    let caps = round_trip(doc);
    let h = caps.features.as_ref().and_then(|f| f.hyperv.as_ref()).expect("hyperv");
    assert!(h.defaults.is_none());
    assert_eq!(h.enums[0].values, ["relaxed", "vapic"]);
}
