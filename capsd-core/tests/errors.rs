//! The reader's errors: each bad input is rejected with the 1-based line, the element path
//! and what was wrong; nothing panics. Also what it accepts beyond libvirt's exact layout.

use capsd_core::xml::{from_xml, to_xml, ParseError, MAX_ATTRIBUTES, MAX_ELEMENTS, MAX_INPUT_BYTES};

const BASE: &str = "<domainCapabilities>
  <path>/usr/bin/qemu-system-x86_64</path>
  <domain>kvm</domain>
  <arch>x86_64</arch>
  <vcpu max='4'/>
  <devices>
    <disk supported='yes'>
      <enum name='bus'>
        <value>virtio</value>
      </enum>
    </disk>
  </devices>
</domainCapabilities>
";

/// BASE with `from` replaced by `to` (which must occur exactly once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(BASE.matches(from).count(), 1, "{from:?} must occur once in BASE");
    BASE.replacen(from, to, 1)
}

#[track_caller]
fn fails(input: &str, line: usize, path: &str, needle: &str) -> ParseError {
    let e = from_xml(input).expect_err("input must be rejected");
    assert_eq!((e.line, e.path.as_str()), (line, path), "wrong location in: {e}");
    assert!(e.message.contains(needle), "message {:?} does not mention {needle:?}", e.message);
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("line {line}: ")), "display form {shown:?}");
    e
}

#[test]
fn base_document_reads_and_writes_back() {
    let caps = from_xml(BASE).unwrap();
    assert_eq!(caps.domain, "kvm");
    assert_eq!(to_xml(&caps), BASE);
}

#[test]
fn wrong_supported_value() {
    let e = fails(
        &edit("<disk supported='yes'>", "<disk supported='maybe'>"),
        7,
        "/domainCapabilities/devices/disk",
        "'supported'",
    );
    assert!(e.message.contains("maybe"));
}

#[test]
fn non_numeric_vcpu_max() {
    fails(&edit("max='4'", "max='lots'"), 5, "/domainCapabilities/vcpu", "'max'");
    fails(&edit("max='4'", "max='-4'"), 5, "/domainCapabilities/vcpu", "unsigned");
    fails(&edit("max='4'", "max='+4'"), 5, "/domainCapabilities/vcpu", "unsigned");
    fails(&edit("max='4'", "max='4294967296'"), 5, "/domainCapabilities/vcpu", "no larger than");
    fails(&edit("max='4'", "max=''"), 5, "/domainCapabilities/vcpu", "unsigned");
}

#[test]
fn missing_attribute() {
    fails(
        &edit("<disk supported='yes'>", "<disk>"),
        7,
        "/domainCapabilities/devices/disk",
        "missing attribute 'supported'",
    );
    fails(&edit("<enum name='bus'>", "<enum>"), 8, "/domainCapabilities/devices/disk/enum", "missing attribute 'name'");
}

#[test]
fn unknown_element() {
    fails(
        &edit("</enum>\n", "</enum>\n      <bogus/>\n"),
        11,
        "/domainCapabilities/devices/disk/bogus",
        "unknown element <bogus>",
    );
    fails(&edit("<arch>", "<archx>x</archx>\n  <arch>"), 4, "/domainCapabilities/archx", "unknown element");
    fails(
        &edit("<value>virtio</value>", "<value>virtio<b/></value>"),
        9,
        "/domainCapabilities/devices/disk/enum/value/b",
        "only text",
    );
}

#[test]
fn unknown_attribute() {
    fails(
        &edit("<enum name='bus'>", "<enum name='bus' extra='1'>"),
        8,
        "/domainCapabilities/devices/disk/enum",
        "unknown attribute 'extra'",
    );
    fails(
        &edit("<domainCapabilities>", "<domainCapabilities xmlns='urn:x'>"),
        1,
        "/domainCapabilities",
        "unknown attribute 'xmlns'",
    );
}

