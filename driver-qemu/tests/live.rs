//! Live tests: probe the real QEMU binaries of this machine. Without QEMU they skip with a
//! notice, unless `CAPSD_REQUIRE_LIVE=1` (set by CI), where a missing QEMU fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use capsd_core::{DomainCapsDriver, Query};
use driver_qemu::probe::{probe, probe_many, ProbeOptions};
use driver_qemu::probe_data::Accel;
use driver_qemu::resolve::resolve_query;
use driver_qemu::QemuDriver;

const X86: &str = "/usr/bin/qemu-system-x86_64";

/// The binary when installed; `None` (after a notice) when the live tests may skip.
fn live(bin: &str) -> Option<PathBuf> {
    if Path::new(bin).exists() {
        return Some(PathBuf::from(bin));
    }
    if std::env::var("CAPSD_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("{bin} is not installed and CAPSD_REQUIRE_LIVE=1");
    }
    eprintln!("skipping live test: {bin} is not installed (set CAPSD_REQUIRE_LIVE=1 to make this fail)");
    None
}

#[test]
fn probe_x86_64_kvm_and_tcg() {
    let Some(bin) = live(X86) else { return };
    let t0 = Instant::now();
    let data = probe(&bin, &ProbeOptions::default()).unwrap();
    println!("probe of {X86}: {:.2?}", t0.elapsed());
    let tcg = data.run(Accel::Tcg).expect("a TCG run");
    assert_eq!(tcg.get("query-target").unwrap()["arch"], "x86_64");
    assert!(tcg.greeting.get("version").is_some(), "greeting recorded");
    assert!(tcg.get("query-machines").unwrap().as_array().unwrap().len() > 10);
    assert_eq!(data.run(Accel::Kvm).is_some(), data.host.kvm_usable, "KVM run exactly when /dev/kvm is usable");
    if let Some(kvm) = data.run(Accel::Kvm) {
        assert_eq!(kvm.get("query-kvm").unwrap()["enabled"], true);
    }
    // Every command of every stage got an answer (a reply or a QMP error), in order.
    for t in data.runs.values() {
        assert!(t.exchanges.len() >= 5);
    }
    // The recording format round-trips.
    let json = serde_json::to_string(&data).unwrap();
    assert_eq!(serde_json::from_str::<driver_qemu::probe_data::ProbeData>(&json).unwrap(), data);
}

#[test]
fn driver_answers_and_matches_replay_of_its_own_probe() {
    let Some(_) = live(X86) else { return };
    let driver = QemuDriver::new();
    assert!(driver.availability().is_available());
    let q = Query { virt_type: Some("qemu".into()), machine: Some("q35".into()), ..Default::default() };
    let caps = driver.domain_capabilities(&q).unwrap();
    assert_eq!(caps.domain, "qemu");
    assert_eq!(caps.arch, "x86_64");
    assert!(caps.machine.as_deref().unwrap().starts_with("pc-q35-"));
    // Deterministic: a fresh probe replayed through resolve + derive gives the same document.
    // Probed as the user the driver probes as (libvirt's QEMU user when run as root, with the
    // /dev/kvm access that user has), so both documents come from the same host facts.
    let mut opts = ProbeOptions::default();
    opts.process.user = driver_qemu::process::choose_probe_user().unwrap();
    let (r, data) =
        resolve_query(&q, &driver_qemu::host::host_arch(), driver_qemu::host::find_in_path, |b| probe(b, &opts))
            .unwrap();
    let again = driver_qemu::derive::domain_capabilities(&data, &r).unwrap();
    assert_eq!(capsd_core::xml::to_xml(&again), capsd_core::xml::to_xml(&caps));
}

#[test]
fn probe_many_installed_binaries() {
    let Some(_) = live(X86) else { return };
    let all = QemuDriver::new().installed_emulators();
    assert!(!all.is_empty());
    let t0 = Instant::now();
    let results = probe_many(&all, &ProbeOptions::default());
    println!("probe of {} binaries: {:.2?}", all.len(), t0.elapsed());
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for (b, r) in all.iter().zip(&results) {
        if let Err(e) = r {
            // A binary QEMU itself cannot start for probing still fails with a named error.
            assert!(e.to_string().contains(&b.display().to_string()), "{e}");
        }
    }
    assert!(ok >= 1, "no binary could be probed");
}

