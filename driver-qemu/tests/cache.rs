//! The probe cache against a fake probe: every invalidation cause, damage, single flight.
//! The host inputs of the key point at files in a temporary directory, so each cause can be
//! changed for real.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, SystemTime};

use capsd_core::{DriverError, ErrorKind};
use driver_qemu::cache::{CacheOptions, CacheOutcome, KeySources, ProbeCache, Runs, CACHE_FILE_VERSION};
use driver_qemu::host::HostFacts;
use driver_qemu::probe_data::{Accel, Exchange, ProbeData, Reply, Transcript, PROBE_FORMAT_VERSION};
use serde_json::json;

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    binary: PathBuf,
    cache_dir: PathBuf,
    sources: KeySources,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        for d in ["bin", "modules", "firmware", "cache", "sys", "cpu_map"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let binary = root.join("bin/qemu-system-x86_64");
        fs::write(&binary, b"\x7fELF fake emulator").unwrap();
        fs::write(root.join("modules/accel-tcg-x86_64.so"), b"module").unwrap();
        fs::write(root.join("firmware/60-edk2-x86_64.json"), br#"{"description":"OVMF"}"#).unwrap();
        fs::write(root.join("sys/cpuinfo"), cpuinfo("0xf0")).unwrap();
        fs::write(root.join("sys/osrelease"), "6.1.0-test\n").unwrap();
        fs::write(root.join("sys/kvm"), "").unwrap();
        fs::write(root.join("sys/nested"), "Y\n").unwrap();
        fs::write(root.join("capsd"), "capsd 1").unwrap();
        fs::write(root.join("sys/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::write(root.join("cpu_map/index.xml"), "<cpus/>").unwrap();
        fs::write(root.join("cpu_map/x86_Broadwell.xml"), "<cpus/>").unwrap();
        let sources = KeySources {
            module_dirs: vec![root.join("modules")],
            firmware_dirs: vec![root.join("firmware"), root.join("no-such-firmware-dir")],
            cpuinfo: root.join("sys/cpuinfo"),
            kernel_files: vec![root.join("sys/osrelease")],
            kvm_device: root.join("sys/kvm"),
            nested_params: vec![root.join("sys/nested")],
            other_files: vec![root.join("sys/swtpm"), root.join("sys/passwd")],
            cpu_map_dir: root.join("cpu_map"),
            app_binary: Some(root.join("capsd")),
            probe_user: None,
        };
        World { cache_dir: root.join("cache"), root, binary, sources, _tmp: tmp }
    }

    fn cache(&self) -> ProbeCache {
        self.cache_version("1.0.0")
    }

    fn cache_version(&self, v: &str) -> ProbeCache {
        ProbeCache::with_options(
            self.cache_dir.clone(),
            CacheOptions { sources: self.sources.clone(), app_version: v.to_owned() },
        )
    }
}

fn cpuinfo(microcode: &str) -> String {
    format!(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nstepping\t: 7\nmicrocode\t: {microcode}\nflags\t\t: fpu vmx\n\nprocessor\t: 1\n"
    )
}

fn fake_probe(binary: &Path, tag: &str) -> ProbeData {
    let t = |accel: &str| Transcript {
        greeting: json!({"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}}),
        exchanges: vec![
            Exchange {
                execute: "query-version".into(),
                arguments: None,
                reply: Reply::ok(json!({"tag": tag, "accel": accel})),
            },
            Exchange {
                execute: "device-list-properties".into(),
                arguments: Some(json!({"typename": "virtio-blk-pci"})),
                reply: Reply::err(driver_qemu::probe_data::QmpError {
                    class: "GenericError".into(),
                    desc: "nope".into(),
                }),
            },
        ],
    };
    let mut runs = BTreeMap::new();
    runs.insert(Accel::Kvm, t("kvm"));
    runs.insert(Accel::Tcg, t("tcg"));
    ProbeData {
        format_version: PROBE_FORMAT_VERSION,
        binary: binary.display().to_string(),
        runs,
        host: HostFacts { host_arch: "x86_64".into(), kvm_usable: true, ..Default::default() },
    }
}

/// Look `w.binary` up through `cache`, counting probes in `n`.
fn get(cache: &ProbeCache, w: &World, n: &AtomicUsize, tag: &str) -> (ProbeData, CacheOutcome) {
    cache
        .get_or_probe(&w.binary, || {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(fake_probe(&w.binary, tag))
        })
        .unwrap()
}

fn tag_of(d: &ProbeData) -> String {
    d.run(Accel::Tcg).unwrap().get("query-version").unwrap()["tag"].as_str().unwrap().to_owned()
}

/// Fill the cache, check a fresh cache (no memory) hits, apply `change`, check that the
/// next lookup probes again and that the one after that hits.
fn assert_invalidated_by(change: impl FnOnce(&World)) {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let (d, o) = get(&w.cache(), &w, &n, "first");
    assert_eq!((o, n.load(Ordering::SeqCst)), (CacheOutcome::Miss, 1));
    assert_eq!(d, fake_probe(&w.binary, "first"));
    let (d, o) = get(&w.cache(), &w, &n, "unused");
    assert_eq!((o, n.load(Ordering::SeqCst), tag_of(&d)), (CacheOutcome::Hit, 1, "first".into()));
    change(&w);
    let cache = w.cache();
    let (d, o) = get(&cache, &w, &n, "second");
    assert_eq!((o, n.load(Ordering::SeqCst), tag_of(&d)), (CacheOutcome::Miss, 2, "second".into()));
    let (d, o) = get(&w.cache(), &w, &n, "unused");
    assert_eq!((o, n.load(Ordering::SeqCst), tag_of(&d)), (CacheOutcome::Hit, 2, "second".into()));
}

fn set_mtime(p: &Path, secs_ago: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago)).unwrap();
}

#[test]
fn hit_after_miss_returns_what_was_probed() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let cache = w.cache();
    assert_eq!(get(&cache, &w, &n, "a").1, CacheOutcome::Miss);
    // Same instance (memory) and a new one (file) both hit.
    assert_eq!(get(&cache, &w, &n, "b"), (fake_probe(&w.binary, "a"), CacheOutcome::Hit));
    assert_eq!(get(&w.cache(), &w, &n, "b"), (fake_probe(&w.binary, "a"), CacheOutcome::Hit));
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert!(cache.file_for(&w.binary).exists());
}

#[test]
fn touching_the_binary_invalidates() {
    assert_invalidated_by(|w| set_mtime(&w.binary, 3600));
}

#[test]
fn rewriting_the_binary_with_another_size_invalidates() {
    assert_invalidated_by(|w| fs::write(&w.binary, b"\x7fELF a newer fake emulator").unwrap());
}

#[test]
fn replacing_the_binary_invalidates() {
    // Same size and mtime, new inode (a package upgrade renames a new file in).
    assert_invalidated_by(|w| {
        let m = fs::metadata(&w.binary).unwrap();
        let tmp = w.root.join("bin/.new");
        fs::write(&tmp, fs::read(&w.binary).unwrap()).unwrap();
        fs::File::options().write(true).open(&tmp).unwrap().set_modified(m.modified().unwrap()).unwrap();
        fs::rename(&tmp, &w.binary).unwrap();
    });
}

#[test]
fn changing_a_firmware_descriptor_invalidates() {
    assert_invalidated_by(|w| {
        fs::write(w.root.join("firmware/60-edk2-x86_64.json"), br#"{"description":"OVMF 2"}"#).unwrap()
    });
}

#[test]
fn adding_a_firmware_directory_invalidates() {
    assert_invalidated_by(|w| {
        fs::create_dir(w.root.join("no-such-firmware-dir")).unwrap();
    });
}

#[test]
fn changing_a_cpu_map_model_file_invalidates() {
    // A libvirt update may change one model's file and leave index.xml as it was.
    assert_invalidated_by(|w| fs::write(w.root.join("cpu_map/x86_Broadwell.xml"), "<cpus><!-- v2 --></cpus>").unwrap());
}

#[test]
fn a_new_qemu_module_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("modules/hw-display-qxl.so"), b"qxl").unwrap());
}