#[test]
fn duplicate_elements() {
    fails(
        &edit("<arch>x86_64</arch>\n", "<arch>x86_64</arch>\n  <domain>qemu</domain>\n"),
        5,
        "/domainCapabilities/domain",
        "duplicate <domain>",
    );
    fails(
        &edit("</disk>\n", "</disk>\n    <disk supported='no'/>\n"),
        12,
        "/domainCapabilities/devices/disk",
        "duplicate <disk>",
    );
    fails(
        &edit("</enum>\n", "</enum>\n      <enum name='bus'/>\n"),
        11,
        "/domainCapabilities/devices/disk/enum",
        "duplicate <enum name='bus'>",
    );
    fails(&edit("<vcpu max='4'/>", "<vcpu max='4' max='5'/>"), 5, "/domainCapabilities", "duplicated attribute");
}

#[test]
fn missing_required_elements() {
    fails(&edit("  <domain>kvm</domain>\n", ""), 1, "/domainCapabilities", "missing <domain>");
    fails(&edit("  <arch>x86_64</arch>\n", ""), 1, "/domainCapabilities", "missing <arch>");
}

#[test]
fn wrong_root() {
    fails("<capabilities/>", 1, "/capabilities", "expected <domainCapabilities>");
}

#[test]
fn malformed_xml() {
    fails(
        &edit("<value>virtio</value>", "<value>virtio</valu>"),
        9,
        "/domainCapabilities/devices/disk/enum/value",
        "malformed XML",
    );
    fails(&edit("<vcpu max='4'/>", "<vcpu max=4/>"), 5, "/domainCapabilities", "malformed attribute");
    fails(&edit("<vcpu max='4'/>", "<vcpu max='<4'/>"), 5, "/domainCapabilities", "'<' is not allowed");
    fails(&edit("virtio", "vir&tio"), 9, "/domainCapabilities/devices/disk/enum/value", "entity");
    fails(&edit("  </devices>\n", ""), 12, "/domainCapabilities/devices", "malformed XML");
    fails(&edit("<devices>", "<devices>stray text"), 6, "/domainCapabilities/devices", "unexpected text");
    fails(&format!("{BASE}<extra/>\n"), 14, "", "after the root element");
    fails(&format!("{BASE}trailing\n"), 14, "", "text outside the root element");
}

#[test]
fn truncated_documents() {
    let cut = &BASE[..BASE.find("</enum>").unwrap()];
    fails(cut, 10, "/domainCapabilities/devices/disk/enum", "truncated");
    fails("", 1, "", "empty document");
    fails("   \n", 2, "", "empty document");
    // Every prefix of the document is rejected, none panics.
    for end in 0..BASE.trim_end().len() {
        if BASE.is_char_boundary(end) {
            assert!(from_xml(&BASE[..end]).is_err(), "prefix of {end} bytes accepted");
        }
    }
}

#[test]
fn dtd_and_entities_are_rejected() {
    let dtd = format!(
        "<?xml version='1.0'?>\n<!DOCTYPE domainCapabilities [\n<!ENTITY x 'kvm'>\n]>\n{}",
        edit(">kvm<", ">&x;<")
    );
    fails(&dtd, 2, "", "DTD");
    let laughs =
        "<!DOCTYPE l [<!ENTITY a 'lol'><!ENTITY b '&a;&a;&a;&a;&a;'>]>\n<domainCapabilities>&b;</domainCapabilities>";
    fails(laughs, 1, "", "DTD");
    // An entity that is not one of the five predefined ones is never expanded.
    fails(&edit(">kvm<", ">&x;<"), 3, "/domainCapabilities/domain", "entity");
    fails(&edit(">kvm<", ">&xxe SYSTEM;<"), 3, "/domainCapabilities/domain", "entity");
    // A declaration outside a DTD is not XML at all.
    fails(&edit("  <arch>", "  <!ENTITY x 'y'>\n  <arch>"), 4, "/domainCapabilities", "malformed XML");
    fails(&edit("  <arch>", "  <?php echo 1 ?>\n  <arch>"), 4, "/domainCapabilities", "processing instruction");
}

