//! The probe: start the binary once per accelerator (KVM when `/dev/kvm` is usable, and
//! TCG), the runs in parallel, run every stage of [`crate::plan::stages`] in each (a stage's
//! commands are pipelined: all sent, then all replies read), and return the transcripts with
//! the host facts as a [`ProbeData`]. [`probe_many`] probes several binaries at once.
//!
//! The stages only the CPU decoding from QEMU alone reads ([`crate::plan::cpu_model_stages`])
//! run last, and only when the host facts, read beside the runs, say that decoding is needed
//! (no x86 part in libvirt's cpu_map) or [`ProbeOptions::all_cpu_models`] asks them: with
//! libvirt's cpu_map they are 55 questions nobody reads. A run reaching them waits for the
//! host facts (read long before on any host seen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use capsd_core::DriverError;

use crate::host::HostFacts;
use crate::plan;
use crate::probe_data::{Accel, ProbeData, Transcript, PROBE_FORMAT_VERSION};
use crate::process::{ProbeProcess, ProcessError, ProcessOptions};
use crate::qmp::Request;

/// Options of a probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    pub process: ProcessOptions,
    /// Skip the KVM run even when `/dev/kvm` is usable.
    pub no_kvm: bool,
    /// Run this accelerator alone (when it is usable): what a query needs first, the other
    /// run left for later ([`crate::QemuDriver`] asks for it only when derivation needs
    /// it). Any failure of that run fails the probe, QEMU refusing the accelerator included
    /// (only both runs together decide that a refusal means "not here"); without usable KVM a
    /// KVM run alone gives no transcript.
    pub only: Option<Accel>,
    /// Ask QEMU's definition of every x86 CPU model even when libvirt's cpu_map is here (a
    /// recording replayed on hosts without it: `cargo xtask record-qemu`).
    pub all_cpu_models: bool,
}

/// Whether the runs ask the CPU model stages, decided once the host facts are read.
#[derive(Default)]
struct ModelsGate {
    decided: std::sync::Mutex<Option<bool>>,
    cv: std::sync::Condvar,
}

impl ModelsGate {
    fn decide(&self, ask: bool) {
        let mut d = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        d.get_or_insert(ask);
        self.cv.notify_all();
    }

    fn wait(&self) -> bool {
        let d = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        let d = self.cv.wait_while(d, |d| d.is_none()).unwrap_or_else(|e| e.into_inner());
        d.unwrap_or(true)
    }

    /// Read the host facts and decide; decides "ask" if reading them panics.
    fn read_host(&self, opts: &ProbeOptions) -> HostFacts {
        struct AskUnlessDecided<'a>(&'a ModelsGate);
        impl Drop for AskUnlessDecided<'_> {
            fn drop(&mut self) {
                self.0.decide(true);
            }
        }
        let _unless = AskUnlessDecided(self);
        let host = HostFacts::read();
        self.decide(opts.all_cpu_models || crate::cpu::decodes_from_qemu_alone(&host));
        host
    }
}

/// Probe one binary, reading the host facts too.
#[tracing::instrument(skip_all, fields(driver = "qemu", emulator = %binary.display()))]
pub fn probe(binary: &Path, opts: &ProbeOptions) -> Result<ProbeData, DriverError> {
    crate::process::explain_probe_user();
    let gate = ModelsGate::default();
    std::thread::scope(|s| {
        let host = s.spawn(|| gate.read_host(opts));
        let kvm_usable = kvm_usable_by_probe(opts);
        let runs = probe_runs(binary, kvm_usable, opts, &gate);
        let mut host = host
            .join()
            .map_err(|_| DriverError::probe_failed(binary.display().to_string(), "reading host facts panicked"))?;
        host.kvm_usable = kvm_usable;
        Ok(ProbeData { format_version: PROBE_FORMAT_VERSION, binary: binary.display().to_string(), runs: runs?, host })
    })
}