#[test]
fn bad_queries_are_input_errors() {
    let Some(_) = live(X86) else { return };
    let d = QemuDriver::new();
    let err = |q: Query| d.domain_capabilities(&q).unwrap_err();
    let e =
        err(Query { machine: Some("no-such-machine".into()), virt_type: Some("qemu".into()), ..Default::default() });
    assert_eq!(e.kind(), capsd_core::ErrorKind::InvalidInput, "{e}");
    let e = err(Query { emulator: Some("/nonexistent/qemu".into()), ..Default::default() });
    assert_eq!(e.kind(), capsd_core::ErrorKind::InvalidInput, "{e}");
    let e = err(Query { arch: Some("sparc64".into()), ..Default::default() });
    assert!(e.to_string().contains("sparc64"), "{e}");
}

#[test]
fn probe_as_unprivileged_user() {
    let Some(bin) = live(X86) else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: dropping privileges needs root");
        return;
    }
    let Ok(user) = driver_qemu::process::ProbeUser::from_name("nobody") else {
        eprintln!("skipping: no user 'nobody'");
        return;
    };
    let mut opts = ProbeOptions::default();
    opts.process.user = Some(user.clone());
    let data = probe(&bin, &opts).expect("a TCG probe works as nobody");
    assert!(data.run(Accel::Tcg).is_some());
    // /dev/kvm is often root-only (it is on the development host): then KVM is not probed,
    // and the host facts say KVM is not usable (for the probe user, as libvirt decides).
    let nobody_can = user.can_open(Path::new("/dev/kvm"));
    assert_eq!(data.run(Accel::Kvm).is_some(), nobody_can);
    assert_eq!(data.host.kvm_usable, nobody_can);
}

/// An s390x binary is asked what libvirt asks there for host-model: the static expansion of
/// `max` under TCG (`host` under KVM). Replayed as if this were an IBM Z host, host-model is
/// QEMU's model with its boolean properties, in the order QEMU sent them (libvirt 11.3), or
/// sorted by name (12.5 on).
#[test]
fn s390x_probe_asks_for_the_host_model_expansion() {
    let Some(bin) = live("/usr/bin/qemu-system-s390x") else { return };
    let mut data = probe(&bin, &ProbeOptions { no_kvm: true, ..Default::default() }).unwrap();
    let tcg = data.run(Accel::Tcg).expect("a TCG run");
    let args = serde_json::json!({"type": "static", "model": {"name": "max"}});
    let reply =
        tcg.reply("query-cpu-model-expansion", Some(&args)).expect("the static max expansion was asked and answered");
    let model = reply["model"]["name"].as_str().unwrap().to_owned();
    let props: Vec<(String, bool)> = reply["model"]["props"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_bool()?)))
        .collect();
    assert!(props.len() > 10, "{props:?}");
    // QEMU does not send them by name: the order seen here is QEMU's, kept through parsing.
    let mut by_name = props.clone();
    by_name.sort();
    assert_ne!(props, by_name, "QEMU's expansion arrived sorted: was the order lost?");

    data.host.host_arch = "s390x".into();
    let host_model = |release: &str| {
        let target = driver_qemu::libvirt::Target::new(release.parse().unwrap());
        let options = driver_qemu::cpu::CpuOptions { target, ..Default::default() };
        let cpu = driver_qemu::cpu::cpu_capabilities_with(&data, "s390x", "s390-ccw-virtio-7.2", Accel::Tcg, options);
        cpu.unwrap().host_model.unwrap()
    };
    let as_listed = |h: capsd_core::HostModel| {
        let name = h.model.unwrap().name;
        let features: Vec<(String, bool)> =
            h.features.into_iter().map(|f| (f.name, f.policy == capsd_core::FeaturePolicy::Require)).collect();
        (name, features)
    };
    assert_eq!(as_listed(host_model("11.3")), (model.clone(), props));
    assert_eq!(as_listed(host_model("12.8")), (model, by_name));
}

