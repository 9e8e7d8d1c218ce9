//! The writer: the model as libvirt formats it, byte for byte.
//!
//! Layout rules (observed in libvirt's output and its formatter):
//! - two spaces of indentation per level, one element per line, `\n` after every line;
//! - attributes single-quoted, in libvirt's order (`name` before `supported` on CPU modes,
//!   `usable`, `deprecated`, `vendor`, `canonical` on custom CPU models, ...);
//! - an element without children is written `<x .../>`, otherwise open/close; the
//!   containers `<cpu>`, `<devices>` and `<features>` are always written open/close;
//! - `&`, `<`, `>`, `'`, `"` escaped as entities in text and attributes; control characters
//!   other than tab, newline and carriage return are dropped (libvirt drops them too, and
//!   XML 1.0 cannot carry them), and so are the non-characters U+FFFE and U+FFFF (which the
//!   reader refuses); a carriage return, and a tab or newline inside an attribute
//!   value, is written as a character reference so that it reads back unchanged (libvirt
//!   writes them raw; no libvirt document contains them).

use std::fmt::Write as _;

use crate::model::*;

/// Attributes of one element: name and value, `None` values are left out.
type Attrs<'a> = [(&'a str, Option<&'a str>)];

pub(super) fn to_xml(caps: &DomainCapabilities) -> String {
    let mut w = Writer { out: String::with_capacity(4096), indent: 0 };
    w.document(caps);
    w.out
}

struct Writer {
    out: String,
    indent: usize,
}