/// Probe several binaries at once (a pool of worker threads, each probing one binary's KVM
/// and TCG runs in parallel); the host facts are read once.
/// Results come back in the order of `binaries`.
pub fn probe_many(binaries: &[PathBuf], opts: &ProbeOptions) -> Vec<Result<ProbeData, DriverError>> {
    type Slot = std::sync::Mutex<Option<Result<BTreeMap<Accel, Transcript>, DriverError>>>;
    crate::process::explain_probe_user();
    let kvm_usable = kvm_usable_by_probe(opts);
    // A bounded pool: each binary runs up to two QEMU processes at once.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) * 2;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Slot> = binaries.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let (next, slots_ref) = (&next, &slots);
    let gate = ModelsGate::default();
    let gate = &gate;
    let host = std::thread::scope(|s| {
        let host = s.spawn(|| gate.read_host(opts));
        let pool: Vec<_> = (0..workers.min(binaries.len()))
            .map(|_| {
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(b) = binaries.get(i) else { break };
                    let r = probe_runs(b, kvm_usable, opts, gate);
                    if let Ok(mut slot) = slots_ref[i].lock() {
                        *slot = Some(r);
                    }
                })
            })
            .collect();
        for h in pool {
            let _ = h.join();
        }
        let mut host = host.join().unwrap_or_default();
        host.kvm_usable = kvm_usable;
        host
    });
    let runs: Vec<_> = slots
        .into_iter()
        .zip(binaries)
        .map(|(slot, b)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(DriverError::probe_failed(b.display().to_string(), "probe thread panicked")))
        })
        .collect();
    runs.into_iter()
        .zip(binaries)
        .map(|(r, b)| {
            r.map(|runs| ProbeData {
                format_version: PROBE_FORMAT_VERSION,
                binary: b.display().to_string(),
                runs,
                host: host.clone(),
            })
        })
        .collect()
}

/// The KVM and TCG runs of one binary, in parallel. A run whose QEMU refused to start with
/// its accelerator ([`ProcessError::refused_accel`]) while the other succeeds means this
/// binary cannot use that accelerator here (KVM: a foreign architecture; TCG: a KVM-only
/// build such as Debian's `qemu-system-x86_64-microvm`): its transcript is left out. Any
/// other failure of a run (a timeout, a broken QMP session, a crash) fails the probe: what
/// could not be probed is not a "no". When both fail, the probe fails with the TCG run's
/// error.
fn probe_runs(
    binary: &Path,
    kvm_usable: bool,
    opts: &ProbeOptions,
    gate: &ModelsGate,
) -> Result<BTreeMap<Accel, Transcript>, DriverError> {
    check_binary(binary, opts)?;
    let want_kvm = kvm_usable && !opts.no_kvm && opts.only != Some(Accel::Tcg);
    // One run only: any failure fails the probe, a refusal included (the caller knows what
    // else it has, and probes both runs when it needs their rules). Without usable KVM, a
    // KVM run alone is no run.
    if let Some(accel) = opts.only {
        let mut runs = BTreeMap::new();
        if accel == Accel::Tcg || want_kvm {
            let t = run_one(binary, accel, opts, gate)
                .map_err(|e| DriverError::probe_failed(binary.display().to_string(), e.to_string()))?;
            runs.insert(accel, t);
        }
        return Ok(runs);
    }
    let (kvm, tcg) = std::thread::scope(|s| {
        let kvm = want_kvm.then(|| s.spawn(|| run_one(binary, Accel::Kvm, opts, gate)));
        let tcg = run_one(binary, Accel::Tcg, opts, gate);
        let kvm = kvm.map(|h| {
            h.join().unwrap_or_else(|_| Err(ProcessError::TempDir(std::io::Error::other("KVM probe thread panicked"))))
        });
        (kvm, tcg)
    });
    let mut runs = BTreeMap::new();
    let tcg_err = match tcg {
        Ok(t) => {
            runs.insert(Accel::Tcg, t);
            None
        }
        Err(e) => Some(e),
    };
    let kvm_err = match kvm {
        Some(Ok(t)) => {
            runs.insert(Accel::Kvm, t);
            None
        }
        Some(Err(e)) => Some(e),
        None => None,
    };
    match (tcg_err, kvm_err) {
        // Neither accelerator works: the binary is broken (or not QEMU). A KVM run that
        // failed beside a TCG refusal (a KVM-only build) is the error to show.
        (Some(t), Some(k)) if !k.refused_accel() && t.refused_accel() => {
            return Err(DriverError::probe_failed(binary.display().to_string(), k.to_string()));
        }
        (Some(e), _) if runs.is_empty() => {
            return Err(DriverError::probe_failed(binary.display().to_string(), e.to_string()));
        }
        (Some(e), None) if e.refused_accel() => {
            tracing::info!(error = %e, "no TCG run for this binary (built without TCG?)")
        }
        (None, Some(e)) if e.refused_accel() => tracing::info!(error = %e, "no KVM run for this binary"),
        (Some(e), _) | (_, Some(e)) => {
            return Err(DriverError::probe_failed(binary.display().to_string(), e.to_string()));
        }
        (None, None) => {}
    }
    Ok(runs)
}