/// A KVM query probes the KVM run alone when that answers it, with a cache and without, and
/// leaves the TCG run for the first query that needs it: every document equals the one
/// derived from a whole probe (both runs), and the cache record says which runs it lacks.
#[test]
fn a_kvm_query_probes_the_kvm_run_first_and_tcg_when_needed() {
    let Some(bin) = live(X86) else { return };
    // As the user the driver probes as, so both come from the same /dev/kvm access.
    let mut opts = ProbeOptions::default();
    opts.process.user = driver_qemu::process::choose_probe_user().unwrap();
    let whole = probe(&bin, &opts).unwrap();
    let xml = |q: &Query, data: &driver_qemu::probe_data::ProbeData| {
        let host_arch = driver_qemu::host::host_arch();
        let (r, d) = resolve_query(q, &host_arch, |_| Some(bin.clone()), |_| Ok(data.clone())).unwrap();
        capsd_core::xml::to_xml(&driver_qemu::derive::domain_capabilities(&d, &r).unwrap())
    };
    let query = |virt: Option<&str>| Query {
        emulator: Some(bin.clone()),
        virt_type: virt.map(str::to_owned),
        libvirt: Some("9.0".into()),
        ..Default::default()
    };
    // Whether the KVM run alone answers here (KVM usable, libvirt's cpu_map installed).
    let kvm_alone = whole.run(Accel::Kvm).is_some() && !driver_qemu::cpu::kvm_query_reads_tcg_run(&whole);
    let tmp = tempfile::tempdir().unwrap();
    let cached = QemuDriver::new().with_cache_dir(tmp.path().to_owned());
    let record = || {
        let entry = fs_entry(tmp.path(), ".probe");
        let head = std::fs::read(entry).unwrap();
        String::from_utf8_lossy(&head[..head.len().min(64 * 1024)]).into_owned()
    };
    for (driver, name) in [(QemuDriver::new(), "no cache"), (cached, "cache")] {
        let render = |c: &capsd_core::DomainCapabilities| capsd_core::xml::to_xml(c).into_bytes();
        for virt in [None, Some("kvm")] {
            if virt == Some("kvm") && whole.run(Accel::Kvm).is_none() {
                continue;
            }
            let q = query(virt);
            let got = String::from_utf8(driver.domain_capabilities_rendered(&q, "xml", &render).unwrap()).unwrap();
            assert_eq!(got, xml(&q, &whole), "{name} {virt:?}");
        }
        if name == "cache" {
            assert_eq!(record().contains("\"pending\":[\"tcg\"]"), kvm_alone, "the record's pending runs");
        }
        let q = query(Some("qemu"));
        let got = String::from_utf8(driver.domain_capabilities_rendered(&q, "xml", &render).unwrap()).unwrap();
        assert_eq!(got, xml(&q, &whole), "{name} qemu");
        if name == "cache" {
            assert!(!record().contains("\"pending\""), "the TCG query completed the record");
        }
    }
}

/// The one file of `dir` whose name ends with `suffix`.
fn fs_entry(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// QEMU's definition of every x86 model is asked exactly when the host facts read beside the
/// run say the models are decoded from QEMU alone (no x86 part in libvirt's cpu_map), or
/// when `all_cpu_models` asks for it.
#[test]
fn the_model_expansions_are_probed_only_where_they_are_read() {
    use driver_qemu::cpu::{decodes_from_qemu_alone, plan::models_probed};
    let Some(bin) = live(X86) else { return };
    let opts = ProbeOptions { only: Some(Accel::Tcg), ..Default::default() };
    let data = probe(&bin, &opts).unwrap();
    let tcg = data.run(Accel::Tcg).expect("a TCG run");
    assert!(tcg.get("query-cpu-definitions").is_some());
    assert_eq!(models_probed(tcg), decodes_from_qemu_alone(&data.host), "cpu_map: {:?}", data.host.cpu_map.is_some());
    let all = probe(&bin, &ProbeOptions { all_cpu_models: true, ..opts }).unwrap();
    assert!(models_probed(all.run(Accel::Tcg).expect("a TCG run")));
}
