//! `baseline` of sets of libvirt-formatted documents: schema-valid (xmllint against libvirt's
//! domaincaps.rng), and satisfied by each input: for any generated domain that passes
//! strictly against the baseline (every finding `supported`), no host of the set finds
//! anything `unsupported` (proptest).

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::path::PathBuf;
use std::sync::OnceLock;

use capsd_analysis::{baseline, check, AnalysisError, Domain, Verdict};
use capsd_core::{DomainCapabilities, EnumList, Usable};
use proptest::prelude::*;

fn shared() -> PathBuf {
    crate::reference::shared_dir().join("fixtures")
}

fn load(rel: &str) -> DomainCapabilities {
    let p = shared().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    capsd_core::parse_any(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every KVM x86_64 document of libvirt's upstream test data plus this host's libvirt 9.0
/// KVM outputs: q35 and i440fx, QEMU 7.2 to 11.1, AMD SEV and SGX hosts.
const X86_KVM: [&str; 10] = [
    "libvirt-upstream/domaincaps/qemu_7.2.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_7.2.0.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml",
    "libvirt-upstream/domaincaps/qemu_10.2.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_11.0.0-q35.x86_64+sgx.xml",
    "libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_11.1.0.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_10.2.0-q35.x86_64+mshv.xml",
    "libvirt-9.0-host/x86_64-kvm-q35.xml",
    "libvirt-9.0-host/x86_64-kvm-default.xml",
];

/// The q35 subset, where the baseline keeps more.
const Q35: [&str; 4] = [
    "libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml",
    "libvirt-upstream/domaincaps/qemu_10.2.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml",
    "libvirt-upstream/domaincaps/qemu_11.0.0-q35.x86_64+sgx.xml",
];

fn docs(set: &[&str]) -> Vec<DomainCapabilities> {
    set.iter().map(|r| load(r)).collect()
}

fn xmllint_valid(xml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("baseline.xml");
    std::fs::write(&f, xml).unwrap();
    let rng = shared().join("libvirt-upstream/schemas/domaincaps.rng");
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--relaxng"])
        .arg(&rng)
        .arg(&f)
        .output()
        .expect("xmllint (Debian: libxml2-utils) is needed to validate the baseline");
    assert!(out.status.success(), "baseline not schema-valid:\n{}\n{xml}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn baselines_are_schema_valid() {
    let Some(_) = reference::need("fixtures") else { return };
    let sets: [&[&str]; 5] = [
        &X86_KVM,
        &Q35,
        &["libvirt-9.0-host/x86_64-kvm-q35.xml", "libvirt-upstream/domaincaps/qemu_7.2.0-q35.x86_64.xml"],
        &["libvirt-9.0-host/aarch64-tcg-virt.xml"],
        &["libvirt-upstream/domaincaps/qemu_11.1.0-virt.aarch64.xml"],
    ];
    for set in sets {
        let b = baseline(&docs(set)).unwrap();
        let xml = capsd_core::xml::to_xml(&b);
        xmllint_valid(&xml);
        // What it writes it reads back.
        assert_eq!(capsd_core::xml::from_xml(&xml).unwrap(), b);
    }
}

#[test]
fn baseline_rules_on_real_documents() {
    let Some(_) = reference::need("fixtures") else { return };
    let all = docs(&X86_KVM);
    let b = baseline(&all).unwrap();
    assert_eq!(b.domain, "kvm");
    assert_eq!(b.arch, "x86_64");
    assert_eq!(b.machine, None, "q35 and i440fx machines differ");
    // The mshv document omits <vcpu>: no statement in the baseline either.
    assert!(all.iter().any(|d| d.vcpu.is_none()));
    assert_eq!(b.vcpu, None);
    let q35 = docs(&["libvirt-9.0-host/x86_64-kvm-q35.xml", Q35[2]]);
    let min = q35.iter().map(|d| d.vcpu.unwrap().max).min().unwrap();
    assert_eq!(baseline(&q35).unwrap().vcpu.unwrap().max, min);
    assert!(q35.iter().any(|d| d.vcpu.unwrap().max > min));
    // libvirt 9.0 writes no <console>: the baseline has none either.
    let devs = b.devices.as_ref().unwrap();
    assert!(devs.console.is_none());
    // Disk buses: only those every host lists.
    let buses = devs.disk.as_ref().unwrap().enums.enum_values("bus").unwrap();
    for d in &all {
        let theirs = d.devices.as_ref().unwrap().disk.as_ref().unwrap().enums.enum_values("bus").unwrap();
        assert!(buses.iter().all(|b| theirs.contains(b)));
    }
    assert!(buses.contains(&"virtio".to_owned()));
    // SEV is supported on one host only.
    assert_eq!(b.features.as_ref().unwrap().sev.as_ref().unwrap().supported, capsd_core::Support::No);
    // A custom model is usable in the baseline only if usable everywhere.
    for m in &b.cpu.as_ref().unwrap().custom.as_ref().unwrap().models {
        let usables: Vec<Usable> = all
            .iter()
            .map(|d| {
                d.cpu
                    .as_ref()
                    .unwrap()
                    .custom
                    .as_ref()
                    .unwrap()
                    .models
                    .iter()
                    .find(|o| o.name == m.name)
                    .unwrap()
                    .usable
            })
            .collect();
        assert_eq!(m.usable == Usable::Yes, usables.iter().all(|u| *u == Usable::Yes), "{}", m.name);
    }
    // Idempotent, and the baseline of one document twice is its baseline alone.
    assert_eq!(baseline(std::slice::from_ref(&b)).unwrap(), b);
    let one = load(Q35[0]);
    assert_eq!(baseline(&[one.clone(), one.clone()]).unwrap(), baseline(&[one]).unwrap());
}

#[test]
fn different_arch_or_domain_type_is_an_error() {
    let Some(_) = reference::need("fixtures") else { return };
    let e = baseline(&docs(&[X86_KVM[0], "libvirt-upstream/domaincaps/qemu_11.1.0-virt.aarch64.xml"])).unwrap_err();
    assert!(matches!(e, AnalysisError::Mismatch { what: "arch", index: 1, .. }), "{e}");
    assert!(e.to_string().contains("aarch64") && e.to_string().contains("x86_64"), "{e}");
    let e = baseline(&docs(&[X86_KVM[0], "libvirt-9.0-host/x86_64-tcg-q35.xml"])).unwrap_err();
    assert!(matches!(e, AnalysisError::Mismatch { what: "domain type", .. }), "{e}");
    assert_eq!(baseline(&[]).unwrap_err(), AnalysisError::NoInput);
}

#[test]
fn a_value_only_some_hosts_have_is_not_in_the_baseline() {
    let Some(_) = reference::need("fixtures") else { return };
    // Control for the property below: pflash loader secure='yes' and SEV are not common.
    let set = docs(&X86_KVM);
    let b = baseline(&set).unwrap();
    let d = Domain::parse(
        "<domain type='kvm'><os><type arch='x86_64'>hvm</type></os>\
         <launchSecurity type='sev'/><devices><console type='pty'/></devices></domain>",
    )
    .unwrap();
    let r = check(&d, &b).unwrap();
    assert!(!r.all_supported(), "{}", r.to_text());
    // ... while some hosts do support it: the baseline is not everything's intersection by luck.
    assert!(set.iter().any(|h| check(&d, h).unwrap().all_supported()));
}

#[test]
fn custom_model_vendor_is_stated_only_when_every_document_states_it() {
    // An older-libvirt document (no `vendor` on custom models) next to a newer one.
    let doc = |models: &str| {
        capsd_core::xml::from_xml(&format!(
            "<domainCapabilities>\n<domain>kvm</domain>\n<arch>x86_64</arch>\n<cpu>\n\
             <mode name='custom' supported='yes'>\n{models}\n</mode>\n</cpu>\n</domainCapabilities>\n"
        ))
        .unwrap()
    };
    let old = doc("<model usable='yes'>Nehalem</model>");
    let intel = doc("<model usable='yes' vendor='Intel'>Nehalem</model>");
    let other = doc("<model usable='yes' vendor='AMD'>Nehalem</model>");
    let vendor = |set: &[DomainCapabilities]| {
        let b = baseline(set).unwrap();
        b.cpu.and_then(|c| c.custom).map(|c| c.models[0].vendor.clone()).expect("one common model")
    };
    assert_eq!(vendor(&[intel.clone(), intel.clone()]), Some("Intel".to_owned()));
    assert_eq!(vendor(&[intel.clone(), other]), Some("unknown".to_owned()));
    assert_eq!(vendor(&[intel.clone(), old.clone()]), None);
    assert_eq!(vendor(&[old.clone(), old]), None);
}

#[test]
fn a_blocker_of_one_host_is_no_statement_about_the_others() {
    let Some(_) = reference::need("fixtures") else { return };
    // Upstream QEMU 7.2 lacks spec-ctrl (it blocks Broadwell-IBRS there); the AMD SEV host's
    // host-model CPU requires it, so that host has it.
    let set = docs(&[X86_KVM[0], X86_KVM[2]]);
    let blocked = |d: &DomainCapabilities, model: &str| -> Vec<String> {
        let m = d.cpu.as_ref().and_then(|c| c.custom.as_ref()).and_then(|c| c.models.iter().find(|m| m.name == model));
        m.and_then(|m| m.blockers.as_ref()).map(|b| b.features.clone()).unwrap_or_default()
    };
    assert!(blocked(&set[0], "Broadwell-IBRS").contains(&"spec-ctrl".to_owned()));
    let b = baseline(&set).unwrap();
    assert!(!blocked(&b, "Broadwell-IBRS").contains(&"spec-ctrl".to_owned()), "only one host lacks it");
    // So a domain forbidding spec-ctrl is not supported by the baseline: one host has it.
    let d = Domain::parse(
        "<domain type='kvm'><cpu mode='host-passthrough'><feature policy='forbid' name='spec-ctrl'/></cpu></domain>",
    )
    .unwrap();
    let verdict = |caps: &DomainCapabilities| check(&d, caps).unwrap().findings.last().unwrap().verdict;
    assert_eq!(verdict(&set[1]), Verdict::Unsupported);
    assert_ne!(verdict(&b), Verdict::Supported);
    // A feature every host lists as blocking the model stays.
    let same = baseline(&[set[0].clone(), set[0].clone()]).unwrap();
    assert_eq!(blocked(&same, "Broadwell-IBRS"), blocked(&set[0], "Broadwell-IBRS"));
}

#[test]
fn large_documents_keep_what_all_list_in_the_first_order() {
    // Every list is hashed once: 50,000 values or models took seconds per element when each
    // was searched for in every other document.
    let n = 50_000;
    let doc = |keep: &dyn Fn(usize) -> bool| {
        let vals: String = (0..n).filter(|i| keep(*i)).map(|i| format!("<value>v{i}</value>")).collect();
        let models: String = (0..n).filter(|i| keep(*i)).map(|i| format!("<model usable='yes'>m{i}</model>")).collect();
        capsd_core::xml::from_xml(&format!(
            "<domainCapabilities><domain>kvm</domain><arch>x86_64</arch>\
             <cpu><mode name='custom' supported='yes'>{models}</mode></cpu>\
             <devices><disk supported='yes'><enum name='bus'>{vals}</enum></disk></devices></domainCapabilities>"
        ))
        .unwrap()
    };
    let all = doc(&|_| true);
    let even = doc(&|i| i % 2 == 0);
    let by3 = doc(&|i| i % 3 == 0);
    let b = baseline(&[all, even, by3]).unwrap();
    let want: Vec<String> = (0..n).filter(|i| i % 6 == 0).map(|i| format!("v{i}")).collect();
    assert_eq!(b.devices.unwrap().disk.unwrap().enums[0].values, want);
    let models: Vec<String> = b.cpu.unwrap().custom.unwrap().models.into_iter().map(|m| m.name).collect();
    assert_eq!(models, want.iter().map(|v| v.replace('v', "m")).collect::<Vec<_>>());
}

// ----- the property -----

struct Pools {
    names: Vec<&'static str>,
    set: Vec<DomainCapabilities>,
    base: DomainCapabilities,
}

fn all_docs() -> &'static [DomainCapabilities] {
    static D: OnceLock<Vec<DomainCapabilities>> = OnceLock::new();
    D.get_or_init(|| docs(&X86_KVM))
}

/// The documents of `X86_KVM` whose bit is set in `mask` (at least one), and their baseline.
fn subset(mask: u16) -> Pools {
    let mask = if mask & 0x3ff == 0 { 1 } else { mask };
    let (names, set): (Vec<&'static str>, Vec<DomainCapabilities>) = X86_KVM
        .iter()
        .zip(all_docs())
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (n, d))| (*n, d.clone()))
        .unzip();
    let base = baseline(&set).unwrap();
    Pools { names, set, base }
}

fn pools() -> &'static Pools {
    static P: OnceLock<Pools> = OnceLock::new();
    P.get_or_init(|| subset(0x3ff))
}

