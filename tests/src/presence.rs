//! Element presence: the set of element paths a document states, computed once from the
//! model and once from its XML text, so the suite can check that an omitted element stays
//! omitted (the writer invents nothing) and a present one stays present (it drops nothing).
//!
//! Paths look like `/domainCapabilities/devices/disk/enum[bus]`: `<enum>` and `<mode>`
//! elements are qualified by their `name` attribute, the `<value>`s inside an enum are not
//! listed (the enum checks and round trips cover them).

use std::collections::BTreeSet;

use capsd_core::{DomainCapabilities, Enum};
use quick_xml::events::{BytesStart, Event};

const ROOT: &str = "/domainCapabilities";

/// The element paths the model states.
pub fn from_model(caps: &DomainCapabilities) -> BTreeSet<String> {
    let mut s = Paths(BTreeSet::new());
    s.add(ROOT);
    s.opt(ROOT, "path", caps.path.is_some());
    s.add(&format!("{ROOT}/domain"));
    s.opt(ROOT, "machine", caps.machine.is_some());
    s.add(&format!("{ROOT}/arch"));
    s.opt(ROOT, "vcpu", caps.vcpu.is_some());
    s.opt(ROOT, "iothreads", caps.iothreads.is_some());
    if let Some(os) = &caps.os {
        let p = format!("{ROOT}/os");
        s.add(&p);
        s.enums(&p, &os.enums);
        if let Some(ff) = &os.firmware_features {
            let q = format!("{p}/firmwareFeatures");
            s.add(&q);
            s.enums(&q, &ff.enums);
        }
        if let Some(l) = &os.loader {
            let q = format!("{p}/loader");
            s.add(&q);
            s.opt(&q, "value", !l.values.is_empty());
            s.enums(&q, &l.enums);
        }
        s.opt(&p, "varstore", os.varstore.is_some());
    }
    if let Some(cpu) = &caps.cpu {
        let p = format!("{ROOT}/cpu");
        s.add(&p);
        if let Some(m) = &cpu.host_passthrough {
            let q = format!("{p}/mode[host-passthrough]");
            s.add(&q);
            s.enums(&q, &m.enums);
        }
        if let Some(m) = &cpu.maximum {
            let q = format!("{p}/mode[maximum]");
            s.add(&q);
            s.enums(&q, &m.enums);
        }
        if let Some(m) = &cpu.host_model {
            let q = format!("{p}/mode[host-model]");
            s.add(&q);
            s.opt(&q, "model", m.model.is_some());
            s.opt(&q, "vendor", m.vendor.is_some());
            s.opt(&q, "maxphysaddr", m.maxphysaddr.is_some());
            s.opt(&q, "feature", !m.features.is_empty());
        }
        if let Some(c) = &cpu.custom {
            let q = format!("{p}/mode[custom]");
            s.add(&q);
            s.opt(&q, "model", !c.models.is_empty());
            for b in c.models.iter().filter_map(|m| m.blockers.as_ref()) {
                s.add(&format!("{q}/blockers"));
                s.opt(&format!("{q}/blockers"), "feature", !b.features.is_empty());
            }
        }
    }
    if let Some(mb) = &caps.memory_backing {
        let p = format!("{ROOT}/memoryBacking");
        s.add(&p);
        s.enums(&p, &mb.enums);
    }
    if let Some(devices) = &caps.devices {
        let p = format!("{ROOT}/devices");
        s.add(&p);
        for (name, e) in devices.iter() {
            let q = format!("{p}/{name}");
            s.add(&q);
            s.enums(&q, &e.enums);
        }
    }
    if let Some(f) = &caps.features {
        let p = format!("{ROOT}/features");
        s.add(&p);
        if let Some(g) = &f.gic {
            s.add(&format!("{p}/gic"));
            s.enums(&format!("{p}/gic"), &g.enums);
        }
        for (name, present) in [
            ("vmcoreinfo", f.vmcoreinfo.is_some()),
            ("genid", f.genid.is_some()),
            ("backingStoreInput", f.backing_store_input.is_some()),
            ("backup", f.backup.is_some()),
            ("async-teardown", f.async_teardown.is_some()),
            ("s390-pv", f.s390_pv.is_some()),
            ("ps2", f.ps2.is_some()),
            ("tdx", f.tdx.is_some()),
        ] {
            s.opt(&p, name, present);
        }
        if let Some(sev) = &f.sev {
            let q = format!("{p}/sev");
            s.add(&q);
            if let Some(params) = &sev.params {
                s.add(&format!("{q}/cbitpos"));
                s.add(&format!("{q}/reducedPhysBits"));
                s.opt(&q, "maxGuests", params.max_guests.is_some());
                s.opt(&q, "maxESGuests", params.max_es_guests.is_some());
            }
            s.opt(&q, "cpu0Id", sev.cpu0_id.is_some());
        }
        if let Some(sgx) = &f.sgx {
            let q = format!("{p}/sgx");
            s.add(&q);
            if let Some(info) = &sgx.info {
                for n in ["flc", "sgx1", "sgx2", "section_size"] {
                    s.add(&format!("{q}/{n}"));
                }
                if let Some(sections) = &info.sections {
                    s.add(&format!("{q}/sections"));
                    s.opt(&format!("{q}/sections"), "section", !sections.is_empty());
                }
            }
        }
        if let Some(cca) = &f.cca {
            let q = format!("{p}/cca");
            s.add(&q);
            s.opt(&q, "enum[measurement-algo]", cca.measurement_algo.is_some());
            s.opt(&q, "personalization-value", cca.personalization_value.is_some());
        }
        if let Some(h) = &f.hyperv {
            let q = format!("{p}/hyperv");
            s.add(&q);
            s.enums(&q, &h.enums);
            if let Some(d) = &h.defaults {
                let r = format!("{q}/defaults");
                s.add(&r);
                s.opt(&r, "spinlocks", d.spinlocks.is_some());
                s.opt(&r, "stimer_direct", d.stimer_direct.is_some());
                s.opt(&r, "tlbflush_direct", d.tlbflush_direct.is_some());
                s.opt(&r, "tlbflush_extended", d.tlbflush_extended.is_some());
                s.opt(&r, "vendor_id", d.vendor_id.is_some());
            }
        }
        if let Some(ls) = &f.launch_security {
            let q = format!("{p}/launchSecurity");
            s.add(&q);
            s.enums(&q, &ls.enums);
        }
    }
    s.0
}