#[test]
fn new_microcode_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("sys/cpuinfo"), cpuinfo("0xf1")).unwrap());
}

#[test]
fn a_new_kernel_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("sys/osrelease"), "6.2.0-test\n").unwrap());
}

#[test]
fn kvm_going_away_invalidates() {
    assert_invalidated_by(|w| fs::remove_file(w.root.join("sys/kvm")).unwrap());
}

#[test]
fn kvm_permissions_changing_invalidates() {
    // Root opens /dev/kvm whatever its mode; a probe run as another user does not.
    use std::os::unix::fs::PermissionsExt;
    assert_invalidated_by(|w| fs::set_permissions(w.root.join("sys/kvm"), fs::Permissions::from_mode(0o600)).unwrap());
}

#[test]
fn changing_kvm_nested_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("sys/nested"), "N\n").unwrap());
}

#[test]
fn installing_swtpm_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("sys/swtpm"), "#!/bin/sh\n").unwrap());
}

#[test]
fn editing_the_user_database_in_place_invalidates() {
    // The key holds what the probe user is chosen from (qemu.conf, passwd, group) as file
    // stamps, not the looked-up user: an edit that keeps the file's inode must re-probe.
    assert_invalidated_by(|w| {
        let mut f = fs::OpenOptions::new().append(true).open(w.root.join("sys/passwd")).unwrap();
        std::io::Write::write_all(&mut f, b"libvirt-qemu:x:64055:994::/var/lib/libvirt:/usr/sbin/nologin\n").unwrap();
    });
}