#[test]
fn predefined_entities_and_char_refs_are_expanded() {
    let caps = from_xml(&edit(">virtio<", ">&#118;&#x69;rt&amp;&lt;&gt;&apos;&quot;<")).unwrap();
    let disk = caps.devices.unwrap().disk.unwrap();
    assert_eq!(disk.enums[0].values, ["virt&<>'\""]);
    fails(&edit(">virtio<", ">&#1;<"), 9, "/domainCapabilities/devices/disk/enum/value", "U+0001");
    fails(&edit("virtio", "vir\u{7}tio"), 9, "", "character U+0007");
    fails(&edit("virtio", "vir\u{FFFE}tio"), 9, "", "character U+FFFE");
    fails(&edit("name='bus'", "name='b&#xFFFF;us'"), 8, "/domainCapabilities/devices/disk", "U+FFFF");
    // Characters that merely share the UTF-8 lead byte of U+FFFE are fine.
    let caps = from_xml(&edit("virtio", "\u{F900}\u{FF21}")).unwrap();
    assert_eq!(caps.devices.unwrap().disk.unwrap().enums[0].values, ["\u{F900}\u{FF21}"]);
}

#[test]
fn oversized_input_is_rejected_up_front() {
    let big = "<".repeat(MAX_INPUT_BYTES + 1);
    let e = from_xml(&big).unwrap_err();
    assert!(e.message.contains("larger than the 16 MiB limit"), "{e}");
    // 100 MB of an otherwise well-formed document: refused by size, not parsed.
    let mut huge = String::with_capacity(100 * 1024 * 1024 + BASE.len());
    huge.push_str("<domainCapabilities>\n");
    while huge.len() < 100 * 1024 * 1024 {
        huge.push_str("  <!-- padding padding padding padding padding padding padding padding -->\n");
    }
    huge.push_str(&BASE["<domainCapabilities>\n".len()..]);
    let e = from_xml(&huge).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.message.contains(&huge.len().to_string()) && e.message.contains("16 MiB"), "{e}");
    let e = capsd_core::json::from_json(&huge).unwrap_err();
    assert!(e.message.contains("16 MiB"), "{e}");
    // Just under the limit is parsed normally.
    let mut fits = String::from("<domainCapabilities>\n");
    while fits.len() < MAX_INPUT_BYTES - 1000 {
        fits.push_str("  <!-- padding padding padding padding padding padding padding padding -->\n");
    }
    fits.push_str(&BASE["<domainCapabilities>\n".len()..]);
    assert_eq!(from_xml(&fits).unwrap(), from_xml(BASE).unwrap());
}

#[test]
fn deep_nesting_is_rejected_without_overflow() {
    let depth = 100_000;
    let doc = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
    fails(&doc, 1, "/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a", "nested deeper");
}

#[test]
fn schema_interleave_order_and_quoting_variations_are_accepted() {
    // Children of <domainCapabilities> in another order, double quotes, an XML declaration,
    // a comment, `<x></x>` for `<x/>`: same model, written back in libvirt's layout.
    let varied = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a comment -->\n<domainCapabilities>\n<devices><disk supported=\"yes\"><enum name=\"bus\"><value>virtio</value></enum></disk></devices>\n<vcpu max=\"4\"></vcpu><arch>x86_64</arch><domain>kvm</domain>\n<path>/usr/bin/qemu-system-x86_64</path></domainCapabilities>";
    let caps = from_xml(varied).unwrap();
    assert_eq!(to_xml(&caps), BASE);
}