/// Values any input lists for a device enum, plus one no host lists.
fn device_pool(p: &Pools, kind: &str, name: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for d in &p.set {
        if let Some(vals) = d.devices.as_ref().and_then(|ds| ds.get(kind)).and_then(|e| e.enums.enum_values(name)) {
            for x in vals {
                if !v.contains(x) {
                    v.push(x.clone());
                }
            }
        }
    }
    v.push("bogus".into());
    v
}

fn pick(pool: &[String], i: usize) -> String {
    if pool.is_empty() {
        return "none-listed".into();
    }
    pool[i % pool.len()].clone()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[derive(Debug, Clone)]
enum Part {
    Top(String),
    OsAttr(String),
    Os(String),
    Cpu(String),
    Feature(String),
    Device(String),
}

fn device(p: &Pools, kind: &str, a: usize, b: usize) -> String {
    let v = |name: &str, salt: usize| pick(&device_pool(p, kind, name), a.wrapping_mul(7).wrapping_add(b * salt));
    match kind {
        "disk" => format!(
            "<disk type='file' device='{}' model='{}'><target dev='vda' bus='{}'/></disk>",
            v("diskDevice", 1),
            v("model", 3),
            v("bus", 5)
        ),
        "graphics" => format!("<graphics type='{}'/>", v("type", 1)),
        "video" => format!("<video><model type='{}'/></video>", v("modelType", 1)),
        "hostdev" => format!(
            "<hostdev mode='subsystem' type='{}'><source startupPolicy='{}'/></hostdev>",
            v("subsysType", 1),
            v("startupPolicy", 3)
        ),
        "rng" => format!("<rng model='{}'><backend model='{}'/></rng>", v("model", 1), v("backendModel", 3)),
        "filesystem" => format!("<filesystem><driver type='{}'/></filesystem>", v("driverType", 1)),
        "tpm" => format!(
            "<tpm model='{}'><backend type='{}' version='{}'/></tpm>",
            v("model", 1),
            v("backendModel", 3),
            v("backendVersion", 5)
        ),
        "redirdev" => format!("<redirdev bus='{}' type='spicevmc'/>", v("bus", 1)),
        "channel" => format!("<channel type='{}'/>", v("type", 1)),
        "crypto" => format!(
            "<crypto model='{}' type='{}'><backend model='{}'/></crypto>",
            v("model", 1),
            v("type", 3),
            v("backendModel", 5)
        ),
        "interface" => format!("<interface type='user'><backend type='{}'/></interface>", v("backendType", 1)),
        "panic" => format!("<panic model='{}'/>", v("model", 1)),
        _ => format!("<console type='{}'/>", v("type", 1)),
    }
}

fn part(p: &Pools, (k, a, b): (usize, usize, usize)) -> Part {
    let base = &p.base;
    match k % 11 {
        0 => Part::Top(format!("<vcpu>{}</vcpu>", 1 + a % 8192)),
        1 => Part::Top(format!("<iothreads>{}</iothreads>", 1 + a % 8)),
        2 => Part::OsAttr(format!("firmware='{}'", pick(&strs(&["efi", "bios"]), a))),
        3 => {
            let mut paths: Vec<String> = Vec::new();
            for d in &p.set {
                for v in d.os.iter().flat_map(|o| o.loader.iter()).flat_map(|l| l.values.iter()) {
                    if !paths.contains(v) {
                        paths.push(v.clone());
                    }
                }
            }
            let t = pick(&strs(&["rom", "pflash", "bogus"]), a);
            let yn = strs(&["yes", "no"]);
            let attrs = match b % 4 {
                0 => format!(" type='{t}'"),
                1 => format!(" readonly='{}'", pick(&yn, a)),
                2 => format!(" secure='{}'", pick(&yn, a / 3)),
                _ => String::new(),
            };
            let text = if paths.is_empty() || b % 3 == 0 { String::new() } else { pick(&paths, a / 5) };
            Part::Os(format!("<loader{attrs}>{text}</loader>"))
        }
        4 => Part::Os(format!(
            "<firmware><feature enabled='{}' name='{}'/></firmware>",
            pick(&strs(&["yes", "no"]), a),
            pick(&strs(&["secure-boot", "enrolled-keys"]), b)
        )),
        5 => {
            let mode = pick(&strs(&["host-passthrough", "maximum", "host-model", "custom"]), a);
            let mut models: Vec<String> = Vec::new();
            let mut feats: Vec<String> = Vec::new();
            for d in &p.set {
                let Some(cpu) = &d.cpu else { continue };
                for m in cpu.custom.iter().flat_map(|c| c.models.iter()) {
                    if !models.contains(&m.name) {
                        models.push(m.name.clone());
                    }
                }
                for f in cpu.host_model.iter().flat_map(|h| h.features.iter()) {
                    if !feats.contains(&f.name) {
                        feats.push(f.name.clone());
                    }
                }
                for f in cpu.custom.iter().flat_map(|c| &c.models).flat_map(|m| &m.blockers).flat_map(|b| &b.features) {
                    if !feats.contains(f) {
                        feats.push(f.clone());
                    }
                }
            }
            feats.push("vme".into());
            let inner = match mode.as_str() {
                "custom" => format!(
                    "<model>{}</model><feature policy='{}' name='{}'/>",
                    pick(&models, b),
                    pick(&strs(&["require", "forbid", "disable"]), a / 4),
                    pick(&feats, b / 3)
                ),
                _ => String::new(),
            };
            let mig = match mode.as_str() {
                "host-passthrough" | "maximum" if b % 2 == 0 => {
                    format!(" migratable='{}'", pick(&strs(&["on", "off"]), a / 4))
                }
                _ => String::new(),
            };
            Part::Cpu(format!("<cpu mode='{mode}'{mig}>{inner}</cpu>"))
        }
        6 => Part::Top(format!(
            "<memoryBacking><source type='{}'/></memoryBacking>",
            pick(&strs(&["file", "anonymous", "memfd", "bogus"]), a)
        )),
        7 | 8 => Part::Device(device(p, capsd_core::Devices::NAMES[a % 13], b, a)),
        9 => {
            let hv: Vec<String> = base
                .features
                .iter()
                .flat_map(|f| f.hyperv.iter())
                .flat_map(|h| h.enums.enum_values("features").unwrap_or(&[]).to_vec())
                .chain(["relaxed".to_owned(), "evmcs".to_owned()])
                .collect();
            Part::Feature(match a % 5 {
                0 => format!("<gic version='{}'/>", 2 + b % 2),
                1 => format!("<hyperv mode='custom'><{} state='on'/></hyperv>", pick(&hv, b)),
                2 => "<vmcoreinfo state='on'/>".into(),
                3 => "<async-teardown enabled='yes'/>".into(),
                _ => format!("<ps2 state='{}'/>", pick(&strs(&["on", "off"]), b)),
            })
        }
        _ => Part::Top(format!("<launchSecurity type='{}'/>", pick(&strs(&["sev", "sev-snp", "s390-pv", "tdx"]), a))),
    }
}

fn assemble(p: &Pools, parts: &[&Part]) -> String {
    let mut top = String::new();
    let mut os_attr = String::new();
    let mut os = String::new();
    let mut cpu = String::new();
    let mut feats = String::new();
    let mut devs = String::new();
    for part in parts {
        match part {
            Part::Top(s) if !top.contains(&s[..s.find(['>', ' ']).unwrap_or(s.len())]) => top.push_str(s),
            Part::OsAttr(s) if os_attr.is_empty() => os_attr = format!(" {s}"),
            Part::Os(s) if !os.contains(&s[..s.find(['>', ' ']).unwrap_or(s.len())]) => os.push_str(s),
            Part::Cpu(s) if cpu.is_empty() => cpu = s.clone(),
            Part::Feature(s) if !feats.contains(&s[..s.find(['>', ' ']).unwrap_or(s.len())]) => feats.push_str(s),
            Part::Device(s) => devs.push_str(s),
            _ => {}
        }
    }
    let machine = p.base.machine.as_ref().map(|m| format!(" machine='{m}'")).unwrap_or_default();
    format!(
        "<domain type='{}'>{top}<os{os_attr}><type arch='{}'{machine}>hvm</type>{os}</os>{cpu}\
         <features>{feats}</features><devices>{devs}</devices></domain>",
        p.base.domain, p.base.arch
    )
}

fn strictly_supported(p: &Pools, xml: &str) -> bool {
    let d = Domain::parse(xml).unwrap_or_else(|e| panic!("generated domain does not parse: {e}\n{xml}"));
    check(&d, &p.base).unwrap().all_supported()
}

/// Build a domain from the parts that pass strictly against the baseline, and check it on
/// every host of the set.
fn satisfied_by_every_host(p: &Pools, picks: Vec<(usize, usize, usize)>) -> Result<(), TestCaseError> {
    let parts: Vec<Part> = picks.into_iter().map(|t| part(p, t)).collect();
    // Keep the parts that pass strictly against the baseline on their own.
    let kept: Vec<&Part> = parts.iter().filter(|x| strictly_supported(p, &assemble(p, &[x]))).collect();
    let xml = assemble(p, &kept);
    let d = Domain::parse(&xml).unwrap();
    let r = check(&d, &p.base).unwrap();
    prop_assert!(r.all_supported(), "{xml}\n{}", r.to_text());
    for (name, host) in p.names.iter().zip(&p.set) {
        let hr = check(&d, host).unwrap();
        let bad: Vec<String> = hr
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Unsupported)
            .map(|f| format!("{} = {} ({})", f.path, f.value, f.capability))
            .collect();
        prop_assert!(bad.is_empty(), "host {name} rejects {xml}: {bad:?}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_host_satisfies_what_the_baseline_supports(
        picks in proptest::collection::vec((0usize..10_000, 0usize..10_000, 0usize..10_000), 1..24)
    ) {
        let Some(_) = reference::need("fixtures") else { return Ok(()) };
        satisfied_by_every_host(pools(), picks)?;
    }

    /// The same for any subset of the hosts: smaller sets keep more (host-model CPUs, SEV,
    /// newer devices), so more of the checks are exercised.
    #[test]
    fn every_host_of_any_subset_satisfies_its_baseline(
        mask in 1u16..1024,
        picks in proptest::collection::vec((0usize..10_000, 0usize..10_000, 0usize..10_000), 1..24)
    ) {
        let Some(_) = reference::need("fixtures") else { return Ok(()) };
        satisfied_by_every_host(&subset(mask), picks)?;
    }
}

#[test]
fn the_generator_reaches_most_of_the_baseline() {
    let Some(_) = reference::need("fixtures") else { return };
    // The property is only as good as the domains it tries: make sure a good share of the
    // generated parts pass strictly against the baseline and that they cover devices, CPU
    // modes, firmware and features.
    let p = pools();
    let mut kinds = std::collections::BTreeSet::new();
    let mut passed = 0;
    let total = 2000;
    for i in 0..total {
        let x = part(p, (i, i * 31 + 7, i * 17 + 3));
        if strictly_supported(p, &assemble(p, &[&x])) {
            passed += 1;
            let tag = match &x {
                Part::Device(s) | Part::Top(s) | Part::Os(s) | Part::Cpu(s) | Part::Feature(s) | Part::OsAttr(s) => {
                    s.split([' ', '>', '=']).next().unwrap().to_owned()
                }
            };
            kinds.insert(tag);
        }
    }
    assert!(passed * 4 > total, "only {passed} of {total} parts pass against the baseline");
    for want in ["<disk", "<video", "<tpm", "<graphics", "<cpu", "<loader", "firmware", "<memoryBacking", "<vmcoreinfo"]
    {
        assert!(kinds.contains(want), "no passing {want} part; got {kinds:?}");
    }
}