#[test]
fn a_new_capsd_version_invalidates() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    get(&w.cache_version("1.0.0"), &w, &n, "a");
    assert_eq!(get(&w.cache_version("1.0.0"), &w, &n, "x").1, CacheOutcome::Hit);
    assert_eq!(get(&w.cache_version("1.0.1"), &w, &n, "b").1, CacheOutcome::Miss);
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[test]
fn another_probe_user_invalidates() {
    // Root probing as root gets KVM where an unprivileged probe user may not: a process with
    // another CAPSD_PROBE_USER must not take this entry.
    let w = World::new();
    let n = AtomicUsize::new(0);
    let as_user = |u: Option<&str>| {
        let sources = KeySources { probe_user: u.map(str::to_owned), ..w.sources.clone() };
        ProbeCache::with_options(w.cache_dir.clone(), CacheOptions { sources, app_version: "1.0.0".into() })
    };
    assert_eq!(get(&as_user(None), &w, &n, "root").1, CacheOutcome::Miss);
    assert_eq!(get(&as_user(None), &w, &n, "x").1, CacheOutcome::Hit);
    assert_eq!(get(&as_user(Some("capsd")), &w, &n, "capsd").1, CacheOutcome::Miss);
    assert_eq!(get(&as_user(Some("capsd")), &w, &n, "x").1, CacheOutcome::Hit);
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[test]
fn a_rebuilt_capsd_invalidates() {
    assert_invalidated_by(|w| fs::write(w.root.join("capsd"), "capsd 1, rebuilt").unwrap());
}

#[test]
fn another_file_or_probe_format_version_is_reprobed() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let cache = w.cache();
    get(&cache, &w, &n, "a");
    let file = cache.file_for(&w.binary);
    let bytes = fs::read(&file).unwrap();
    // File layout version on the first line.
    let now = format!("capsd-probe-cache {CACHE_FILE_VERSION} ");
    assert!(bytes.starts_with(now.as_bytes()));
    let mut bumped = format!("capsd-probe-cache {} ", CACHE_FILE_VERSION + 1).into_bytes();
    bumped.extend_from_slice(&bytes[now.len()..]);
    fs::write(&file, bumped).unwrap();
    assert_eq!(get(&w.cache(), &w, &n, "b"), (fake_probe(&w.binary, "b"), CacheOutcome::Miss));
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

/// Damage `file` with `f` and check a fresh cache re-probes and answers right.
fn assert_damage_detected(f: impl FnOnce(&mut Vec<u8>)) {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let cache = w.cache();
    get(&cache, &w, &n, "a");
    let file = cache.file_for(&w.binary);
    let mut bytes = fs::read(&file).unwrap();
    f(&mut bytes);
    fs::write(&file, &bytes).unwrap();
    let (d, o) = get(&w.cache(), &w, &n, "b");
    assert_eq!((o, tag_of(&d), n.load(Ordering::SeqCst)), (CacheOutcome::Miss, "b".into(), 2));
    // And the damaged file was replaced by a good one.
    assert_eq!(get(&w.cache(), &w, &n, "c").1, CacheOutcome::Hit);
}

#[test]
fn a_flipped_byte_in_the_data_is_detected() {
    // The `tag` keys are in the run segments, at the end of the file: change one there,
    // keeping the encoding valid (a letter for another), so only the checksum can tell.
    assert_damage_detected(|b| {
        let i = b.windows(3).rposition(|w| w == b"tag").unwrap();
        b[i] = b'T';
    });
}

#[test]
fn a_flipped_byte_in_the_header_is_detected() {
    assert_damage_detected(|b| {
        let i = b.iter().position(|c| *c == b'\n').unwrap() + 10;
        b[i] ^= 0x20;
    });
}

#[test]
fn a_truncated_file_is_detected() {
    assert_damage_detected(|b| b.truncate(b.len() - 7));
}

#[test]
fn garbage_and_empty_files_are_detected() {
    assert_damage_detected(|b| *b = b"{\"not\": \"a cache\"}".to_vec());
    assert_damage_detected(Vec::clear);
}

#[test]
fn reading_one_run_parses_only_that_run() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    get(&w.cache(), &w, &n, "a");
    let cache = w.cache();
    let (d, o) = cache
        .get_or_probe_runs(&w.binary, Runs::Only(&[Accel::Kvm]), || {
            Err(DriverError::probe_failed("x", "must not probe"))
        })
        .unwrap();
    assert_eq!(o, CacheOutcome::Hit);
    assert_eq!(d.runs.keys().copied().collect::<Vec<_>>(), vec![Accel::Kvm]);
    // Asking for everything afterwards reads the rest; still no probe.
    let (d, o) = cache
        .get_or_probe_runs(&w.binary, Runs::All, || Err(DriverError::probe_failed("x", "must not probe")))
        .unwrap();
    assert_eq!((o, d.runs.len()), (CacheOutcome::Hit, 2));
}

#[test]
fn owned_lookups_of_one_run_leave_the_others_out() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let cache = w.cache();
    // The miss returns every run.
    let (d, o) = cache
        .get_or_probe_owned_runs(&w.binary, Runs::Only(&[Accel::Tcg]), || {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(fake_probe(&w.binary, "a"))
        })
        .unwrap();
    assert_eq!((o, d.runs.len()), (CacheOutcome::Miss, 2));
    let (d, o) = cache
        .get_or_probe_owned_runs(&w.binary, Runs::Only(&[Accel::Tcg]), || Err(DriverError::probe_failed("x", "no")))
        .unwrap();
    assert_eq!((o, d.runs.keys().copied().collect::<Vec<_>>()), (CacheOutcome::Hit, vec![Accel::Tcg]));
    assert_eq!(d.run(Accel::Tcg), fake_probe(&w.binary, "a").run(Accel::Tcg));
    assert_eq!(d.host, fake_probe(&w.binary, "a").host);
}

#[test]
fn concurrent_lookups_of_one_binary_probe_once() {
    let w = World::new();
    let cache = w.cache();
    let n = AtomicUsize::new(0);
    let barrier = Barrier::new(8);
    let outcomes: Vec<CacheOutcome> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let r = cache.get_or_probe(&w.binary, || {
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(fake_probe(&w.binary, "once"))
                    });
                    let (d, o) = r.unwrap();
                    assert_eq!(tag_of(&d), "once");
                    o
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
}