#[test]
fn cpu_and_feature_rules() {
    let doc = |body: &str| {
        format!("<domainCapabilities>\n<domain>kvm</domain>\n<arch>x86_64</arch>\n{body}\n</domainCapabilities>\n")
    };
    fails(
        &doc("<cpu>\n<mode name='custom' supported='yes'>\n<blockers model='a'><feature name='x'/></blockers>\n</mode>\n</cpu>"),
        6,
        "/domainCapabilities/cpu/mode/blockers",
        "must follow",
    );
    fails(
        &doc("<cpu>\n<mode name='custom' supported='yes'>\n<model usable='no' vendor='v'>a</model>\n<blockers model='b'><feature name='x'/></blockers>\n</mode>\n</cpu>"),
        7,
        "/domainCapabilities/cpu/mode/blockers",
        "does not follow its <model>",
    );
    fails(&doc("<cpu>\n<mode name='fancy' supported='yes'/>\n</cpu>"), 5, "/domainCapabilities/cpu/mode", "'fancy'");
    fails(
        &doc("<cpu>\n<mode name='maximum' supported='yes'/>\n<mode name='maximum' supported='no'/>\n</cpu>"),
        6,
        "/domainCapabilities/cpu/mode",
        "duplicate <mode>",
    );
    fails(
        &doc("<cpu>\n<mode name='custom' supported='yes'>\n<model usable='perhaps' vendor='v'>a</model>\n</mode>\n</cpu>"),
        6,
        "/domainCapabilities/cpu/mode/model",
        "'usable'",
    );
    fails(
        &doc("<cpu>\n<mode name='custom' supported='yes'>\n<model vendor='Intel'>a</model>\n</mode>\n</cpu>"),
        6,
        "/domainCapabilities/cpu/mode/model",
        "missing attribute 'usable'",
    );
    fails(
        &doc("<features>\n<sev supported='yes'>\n<cbitpos>51</cbitpos>\n</sev>\n</features>"),
        5,
        "/domainCapabilities/features/sev",
        "incomplete SEV",
    );
    fails(
        &doc("<features>\n<sgx supported='yes'>\n<flc>maybe</flc>\n</sgx>\n</features>"),
        6,
        "/domainCapabilities/features/sgx/flc",
        "'yes' or 'no'",
    );
    fails(
        &doc("<features>\n<hyperv supported='yes'>\n<defaults><stimer_direct>yes</stimer_direct></defaults>\n</hyperv>\n</features>"),
        6,
        "/domainCapabilities/features/hyperv/defaults/stimer_direct",
        "'on' or 'off'",
    );
    fails(
        &doc("<features>\n<cca supported='yes'>\n<enum name='other'/>\n</cca>\n</features>"),
        6,
        "/domainCapabilities/features/cca/enum",
        "measurement-algo",
    );
    fails(
        &doc("<features>\n<tdx supported='yes'>\n<x/>\n</tdx>\n</features>"),
        6,
        "/domainCapabilities/features/tdx/x",
        "has no children",
    );
}

#[test]
fn garbage_never_panics() {
    for input in [
        "<",
        ">",
        "&",
        "<<>>",
        "<a",
        "<a b",
        "<a b=",
        "<a b='",
        "</a>",
        "<!--",
        "<![CDATA[",
        "<?xml",
        "\u{feff}<x/>",
        "<a/><b/>",
        "]]>",
        "<domainCapabilities/>",
    ] {
        assert!(from_xml(input).is_err(), "{input:?} accepted");
    }
}

#[test]
fn display_leaves_out_unknown_parts() {
    let e = from_xml("").unwrap_err();
    assert_eq!(e.to_string(), "line 1: empty document: no root element");
    let e = from_xml(&" ".repeat(MAX_INPUT_BYTES + 1)).unwrap_err();
    assert!(e.to_string().starts_with("input is 16777217 bytes"), "{e}");
    let e = from_xml(&edit("max='4'", "max='x'")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 5: /domainCapabilities/vcpu: invalid value 'x' for attribute 'max' (expected an unsigned decimal integer)"
    );
}