/// Whether the probe processes will be able to open `/dev/kvm`: as ourselves, we try; as
/// the probe user, a child with its identity tries (libvirt decides the same way, and then
/// does not probe KVM).
fn kvm_usable_by_probe(opts: &ProbeOptions) -> bool {
    match opts.process.user.as_ref().filter(|_| nix::unistd::geteuid().is_root()) {
        None => crate::host::kvm_usable(),
        Some(u) => u.can_open(std::path::Path::new("/dev/kvm")),
    }
}

/// A clear error for a path that cannot be an emulator, before starting anything. The field
/// is `emulatorbin`, the query parameter (as the cache key check names it). The descriptor
/// that will run when there is one (the binary opened once), else the path.
fn check_binary(binary: &Path, opts: &ProbeOptions) -> Result<(), DriverError> {
    use nix::libc;
    use std::os::unix::fs::PermissionsExt;
    let cannot = |e: std::io::Error| {
        DriverError::invalid("emulatorbin", binary.display().to_string(), format!("cannot check QEMU binary: {e}"))
    };
    let (is_file, mode) = match &opts.process.exec {
        Some(fd) => {
            let st =
                nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(fd.as_ref())).map_err(|e| cannot(e.into()))?;
            (st.st_mode & libc::S_IFMT == libc::S_IFREG, st.st_mode)
        }
        None => {
            let meta = std::fs::metadata(binary).map_err(cannot)?;
            (meta.is_file(), meta.permissions().mode())
        }
    };
    if !is_file {
        return Err(DriverError::invalid("emulatorbin", binary.display().to_string(), "not a regular file"));
    }
    if mode & 0o111 == 0 {
        return Err(DriverError::invalid("emulatorbin", binary.display().to_string(), "not executable"));
    }
    Ok(())
}

/// One QEMU process: start, connect, run every stage, kill. A run whose QMP session QEMU
/// restarted midway ([`ProcessError::is_session_restart`]) is run once more in a new process.
fn run_one(binary: &Path, accel: Accel, opts: &ProbeOptions, gate: &ModelsGate) -> Result<Transcript, ProcessError> {
    match run_once(binary, accel, opts, gate) {
        Err(e) if e.is_session_restart() => {
            tracing::warn!(binary = %binary.display(), ?accel, error = %e, "QEMU restarted its QMP session; probing again");
            run_once(binary, accel, opts, gate)
        }
        other => other,
    }
}

fn run_once(binary: &Path, accel: Accel, opts: &ProbeOptions, gate: &ModelsGate) -> Result<Transcript, ProcessError> {
    let t0 = Instant::now();
    let mut proc = ProbeProcess::start(binary, accel, &opts.process)?;
    let mut qmp = proc.connect(&opts.process)?;
    let started = t0.elapsed();
    let mut transcript = Transcript { greeting: qmp.greeting().clone(), exchanges: Vec::new() };
    let mut stages = plan::common_stages();
    let common = stages.len();
    stages.extend(plan::cpu_model_stages());
    for (i, stage) in stages.into_iter().enumerate() {
        if i == common && !gate.wait() {
            break;
        }
        let reqs: Vec<Request> = stage(accel, &transcript)
            .into_iter()
            .filter(|r| transcript.exchange(&r.execute, r.arguments.as_ref()).is_none())
            .collect();
        let ex = qmp.run_batch(&reqs).map_err(|e| proc.qmp_error(e))?;
        transcript.exchanges.extend(ex);
    }
    drop(qmp);
    proc.kill();
    tracing::debug!(?accel, ?started, total = ?t0.elapsed(), commands = transcript.exchanges.len(), "probe run done");
    Ok(transcript)
}