#[test]
fn different_binaries_probe_in_parallel() {
    let w = World::new();
    let other = w.root.join("bin/qemu-system-aarch64");
    fs::write(&other, b"\x7fELF other").unwrap();
    let cache = w.cache();
    // Each probe waits inside until the other one is inside too: serialized probes would
    // never meet (the first gives up after a deadline only a real serialization reaches).
    let inside = (std::sync::Mutex::new(0usize), std::sync::Condvar::new());
    let met: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = [&w.binary, &other]
            .into_iter()
            .map(|b| {
                let cache = cache.clone();
                let inside = &inside;
                s.spawn(move || {
                    let mut met = false;
                    cache
                        .get_or_probe(b, || {
                            let (n, cv) = inside;
                            let mut n = n.lock().unwrap();
                            *n += 1;
                            cv.notify_all();
                            let (n, timeout) = cv.wait_timeout_while(n, Duration::from_secs(60), |n| *n < 2).unwrap();
                            met = !timeout.timed_out() && *n == 2;
                            Ok(fake_probe(b, "p"))
                        })
                        .unwrap();
                    met
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(met, [true, true], "the two probes did not run at the same time: serialized");
}

#[test]
fn a_failed_probe_is_not_cached_and_waiters_share_it() {
    let w = World::new();
    let cache = w.cache();
    let n = AtomicUsize::new(0);
    let barrier = Barrier::new(4);
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let r = cache.get_or_probe(&w.binary, || {
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1000));
                        Err(DriverError::probe_failed("qemu-system-x86_64", "QEMU exited with status 1"))
                    });
                    r.unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(n.load(Ordering::SeqCst), 1, "{errors:?}");
    assert!(errors.iter().all(|e| e.contains("QEMU exited with status 1")), "{errors:?}");
    // Not cached: the next lookup probes again.
    assert_eq!(get(&cache, &w, &n, "ok").1, CacheOutcome::Miss);
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[test]
fn a_missing_binary_is_invalid_input() {
    let w = World::new();
    let e = w.cache().get_or_probe(&w.root.join("bin/nope"), || Ok(fake_probe(&w.binary, "x"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("bin/nope"), "{e}");
    let e = w.cache().get_or_probe(&w.root.join("bin"), || Ok(fake_probe(&w.binary, "x"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn temporary_files_a_killed_writer_left_are_removed_when_storing() {
    let w = World::new();
    fs::create_dir_all(&w.cache_dir).unwrap();
    let abandoned = w.cache_dir.join(".tmp-Ab12cD.probe");
    let in_progress = w.cache_dir.join(".tmp-Ef34gH.probe");
    let unrelated = w.cache_dir.join("notes.txt");
    for f in [&abandoned, &in_progress, &unrelated] {
        fs::write(f, b"partial").unwrap();
    }
    set_mtime(&abandoned, 3600);
    set_mtime(&unrelated, 3600);
    let n = AtomicUsize::new(0);
    get(&w.cache(), &w, &n, "a");
    assert!(!abandoned.exists(), "an hour-old temporary file is left");
    assert!(in_progress.exists(), "a young temporary file (another writer's) was removed");
    assert!(unrelated.exists(), "a file that is not ours was removed");
}

#[test]
fn writes_leave_no_temporary_files_and_unwritable_dirs_still_answer() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    get(&w.cache(), &w, &n, "a");
    let names: Vec<String> =
        fs::read_dir(&w.cache_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".probe") || n.ends_with(".lock")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".probe")).count(), 1);
    // A cache dir that cannot be created (a file is in the way): answers, uncached.
    let blocked = w.root.join("bin/qemu-system-x86_64").join("cache");
    let c = ProbeCache::with_options(blocked, CacheOptions { sources: w.sources.clone(), app_version: "1".into() });
    let (d, o) = c.get_or_probe(&w.binary, || Ok(fake_probe(&w.binary, "u"))).unwrap();
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "u".into()));
}

#[test]
fn every_recorded_probe_round_trips_through_the_cache() {
    // The recordings of real QEMU 7.2 probes (`cargo xtask record-qemu`): stored and read
    // back, each must be equal to what went in, whole and run by run.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("qemu-") && name.ends_with(".json")) {
            continue;
        }
        let data: ProbeData = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let w = World::new();
        let (stored, o) = w.cache().get_or_probe(&w.binary, || Ok(data.clone())).unwrap();
        assert_eq!((o, &stored), (CacheOutcome::Miss, &data), "{name}");
        let (back, o) = w.cache().get_or_probe(&w.binary, || Err(DriverError::probe_failed("x", "no"))).unwrap();
        assert_eq!(o, CacheOutcome::Hit, "{name}");
        assert!(back == data, "{name}: read back differs");
        for accel in data.runs.keys() {
            let (one, _) = w
                .cache()
                .get_or_probe_owned_runs(&w.binary, Runs::Only(&[*accel]), || Err(DriverError::probe_failed("x", "no")))
                .unwrap();
            assert!(one.run(*accel) == data.run(*accel), "{name}: run {accel:?} differs");
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} recordings in {}", dir.display());
}

#[test]
fn a_lookup_of_a_run_the_entry_lacks_gives_the_runs_it_has() {
    // A binary probed with TCG alone (a foreign arch): a KVM lookup gets the TCG run rather
    // than nothing, so the driver need not read the file a second time.
    let w = World::new();
    let mut data = fake_probe(&w.binary, "tcg-only");
    data.runs.remove(&Accel::Kvm);
    w.cache().get_or_probe(&w.binary, || Ok(data.clone())).unwrap();
    let fail = || Err(DriverError::probe_failed("x", "no"));
    let (got, o) = w.cache().get_or_probe_owned_runs(&w.binary, Runs::Only(&[Accel::Kvm]), fail).unwrap();
    assert_eq!((o, &got), (CacheOutcome::Hit, &data));
    let (shared, _) = w.cache().get_or_probe_runs(&w.binary, Runs::Only(&[Accel::Kvm]), fail).unwrap();
    assert_eq!(*shared, data);
}

#[test]
fn the_driver_answers_a_foreign_arch_from_the_cache_as_from_the_probe() {
    // The aarch64 recording of an x86_64 host has no KVM run: a default (KVM-first) query
    // reads the TCG run through the KVM lookup; the documents and errors must be the same.
    use capsd_core::{DomainCapsDriver, Query};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-aarch64.json");
    let data: ProbeData = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    assert!(!data.runs.contains_key(&Accel::Kvm), "the recording has a KVM run");
    let w = World::new();
    w.cache().get_or_probe(&w.binary, || Ok(data.clone())).unwrap();
    let driver = driver_qemu::QemuDriver::new().with_cache(w.cache());
    for (virt_type, machine) in [(None, None), (Some("qemu"), Some("virt")), (Some("kvm"), None)] {
        let q = Query {
            emulator: Some(w.binary.clone()),
            arch: None,
            machine: machine.map(str::to_owned),
            virt_type: virt_type.map(str::to_owned),
            libvirt: None,
        };
        let direct =
            driver_qemu::resolve::resolve_query(&q, &driver_qemu::host::host_arch(), |_| None, |_| Ok(data.clone()))
                .and_then(|(r, d)| driver_qemu::derive::domain_capabilities(&d, &r));
        let cached = driver.domain_capabilities(&q);
        assert_eq!(format!("{cached:?}"), format!("{direct:?}"), "{virt_type:?} {machine:?}");
    }
}

#[test]
fn the_driver_reads_only_the_runs_a_query_needs_and_answers_the_same() {
    // A KVM query from the cache reads the KVM run alone when that is enough (libvirt's
    // cpu_map present); every document must equal the one derived from the whole probe.
    use capsd_core::{DomainCapsDriver, Query};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-x86_64.json");
    let recorded: ProbeData = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let cpu_map = Path::new("/usr/share/libvirt/cpu_map");
    let mut maps = vec![None];
    if cpu_map.join("index.xml").exists() {
        maps.push(Some(driver_qemu::cpu::host::read_cpu_map_from(cpu_map).unwrap()));
    }
    for map in maps {
        let mut data = recorded.clone();
        data.host.cpu_map = map;
        let w = World::new();
        w.cache().get_or_probe(&w.binary, || Ok(data.clone())).unwrap();
        let (kvm_only, _) = w
            .cache()
            .get_or_probe_owned_runs(&w.binary, Runs::Only(&[Accel::Kvm]), || Err(DriverError::probe_failed("x", "no")))
            .unwrap();
        assert_eq!(kvm_only.runs.len(), 1);
        assert_eq!(
            driver_qemu::cpu::kvm_query_reads_tcg_run(&kvm_only),
            data.host.cpu_map.is_none(),
            "only x86 custom model vendors without cpu_map need the TCG run"
        );
        let driver = driver_qemu::QemuDriver::new().with_cache(w.cache());
        for (virt_type, machine) in
            [(None, None), (Some("kvm"), Some("q35")), (Some("qemu"), None), (Some("none"), None)]
        {
            let q = Query {
                emulator: Some(w.binary.clone()),
                arch: None,
                machine: machine.map(str::to_owned),
                virt_type: virt_type.map(str::to_owned),
                libvirt: None,
            };
            let host_arch = driver_qemu::host::host_arch();
            let direct = driver_qemu::resolve::resolve_query(&q, &host_arch, |_| None, |_| Ok(data.clone()))
                .and_then(|(r, d)| driver_qemu::derive::domain_capabilities(&d, &r));
            let cached = driver.domain_capabilities(&q);
            assert_eq!(
                format!("{cached:?}"),
                format!("{direct:?}"),
                "{virt_type:?} {machine:?} with cpu_map: {}",
                data.host.cpu_map.is_some()
            );
        }
    }
}

/// A temporary file of a writer that was killed (a pid that no longer runs) is removed by the
/// next store at once, whatever its age; a live writer's (this process's) stays.
#[test]
fn temporary_files_of_dead_writers_are_removed_at_once() {
    let w = World::new();
    fs::create_dir_all(&w.cache_dir).unwrap();
    // A child that has exited and been reaped: its pid runs nothing (or something else).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let abandoned = w.cache_dir.join(format!(".tmp-{dead}.12345-00ab.probe"));
    let me = fs::read_to_string("/proc/self/stat").unwrap();
    let start = me.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().to_owned();
    let live = w.cache_dir.join(format!(".tmp-{}.{start}-00cd.probe", std::process::id()));
    for f in [&abandoned, &live] {
        fs::write(f, b"partial").unwrap();
    }
    let n = AtomicUsize::new(0);
    get(&w.cache(), &w, &n, "a");
    assert!(!abandoned.exists(), "a dead writer's temporary file is left");
    assert!(live.exists(), "a live writer's temporary file was removed");
}

/// Whether tests that need another real user can run (they chown to `nobody`).
fn as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root to give files to another user");
    false
}

fn nobody() -> (nix::unistd::Uid, nix::unistd::Gid) {
    let u = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
    (u.uid, u.gid)
}

/// A valid entry for `w.binary` whose TCG run says `tag`, written where the cache would
/// read it, owned by `nobody` (as if that user had written it).
fn plant_foreign_entry(w: &World, dir: &Path, tag: &str) -> PathBuf {
    let elsewhere = World::new();
    let forged = ProbeCache::with_options(
        elsewhere.cache_dir.clone(),
        CacheOptions { sources: w.sources.clone(), app_version: "1.0.0".into() },
    );
    forged.get_or_probe(&w.binary, || Ok(fake_probe(&w.binary, tag))).unwrap();
    let cache = ProbeCache::with_options(
        dir.to_owned(),
        CacheOptions { sources: w.sources.clone(), app_version: "1.0.0".into() },
    );
    let target = cache.file_for(&w.binary);
    fs::copy(forged.file_for(&w.binary), &target).unwrap();
    let (uid, gid) = nobody();
    nix::unistd::chown(&target, Some(uid), Some(gid)).unwrap();
    target
}

#[test]
fn an_entry_another_user_wrote_in_a_world_writable_directory_is_not_trusted() {
    // The issue's reproduction: a sticky, world-writable cache directory (like /tmp), a valid
    // entry (checksums recomputed) owned by an unprivileged user. It must not be answered.
    if !as_root() {
        return;
    }
    let w = World::new();
    let shared = w.root.join("shared-cache");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let planted = plant_foreign_entry(&w, &shared, "attacker");
    let cache = ProbeCache::with_options(
        shared.clone(),
        CacheOptions { sources: w.sources.clone(), app_version: "1.0.0".into() },
    );
    let n = AtomicUsize::new(0);
    let (d, o) = cache
        .get_or_probe(&w.binary, || {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(fake_probe(&w.binary, "ours"))
        })
        .unwrap();
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "ours".to_owned()));
    // Nothing is written in a directory that is not ours either: the planted file is as it was.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&planted).unwrap().uid(), nobody().0.as_raw());
}