struct Paths(BTreeSet<String>);

impl Paths {
    fn add(&mut self, p: &str) {
        self.0.insert(p.to_owned());
    }
    fn opt(&mut self, parent: &str, child: &str, present: bool) {
        if present {
            self.0.insert(format!("{parent}/{child}"));
        }
    }
    fn enums(&mut self, parent: &str, enums: &[Enum]) {
        for e in enums {
            self.0.insert(format!("{parent}/enum[{}]", e.name));
        }
    }
}

/// The element paths an XML text states. Fails on text that is not well-formed XML.
pub fn from_xml(text: &str) -> Result<BTreeSet<String>, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut out = BTreeSet::new();
    loop {
        let pos = reader.buffer_position();
        let ev = reader.read_event().map_err(|e| format!("byte {pos}: {e}"))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let seg = segment(e).map_err(|m| format!("byte {pos}: {m}"))?;
                let inside_enum = stack.last().is_some_and(|s| s.starts_with("enum["));
                let path =
                    format!("/{}", stack.iter().chain(std::iter::once(&seg)).cloned().collect::<Vec<_>>().join("/"));
                if !inside_enum {
                    out.insert(path);
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(seg);
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed element <{}>", stack.join("/")));
    }
    Ok(out)
}

fn segment(e: &BytesStart<'_>) -> Result<String, String> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    if name == "enum" || name == "mode" {
        for a in e.attributes() {
            let a = a.map_err(|err| err.to_string())?;
            if a.key.as_ref() == b"name" {
                let v = a.unescape_value().map_err(|err| err.to_string())?;
                return Ok(format!("{name}[{v}]"));
            }
        }
        return Err(format!("<{name}> without a name attribute"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsd_core::{Devices, EnumElement, Support};

    fn caps() -> DomainCapabilities {
        DomainCapabilities {
            domain: "kvm".into(),
            arch: "x86_64".into(),
            devices: Some(Devices {
                disk: Some(EnumElement::new(Support::Yes).with_enum("bus", ["virtio"])),
                hostdev: Some(EnumElement::unsupported()),
                ..Devices::default()
            }),
            ..DomainCapabilities::default()
        }
    }

    #[test]
    fn model_and_xml_agree_on_a_faithful_document() {
        let xml = "<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64</arch>\n  <devices>\n    \
                   <disk supported='yes'>\n      <enum name='bus'>\n        <value>virtio</value>\n      </enum>\n    \
                   </disk>\n    <hostdev supported='no'/>\n  </devices>\n</domainCapabilities>\n";
        assert_eq!(from_xml(xml).unwrap(), from_model(&caps()));
    }

    #[test]
    fn invented_and_dropped_elements_show() {
        // <video> invented, <hostdev> dropped.
        let xml = "<domainCapabilities><domain>kvm</domain><arch>x86_64</arch><devices>\
                   <disk supported='yes'><enum name='bus'><value>virtio</value></enum></disk>\
                   <video supported='no'/></devices></domainCapabilities>";
        let got = from_xml(xml).unwrap();
        let want = from_model(&caps());
        let invented: Vec<&String> = got.difference(&want).collect();
        let dropped: Vec<&String> = want.difference(&got).collect();
        assert_eq!(invented, ["/domainCapabilities/devices/video"]);
        assert_eq!(dropped, ["/domainCapabilities/devices/hostdev"]);
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(from_xml("<domainCapabilities><domain>").is_err());
        assert!(from_xml("<domainCapabilities><enum/></domainCapabilities>").unwrap_err().contains("without a name"));
    }
}