#[test]
fn end_of_line_and_attribute_normalisation_as_in_libxml2() {
    // CRLF line ends read like LF; the document is written back with LF.
    let crlf = BASE.replace('\n', "\r\n");
    assert_eq!(to_xml(&from_xml(&crlf).unwrap()), BASE);
    // In text, a CR (alone or before LF) is a newline; &#13; stays a CR.
    let caps = from_xml(&edit(">virtio<", ">a\r\nb\rc&#13;<")).unwrap();
    assert_eq!(caps.devices.unwrap().disk.unwrap().enums[0].values, ["a\nb\nc\r"]);
    // In attributes, literal tab/newline/CR become spaces; character references do not.
    let caps = from_xml(&edit("name='bus'", "name='b\tu\r\ns&#10;'")).unwrap();
    assert_eq!(caps.devices.unwrap().disk.unwrap().enums[0].name, "b u s\n");
    // CDATA and comments inside text.
    let caps = from_xml(&edit(">virtio<", "><![CDATA[<vir>]]><!-- x -->tio<")).unwrap();
    assert_eq!(caps.devices.unwrap().disk.unwrap().enums[0].values, ["<vir>tio"]);
}

#[test]
fn element_count_is_bounded() {
    // Within the size limit, but far more elements than any real document.
    let many = edit("<value>virtio</value>", &"<value/>".repeat(MAX_ELEMENTS + 1));
    assert!(many.len() < MAX_INPUT_BYTES);
    fails(&many, 9, "/domainCapabilities/devices/disk/enum", "more than 250000 elements");
    // A large but plausible document is fine.
    let fine = edit("<value>virtio</value>", &"<value>x</value>".repeat(10_000));
    assert_eq!(from_xml(&fine).unwrap().devices.unwrap().disk.unwrap().enums[0].values.len(), 10_000);
}

#[test]
fn json_documents_the_xml_reader_would_refuse_are_refused_naming_the_value() {
    use capsd_core::json::from_json;
    // Two enums of one name, and blockers naming another model: the types allow both, but
    // written as XML they would not read back.
    let dup = r#"{"domain":"kvm","arch":"x86_64","devices":{"disk":{"supported":"yes",
        "enums":[{"name":"bus","values":[]},{"name":"bus","values":["sata"]}]}}}"#;
    let e = from_json(dup).unwrap_err();
    assert_eq!(e.to_string(), r#"devices.disk: duplicate enum "bus""#);
    let dup = r#"{"domain":"kvm","arch":"x86_64","features":{"hyperv":{"supported":"yes",
        "enums":[{"name":"features","values":[]},{"name":"features","values":[]}]}}}"#;
    assert_eq!(from_json(dup).unwrap_err().to_string(), r#"features.hyperv: duplicate enum "features""#);
    let blockers = r#"{"domain":"kvm","arch":"x86_64","cpu":{"custom":{"supported":"yes","models":[
        {"name":"Haswell","usable":"no","blockers":{"model":"Skylake","features":["hle"]}}]}}}"#;
    assert_eq!(
        from_json(blockers).unwrap_err().to_string(),
        r#"cpu.custom.models: the blockers of model "Haswell" name model "Skylake""#
    );
    // The same documents made consistent read, and their XML reads back.
    let ok = blockers.replace("Skylake", "Haswell");
    let caps = from_json(&ok).unwrap();
    assert_eq!(from_xml(&to_xml(&caps)).unwrap(), caps);
}

#[test]
fn attributes_per_element_are_bounded_and_many_enums_are_checked_in_one_pass() {
    // quick-xml's duplicate-attribute check is quadratic: 30,000 attributes took 10 s.
    let attrs: String = (0..MAX_ATTRIBUTES + 1).map(|i| format!(" a{i}=''")).collect();
    fails(
        &edit("<disk supported='yes'>", &format!("<disk{attrs}>")),
        7,
        "/domainCapabilities/devices",
        "more than 256 attributes in <disk>",
    );
    // 60,000 enums in one element (1.2 MB) took 17 s when each was compared with all before it.
    let many: String = (0..60_000).map(|i| format!("<enum name='e{i}'/>")).collect();
    let caps = from_xml(&edit("<enum name='bus'>", &format!("{many}<enum name='bus'>"))).unwrap();
    assert_eq!(caps.devices.unwrap().disk.unwrap().enums.len(), 60_001);
    let dup = edit("<enum name='bus'>", &format!("{many}\n<enum name='e59999'/><enum name='bus'>"));
    fails(&dup, 9, "/domainCapabilities/devices/disk/enum", "duplicate <enum name='e59999'>");
}