#[test]
fn an_entry_owned_by_another_user_in_our_directory_is_reprobed_and_replaced() {
    if !as_root() {
        return;
    }
    let w = World::new();
    fs::create_dir_all(&w.cache_dir).unwrap();
    let planted = plant_foreign_entry(&w, &w.cache_dir, "attacker");
    let n = AtomicUsize::new(0);
    let (d, o) = get(&w.cache(), &w, &n, "ours");
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "ours".to_owned()));
    // Replaced by our own file, which the next lookup trusts.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&planted).unwrap().uid(), nix::unistd::geteuid().as_raw());
    let (d, o) = get(&w.cache(), &w, &n, "unused");
    assert_eq!((o, tag_of(&d), n.load(Ordering::SeqCst)), (CacheOutcome::Hit, "ours".to_owned(), 1));
}

#[test]
fn an_entry_writable_by_others_is_not_trusted() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    get(&w.cache(), &w, &n, "first");
    let file = w.cache().file_for(&w.binary);
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (_, o) = get(&w.cache(), &w, &n, "second");
    assert_eq!((o, n.load(Ordering::SeqCst)), (CacheOutcome::Miss, 2));
}

/// Run `f` on a thread; fail if it does not return within 20 s (instead of hanging).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what} blocked for 20 s"))
}