/// Append `s` escaped as libvirt does: the five XML special characters as entities, control
/// characters XML cannot carry dropped (and U+FFFE/U+FFFF, which XML cannot carry either and
/// the reader refuses). Beyond libvirt, a carriage return (and, in attribute
/// values, a tab or newline) is written as a character reference, since an XML parser would
/// otherwise turn it into a newline (a space) and the value would not read back the same.
fn escape_into(out: &mut String, s: &str, attr: bool) {
    // 0xEF leads the UTF-8 form of U+FFFE/U+FFFF (and of other characters, checked below).
    let needs = s.bytes().any(|b| matches!(b, b'&' | b'<' | b'>' | b'\'' | b'"' | 0xEF) || b < 0x20);
    if !needs {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attr => out.push_str("&#10;"),
            '\t' if attr => out.push_str("&#9;"),
            c if c.is_ascii() && is_dropped(c as u8) => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// Control characters XML 1.0 cannot carry; libvirt silently drops them.
fn is_dropped(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl Writer {
    fn pad(&mut self) {
        for _ in 0..self.indent {
            self.out.push(' ');
        }
    }

    /// `<name a='v' ...` without the closing bracket.
    fn tag(&mut self, name: &str, attrs: &Attrs<'_>) {
        self.pad();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            if let Some(v) = v {
                self.out.push(' ');
                self.out.push_str(k);
                self.out.push_str("='");
                escape_into(&mut self.out, v, true);
                self.out.push('\'');
            }
        }
    }

    /// `<name .../>`.
    fn empty(&mut self, name: &str, attrs: &Attrs<'_>) {
        self.tag(name, attrs);
        self.out.push_str("/>\n");
    }

    /// `<name ...>` and one level deeper.
    fn start(&mut self, name: &str, attrs: &Attrs<'_>) {
        self.tag(name, attrs);
        self.out.push_str(">\n");
        self.indent += 2;
    }

    /// One level up and `</name>`.
    fn end(&mut self, name: &str) {
        self.indent -= 2;
        self.pad();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name ...>text</name>` (also for empty text, as libvirt's printf-style output does).
    fn leaf(&mut self, name: &str, attrs: &Attrs<'_>, text: &str) {
        self.tag(name, attrs);
        self.out.push('>');
        escape_into(&mut self.out, text, false);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name>N</name>` for a number.
    fn leaf_num(&mut self, name: &str, attrs: &Attrs<'_>, n: u64) {
        self.tag(name, attrs);
        let _ = write!(self.out, ">{n}</{name}>");
        self.out.push('\n');
    }

    /// An element whose children are written by `body`; `<name .../>` when `has_children`
    /// is false.
    fn element(&mut self, name: &str, attrs: &Attrs<'_>, has_children: bool, body: impl FnOnce(&mut Self)) {
        if has_children {
            self.start(name, attrs);
            body(self);
            self.end(name);
        } else {
            self.empty(name, attrs);
        }
    }

    fn enum_(&mut self, e: &Enum) {
        self.element("enum", &[("name", Some(&e.name))], !e.values.is_empty(), |w| {
            for v in &e.values {
                w.leaf("value", &[], v);
            }
        });
    }

    fn enums(&mut self, enums: &[Enum]) {
        for e in enums {
            self.enum_(e);
        }
    }

    fn flag(&mut self, name: &str, f: &Flag) {
        self.empty(name, &[("supported", Some(f.supported.as_str()))]);
    }

    fn enum_element(&mut self, name: &str, e: &EnumElement) {
        self.element(name, &[("supported", Some(e.supported.as_str()))], !e.enums.is_empty(), |w| w.enums(&e.enums));
    }

    fn document(&mut self, caps: &DomainCapabilities) {
        self.start("domainCapabilities", &[]);
        if let Some(p) = &caps.path {
            self.leaf("path", &[], p);
        }
        self.leaf("domain", &[], &caps.domain);
        if let Some(m) = &caps.machine {
            self.leaf("machine", &[], m);
        }
        self.leaf("arch", &[], &caps.arch);
        if let Some(v) = &caps.vcpu {
            let max = v.max.to_string();
            self.empty("vcpu", &[("max", Some(&max))]);
        }
        if let Some(f) = &caps.iothreads {
            self.flag("iothreads", f);
        }
        if let Some(os) = &caps.os {
            self.os(os);
        }
        if let Some(cpu) = &caps.cpu {
            self.cpu(cpu);
        }
        if let Some(mb) = &caps.memory_backing {
            self.enum_element("memoryBacking", mb);
        }
        if let Some(d) = &caps.devices {
            self.start("devices", &[]);
            for (name, e) in d.iter() {
                self.enum_element(name, e);
            }
            self.end("devices");
        }
        if let Some(f) = &caps.features {
            self.features(f);
        }
        self.end("domainCapabilities");
    }

    fn os(&mut self, os: &Os) {
        let has =
            !os.enums.is_empty() || os.firmware_features.is_some() || os.loader.is_some() || os.varstore.is_some();
        self.element("os", &[("supported", Some(os.supported.as_str()))], has, |w| {
            w.enums(&os.enums);
            if let Some(ff) = &os.firmware_features {
                w.enum_element("firmwareFeatures", ff);
            }
            if let Some(l) = &os.loader {
                let has = !l.values.is_empty() || !l.enums.is_empty();
                w.element("loader", &[("supported", Some(l.supported.as_str()))], has, |w| {
                    for v in &l.values {
                        w.leaf("value", &[], v);
                    }
                    w.enums(&l.enums);
                });
            }
            if let Some(v) = &os.varstore {
                w.flag("varstore", v);
            }
        });
    }

    fn cpu(&mut self, cpu: &Cpu) {
        self.start("cpu", &[]);
        if let Some(m) = &cpu.host_passthrough {
            self.mode_enums("host-passthrough", m);
        }
        if let Some(m) = &cpu.maximum {
            self.mode_enums("maximum", m);
        }
        if let Some(hm) = &cpu.host_model {
            self.host_model(hm);
        }
        if let Some(c) = &cpu.custom {
            self.custom(c);
        }
        self.end("cpu");
    }

    fn mode_enums(&mut self, name: &str, m: &CpuModeEnums) {
        let attrs = [("name", Some(name)), ("supported", Some(m.supported.as_str()))];
        self.element("mode", &attrs, !m.enums.is_empty(), |w| w.enums(&m.enums));
    }

    fn host_model(&mut self, hm: &HostModel) {
        let attrs = [("name", Some("host-model")), ("supported", Some(hm.supported.as_str()))];
        let has = hm.model.is_some() || hm.vendor.is_some() || hm.maxphysaddr.is_some() || !hm.features.is_empty();
        self.element("mode", &attrs, has, |w| {
            if let Some(m) = &hm.model {
                let attrs = [("fallback", m.fallback.map(Fallback::as_str)), ("vendor_id", m.vendor_id.as_deref())];
                // A host-model CPU without a name is written `<model .../>` (cpu_conf style).
                if m.name.is_empty() {
                    w.empty("model", &attrs);
                } else {
                    w.leaf("model", &attrs, &m.name);
                }
            }
            if let Some(v) = &hm.vendor {
                w.leaf("vendor", &[], v);
            }
            if let Some(m) = &hm.maxphysaddr {
                let bits = m.bits.map(|b| b.to_string());
                let limit = m.limit.map(|b| b.to_string());
                let attrs = [("mode", Some(m.mode.as_str())), ("bits", bits.as_deref()), ("limit", limit.as_deref())];
                w.empty("maxphysaddr", &attrs);
            }
            for f in &hm.features {
                w.empty("feature", &[("policy", Some(f.policy.as_str())), ("name", Some(&f.name))]);
            }
        });
    }

    fn custom(&mut self, c: &CustomModels) {
        let attrs = [("name", Some("custom")), ("supported", Some(c.supported.as_str()))];
        self.element("mode", &attrs, !c.models.is_empty(), |w| {
            for m in &c.models {
                let attrs = [
                    ("usable", Some(m.usable.as_str())),
                    ("deprecated", m.deprecated.map(yes_no)),
                    ("vendor", m.vendor.as_deref()),
                    ("canonical", m.canonical.as_deref()),
                ];
                w.leaf("model", &attrs, &m.name);
                if let Some(b) = &m.blockers {
                    w.element("blockers", &[("model", Some(&b.model))], !b.features.is_empty(), |w| {
                        for f in &b.features {
                            w.empty("feature", &[("name", Some(f))]);
                        }
                    });
                }
            }
        });
    }

    fn features(&mut self, f: &Features) {
        self.start("features", &[]);
        if let Some(g) = &f.gic {
            self.enum_element("gic", g);
        }
        let flags = [
            ("vmcoreinfo", &f.vmcoreinfo),
            ("genid", &f.genid),
            ("backingStoreInput", &f.backing_store_input),
            ("backup", &f.backup),
            ("async-teardown", &f.async_teardown),
            ("s390-pv", &f.s390_pv),
            ("ps2", &f.ps2),
            ("tdx", &f.tdx),
        ];
        for (name, flag) in flags {
            if let Some(flag) = flag {
                self.flag(name, flag);
            }
        }
        if let Some(s) = &f.sev {
            self.sev(s);
        }
        if let Some(s) = &f.sgx {
            self.sgx(s);
        }
        if let Some(c) = &f.cca {
            self.cca(c);
        }
        if let Some(h) = &f.hyperv {
            self.hyperv(h);
        }
        if let Some(ls) = &f.launch_security {
            self.enum_element("launchSecurity", ls);
        }
        self.end("features");
    }

    fn sev(&mut self, s: &Sev) {
        let has = s.params.is_some() || s.cpu0_id.is_some();
        self.element("sev", &[("supported", Some(s.supported.as_str()))], has, |w| {
            if let Some(p) = &s.params {
                w.leaf_num("cbitpos", &[], p.cbitpos.into());
                w.leaf_num("reducedPhysBits", &[], p.reduced_phys_bits.into());
                if let Some(n) = p.max_guests {
                    w.leaf_num("maxGuests", &[], n.into());
                }
                if let Some(n) = p.max_es_guests {
                    w.leaf_num("maxESGuests", &[], n.into());
                }
            }
            if let Some(id) = &s.cpu0_id {
                w.leaf("cpu0Id", &[], id);
            }
        });
    }

    fn sgx(&mut self, s: &Sgx) {
        self.element("sgx", &[("supported", Some(s.supported.as_str()))], s.info.is_some(), |w| {
            let Some(info) = &s.info else { return };
            w.leaf("flc", &[], yes_no(info.flc));
            w.leaf("sgx1", &[], yes_no(info.sgx1));
            w.leaf("sgx2", &[], yes_no(info.sgx2));
            w.leaf_num("section_size", &[("unit", Some("KiB"))], info.section_size_kib);
            if let Some(sections) = &info.sections {
                w.element("sections", &[], !sections.is_empty(), |w| {
                    for s in sections {
                        let node = s.node.to_string();
                        let size = s.size_kib.to_string();
                        w.empty("section", &[("node", Some(&node)), ("size", Some(&size)), ("unit", Some("KiB"))]);
                    }
                });
            }
        });
    }

    fn cca(&mut self, c: &Cca) {
        let attrs = [("supported", Some(c.supported.as_str())), ("measurement-log", c.measurement_log.map(yes_no))];
        let has = c.measurement_algo.is_some() || c.personalization_value.is_some();
        self.element("cca", &attrs, has, |w| {
            if let Some(algos) = &c.measurement_algo {
                w.enum_(&Enum { name: "measurement-algo".to_owned(), values: algos.clone() });
            }
            if let Some(p) = &c.personalization_value {
                w.leaf("personalization-value", &[], p);
            }
        });
    }

    fn hyperv(&mut self, h: &Hyperv) {
        let has = !h.enums.is_empty() || h.defaults.is_some();
        self.element("hyperv", &[("supported", Some(h.supported.as_str()))], has, |w| {
            w.enums(&h.enums);
            let Some(d) = &h.defaults else { return };
            let has = d.spinlocks.is_some()
                || d.stimer_direct.is_some()
                || d.tlbflush_direct.is_some()
                || d.tlbflush_extended.is_some()
                || d.vendor_id.is_some();
            w.element("defaults", &[], has, |w| {
                if let Some(n) = d.spinlocks {
                    w.leaf_num("spinlocks", &[], n.into());
                }
                if let Some(b) = d.stimer_direct {
                    w.leaf("stimer_direct", &[], on_off(b));
                }
                if let Some(b) = d.tlbflush_direct {
                    w.leaf("tlbflush_direct", &[], on_off(b));
                }
                if let Some(b) = d.tlbflush_extended {
                    w.leaf("tlbflush_extended", &[], on_off(b));
                }
                if let Some(v) = &d.vendor_id {
                    w.leaf("vendor_id", &[], v);
                }
            });
        });
    }
}
