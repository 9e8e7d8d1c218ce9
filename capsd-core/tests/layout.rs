//! The writer's layout for the parts no reference document shows (elements libvirt formats
//! but the fixtures do not contain, and values libvirt never produces), pinned as golden
//! text. `UPDATE_EXPECT=1 cargo test -p capsd-core --test layout` rewrites the snapshots.

use capsd_core::xml::{from_xml, to_xml};
use capsd_core::*;
use expect_test::expect;

#[test]
fn empty_containers_and_unusual_values() {
    let caps = DomainCapabilities {
        path: Some("/usr/bin/a&b".into()),
        domain: "kvm".into(),
        machine: Some(String::new()),
        arch: "x86_64".into(),
        cpu: Some(Cpu {
            host_model: Some(HostModel {
                supported: Support::Yes,
                model: Some(CpuModelName { name: String::new(), fallback: Some(Fallback::Allow), vendor_id: None }),
                vendor: None,
                maxphysaddr: Some(MaxPhysAddr { mode: MaxPhysAddrMode::Emulate, bits: Some(42), limit: None }),
                features: vec![],
            }),
            ..Cpu::default()
        }),
        devices: Some(Devices::default()),
        features: Some(Features {
            sgx: Some(Sgx {
                supported: Support::Yes,
                info: Some(SgxInfo { flc: true, sgx1: true, sgx2: false, section_size_kib: 1, sections: Some(vec![]) }),
            }),
            cca: Some(Cca {
                supported: Support::Yes,
                measurement_log: Some(true),
                measurement_algo: Some(vec!["sha256".into(), "sha512".into()]),
                personalization_value: Some("p\r'v".into()),
            }),
            hyperv: Some(Hyperv { supported: Support::Yes, enums: vec![], defaults: Some(HypervDefaults::default()) }),
            ..Features::default()
        }),
        ..DomainCapabilities::default()
    };
    let text = to_xml(&caps);
    expect![[r#"
        <domainCapabilities>
          <path>/usr/bin/a&amp;b</path>
          <domain>kvm</domain>
          <machine></machine>
          <arch>x86_64</arch>
          <cpu>
            <mode name='host-model' supported='yes'>
              <model fallback='allow'/>
              <maxphysaddr mode='emulate' bits='42'/>
            </mode>
          </cpu>
          <devices>
          </devices>
          <features>
            <sgx supported='yes'>
              <flc>yes</flc>
              <sgx1>yes</sgx1>
              <sgx2>no</sgx2>
              <section_size unit='KiB'>1</section_size>
              <sections/>
            </sgx>
            <cca supported='yes' measurement-log='yes'>
              <enum name='measurement-algo'>
                <value>sha256</value>
                <value>sha512</value>
              </enum>
              <personalization-value>p&#13;&apos;v</personalization-value>
            </cca>
            <hyperv supported='yes'>
              <defaults/>
            </hyperv>
          </features>
        </domainCapabilities>
    "#]]
    .assert_eq(&text);
    assert_eq!(from_xml(&text).unwrap(), caps);
}

#[test]
fn minimal_document() {
    let caps = DomainCapabilities { domain: "qemu".into(), arch: "riscv64".into(), ..DomainCapabilities::default() };
    expect![[r#"
        <domainCapabilities>
          <domain>qemu</domain>
          <arch>riscv64</arch>
        </domainCapabilities>
    "#]]
    .assert_eq(&to_xml(&caps));
}

#[test]
fn supported_no_with_children_keeps_them() {
    // libvirt never writes children under supported='no'; the model can hold them and the
    // writer keeps them rather than lose data.
    let caps = DomainCapabilities {
        domain: "kvm".into(),
        arch: "x86_64".into(),
        memory_backing: Some(EnumElement::unsupported().with_enum("sourceType", ["file"])),
        ..DomainCapabilities::default()
    };
    let text = to_xml(&caps);
    expect![[r#"
        <domainCapabilities>
          <domain>kvm</domain>
          <arch>x86_64</arch>
          <memoryBacking supported='no'>
            <enum name='sourceType'>
              <value>file</value>
            </enum>
          </memoryBacking>
        </domainCapabilities>
    "#]]
    .assert_eq(&text);
    assert_eq!(from_xml(&text).unwrap(), caps);
}

#[test]
fn characters_xml_cannot_carry_are_dropped_so_the_output_reads_back() {
    // Control characters and the non-characters U+FFFE/U+FFFF (which the reader refuses,
    // raw or as references) are dropped from text and attribute values alike.
    let caps = DomainCapabilities {
        domain: "k\u{1}v\u{FFFF}m".into(),
        arch: "x86\u{FFFE}_64".into(),
        memory_backing: Some(EnumElement::new(Support::Yes).with_enum("source\u{FFFF}Type", ["fi\u{7}le\u{FFFE}"])),
        ..DomainCapabilities::default()
    };
    let text = to_xml(&caps);
    let back = from_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.domain, "kvm");
    assert_eq!(back.arch, "x86_64");
    let mb = back.memory_backing.unwrap();
    assert_eq!((mb.enums[0].name.as_str(), mb.enums[0].values.as_slice()), ("sourceType", &["file".to_owned()][..]));
}