#[test]
fn a_fifo_in_place_of_the_entry_does_not_block_and_is_replaced() {
    let w = World::new();
    fs::create_dir_all(&w.cache_dir).unwrap();
    let file = w.cache().file_for(&w.binary);
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let cache = w.cache();
    let binary = w.binary.clone();
    let (d, o) = within_20s("a lookup with a FIFO as the cache file", move || {
        cache.get_or_probe(&binary, || Ok(fake_probe(&binary, "probed"))).unwrap()
    });
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "probed".to_owned()));
    assert!(fs::symlink_metadata(&file).unwrap().is_file(), "the FIFO was not replaced by the entry");
    // The lock file too: a FIFO there must not block either.
    let lock = file.with_extension("lock");
    fs::remove_file(&lock).unwrap();
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    w.cache().invalidate(&w.binary).unwrap();
    let cache = w.cache();
    let binary = w.binary.clone();
    let (_, o) = within_20s("a probe with a FIFO as the lock file", move || {
        cache.get_or_probe(&binary, || Ok(fake_probe(&binary, "again"))).unwrap()
    });
    assert_eq!(o, CacheOutcome::Miss);
}

#[test]
fn a_symlink_in_place_of_the_entry_is_neither_followed_nor_written_through() {
    let w = World::new();
    fs::create_dir_all(&w.cache_dir).unwrap();
    // A valid entry elsewhere, and a file the link would have us overwrite.
    let elsewhere = World::new();
    let other = ProbeCache::with_options(
        elsewhere.cache_dir.clone(),
        CacheOptions { sources: w.sources.clone(), app_version: "1.0.0".into() },
    );
    other.get_or_probe(&w.binary, || Ok(fake_probe(&w.binary, "linked"))).unwrap();
    let file = w.cache().file_for(&w.binary);
    std::os::unix::fs::symlink(other.file_for(&w.binary), &file).unwrap();
    let n = AtomicUsize::new(0);
    let (d, o) = get(&w.cache(), &w, &n, "ours");
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "ours".to_owned()));
    assert!(fs::symlink_metadata(&file).unwrap().is_file(), "the link was written through, not replaced");
    let (d, _) = get(&other, &w, &n, "unused");
    assert_eq!(tag_of(&d), "linked", "the link's target was changed");
}

/// Kept rendered answers (`domain_capabilities_rendered` with a cache): a second query is
/// answered from the kept bytes without deriving (the renderer is not called), and after a
/// change of any key input (an in-place edit of one cpu_map file, a firmware descriptor
/// edited in place, the binary rewritten, qemu.conf edited) the answer is derived afresh
/// from the new probe record, never the old bytes. Each "probe" here gives the recorded
/// x86_64 probe with another KVM vCPU limit, which the document prints (`<vcpu max=...>`).
#[test]
fn kept_answers_are_served_until_any_input_changes() {
    use capsd_core::{DomainCapabilities, DomainCapsDriver, Query};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-x86_64.json");
    let recorded: ProbeData = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let mut w = World::new();
    fs::write(w.root.join("sys/qemu.conf"), "user = \"libvirt-qemu\"\n").unwrap();
    w.sources.other_files.push(w.root.join("sys/qemu.conf"));
    let probes = AtomicUsize::new(0);
    // What the cache holds after a (fake) probe: vCPU limit 100 + the probe's number.
    let probe_into = |w: &World| {
        let n = probes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut d = recorded.clone();
        d.host.kvm_max_vcpus = Some(100 + n as u32);
        let (_, o) = w.cache().get_or_probe(&w.binary, || Ok(d)).unwrap();
        assert_eq!(o, CacheOutcome::Miss, "probe {n}: the change was not noticed by the probe cache");
        n
    };
    let renders = AtomicUsize::new(0);
    let render = |c: &DomainCapabilities| {
        renders.fetch_add(1, Ordering::SeqCst);
        capsd_core::xml::to_xml(c).into_bytes()
    };
    let q = Query {
        emulator: Some(w.binary.clone()),
        arch: None,
        machine: None,
        virt_type: Some("kvm".into()),
        libvirt: Some("9.0".into()),
    };
    let answer = |w: &World| {
        let driver = driver_qemu::QemuDriver::new().with_cache(w.cache());
        String::from_utf8(driver.domain_capabilities_rendered(&q, "xml", &render).unwrap()).unwrap()
    };
    let direct = |n: usize| {
        let mut d = recorded.clone();
        d.host.kvm_max_vcpus = Some(100 + n as u32);
        let host_arch = driver_qemu::host::host_arch();
        let (r, d) = driver_qemu::resolve::resolve_query(&q, &host_arch, |_| None, |_| Ok(d)).unwrap();
        capsd_core::xml::to_xml(&driver_qemu::derive::domain_capabilities(&d, &r).unwrap())
    };

    let n = probe_into(&w);
    let first = answer(&w);
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    assert_eq!(first, direct(n));
    assert!(first.contains(&format!("<vcpu max='{}'/>", 100 + n)), "{first}");
    // Warm: the kept bytes, no derivation.
    assert_eq!(answer(&w), first);
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    // Another form or query is another answer.
    let driver = driver_qemu::QemuDriver::new().with_cache(w.cache());
    let json = driver
        .domain_capabilities_rendered(&q, "json", &|c: &DomainCapabilities| capsd_core::json::to_json(c).into_bytes())
        .unwrap();
    assert_ne!(json, first.as_bytes());

    let edit_in_place = |p: &Path, text: &str| {
        // Same inode, no directory entry changes: only the file's own stat moves.
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        fs::OpenOptions::new().append(true).open(p).unwrap().write_all(text.as_bytes()).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap()), ino);
    };
    use std::io::Write as _;
    type Change<'a> = Box<dyn Fn(&World) + 'a>;
    let changes: Vec<(&str, Change<'_>)> = vec![
        ("one cpu_map file", Box::new(|w: &World| edit_in_place(&w.root.join("cpu_map/x86_Broadwell.xml"), "\n"))),
        (
            "a firmware descriptor",
            Box::new(|w: &World| edit_in_place(&w.root.join("firmware/60-edk2-x86_64.json"), " ")),
        ),
        ("the binary", Box::new(|w: &World| fs::write(&w.binary, b"\x7fELF another fake emulator").unwrap())),
        ("qemu.conf", Box::new(|w: &World| edit_in_place(&w.root.join("sys/qemu.conf"), "group = \"kvm\"\n"))),
    ];
    for (what, change) in changes {
        let before = renders.load(Ordering::SeqCst);
        change(&w);
        // The driver itself would probe now; the fake probe stands in for it.
        let n = probe_into(&w);
        let fresh = answer(&w);
        assert_eq!(renders.load(Ordering::SeqCst), before + 1, "{what}: the answer was not derived again");
        assert_eq!(fresh, direct(n), "{what}");
        assert!(fresh.contains(&format!("<vcpu max='{}'/>", 100 + n)), "{what}: {fresh}");
        assert_eq!(answer(&w), fresh, "{what}");
        assert_eq!(renders.load(Ordering::SeqCst), before + 1, "{what}: the fresh answer was not kept");
    }
    // The probe record forgotten: so are its answers.
    w.cache().invalidate(&w.binary).unwrap();
    let n = probe_into(&w);
    let before = renders.load(Ordering::SeqCst);
    assert_eq!(answer(&w), direct(n));
    assert_eq!(renders.load(Ordering::SeqCst), before + 1);
    // A damaged answer file is not served: derived again (and kept again).
    let kept: Vec<PathBuf> = fs::read_dir(&w.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "answer"))
        .collect();
    for p in &kept {
        let mut b = fs::read(p).unwrap();
        let last = b.len() - 2;
        b[last] ^= 0x20;
        fs::write(p, b).unwrap();
    }
    let before = renders.load(Ordering::SeqCst);
    assert_eq!(answer(&w), direct(n));
    assert_eq!(renders.load(Ordering::SeqCst), before + 1, "a damaged answer was served");
}

/// A record stored with a run left for later (the KVM run alone, TCG pending) serves
/// lookups of the KVM run; a lookup that needs the TCG run is a miss that probes and stores
/// every run, and is then served from the file like any complete record. A pending run is
/// never taken for one that failed (absent from a complete record).
#[test]
fn a_run_left_for_later_is_probed_when_a_lookup_needs_it() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let kvm_only = || {
        n.fetch_add(1, Ordering::SeqCst);
        let mut d = fake_probe(&w.binary, "kvm-first");
        d.runs.remove(&Accel::Tcg);
        Ok((d, vec![Accel::Tcg]))
    };
    let never = || -> Result<(ProbeData, Vec<Accel>), DriverError> { panic!("must not probe") };
    let (d, o, _) = w.cache().get_or_probe_partial(&w.binary, None, Runs::Only(&[Accel::Kvm]), kvm_only).unwrap();
    assert_eq!((o, d.runs.keys().copied().collect::<Vec<_>>()), (CacheOutcome::Miss, vec![Accel::Kvm]));
    // The KVM run again, from the file (a new cache: no memory), without probing.
    let (d, o, _) = w.cache().get_or_probe_partial(&w.binary, None, Runs::Only(&[Accel::Kvm]), never).unwrap();
    assert_eq!((o, d.runs.keys().copied().collect::<Vec<_>>()), (CacheOutcome::Hit, vec![Accel::Kvm]));
    // Every run, or the TCG run: a miss, whichever entry point.
    for runs in [Runs::All, Runs::Only(&[Accel::Tcg])] {
        let before = n.load(Ordering::SeqCst);
        let (d, o) = w
            .cache()
            .get_or_probe_owned_runs(&w.binary, runs, || {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(fake_probe(&w.binary, "both"))
            })
            .unwrap();
        assert_eq!((o, n.load(Ordering::SeqCst)), (CacheOutcome::Miss, before + 1), "{runs:?}");
        assert!(d.runs.contains_key(&Accel::Tcg), "{runs:?}");
        // Put the partial record back for the next round.
        if runs == Runs::All {
            w.cache().invalidate(&w.binary).unwrap();
            w.cache().get_or_probe_partial(&w.binary, None, Runs::Only(&[Accel::Kvm]), kvm_only).unwrap();
        }
    }
    // Now complete: every run from the file.
    let (d, o) = get(&w.cache(), &w, &n, "unused");
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Hit, "both".to_owned()));
    // The shared lookup (which keeps what it reads in memory) likewise.
    let w = World::new();
    let cache = w.cache();
    cache.get_or_probe_partial(&w.binary, None, Runs::Only(&[Accel::Kvm]), kvm_only).unwrap();
    let (d, o) = cache
        .get_or_probe_runs(&w.binary, Runs::All, || Ok(fake_probe(&w.binary, "all")))
        .map(|(d, o)| ((*d).clone(), o))
        .unwrap();
    assert_eq!((o, tag_of(&d)), (CacheOutcome::Miss, "all".to_owned()));
}

/// An answer whose derivation logged a warning (here: the KVM vCPU limit unknown, so the
/// machine's own limit is printed) is not kept: every query derives again and warns again.
#[test]
fn an_answer_whose_derivation_warned_is_not_kept() {
    use capsd_core::{DomainCapabilities, DomainCapsDriver, Query};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-x86_64.json");
    let mut recorded: ProbeData = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let w = World::new();
    let q = Query {
        emulator: Some(w.binary.clone()),
        virt_type: Some("kvm".into()),
        libvirt: Some("9.0".into()),
        ..Default::default()
    };
    let renders = AtomicUsize::new(0);
    let render = |c: &DomainCapabilities| {
        renders.fetch_add(1, Ordering::SeqCst);
        capsd_core::xml::to_xml(c).into_bytes()
    };
    for (limit, kept) in [(None, false), (Some(64), true)] {
        recorded.host.kvm_max_vcpus = limit;
        w.cache().invalidate(&w.binary).unwrap();
        w.cache().get_or_probe(&w.binary, || Ok(recorded.clone())).unwrap();
        let before = renders.load(Ordering::SeqCst);
        let driver = driver_qemu::QemuDriver::new().with_cache(w.cache());
        let a = driver.domain_capabilities_rendered(&q, "xml", &render).unwrap();
        let b = driver.domain_capabilities_rendered(&q, "xml", &render).unwrap();
        assert_eq!(a, b);
        let derived = renders.load(Ordering::SeqCst) - before;
        assert_eq!(derived, if kept { 1 } else { 2 }, "vCPU limit {limit:?}");
    }
}

/// An x86 probe whose runs asked `query-cpu-definitions` (two models) and expanded the
/// models only when `models`; its host facts have libvirt's x86 cpu_map when `cpu_map`.
fn x86_probe(binary: &Path, models: bool, cpu_map: bool) -> ProbeData {
    use driver_qemu::cpu::plan::static_expansion_args;
    let mut d = fake_probe(binary, "x86");
    for t in d.runs.values_mut() {
        t.exchanges.push(Exchange {
            execute: "query-target".into(),
            arguments: None,
            reply: Reply::ok(json!({"arch": "x86_64"})),
        });
        t.exchanges.push(Exchange {
            execute: "query-cpu-definitions".into(),
            arguments: None,
            reply: Reply::ok(json!([{"name": "qemu64"}, {"name": "EPYC"}, {"name": "max"}])),
        });
        if models {
            for m in ["qemu64", "EPYC"] {
                t.exchanges.push(Exchange {
                    execute: "query-cpu-model-expansion".into(),
                    arguments: Some(static_expansion_args(m, None)),
                    reply: Reply::ok(json!({"model": {"name": m, "props": {}}})),
                });
            }
        }
    }
    if cpu_map {
        d.host.cpu_map = Some(driver_qemu::cpu::cpumap::CpuMap { x86: Some(Default::default()), ..Default::default() });
    }
    d
}

/// A probe with libvirt's x86 cpu_map skips QEMU's definition of every model; its record is
/// served to lookups (whose host facts are the record's). A record lacking them whose host
/// facts say the models are decoded from QEMU alone (which a probe never stores, but a
/// record given other host facts would be) is never served: the lookup probes again.
#[test]
fn a_record_without_the_model_expansions_is_served_only_where_they_are_not_read() {
    let w = World::new();
    let n = AtomicUsize::new(0);
    let lookup = |models, cpu_map| {
        w.cache()
            .get_or_probe(&w.binary, || {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(x86_probe(&w.binary, models, cpu_map))
            })
            .unwrap()
            .1
    };
    // With the map, no expansions: stored, then served from the file.
    assert_eq!(lookup(false, true), CacheOutcome::Miss);
    assert_eq!(lookup(false, true), CacheOutcome::Hit);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    // Without the map and without the expansions: stored, never served.
    w.cache().invalidate(&w.binary).unwrap();
    assert_eq!(lookup(false, false), CacheOutcome::Miss);
    assert_eq!(lookup(true, false), CacheOutcome::Miss);
    assert_eq!(n.load(Ordering::SeqCst), 3);
    // The record that has them is.
    assert_eq!(lookup(true, false), CacheOutcome::Hit);
    assert_eq!(n.load(Ordering::SeqCst), 3);
}
