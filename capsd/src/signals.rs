//! The CLI's end on SIGINT, SIGTERM and SIGHUP: the running probes are killed and their
//! private directories removed before capsd dies of the signal (with the default action, so
//! the exit status still says which signal). The signals are blocked in every thread and
//! taken by one thread with `sigwait`, so the cleanup runs as ordinary code, not in a
//! signal handler. The agent (`serve`) has its own shutdown and does not use this.

use anyhow::{Context, Result};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};

/// [`cleanup_on_signals`] when a probe is about to start (see
/// [`crate::registry::before_probes`]), once per process: a command whose answer may come
/// from the probe cache (`domcapabilities`) starts no signal thread for a warm answer. The
/// hook runs on the thread that is about to probe, before the probe starts any thread, so
/// for a command with no other thread every thread that exists during a probe has the
/// signals blocked.
pub fn cleanup_on_signals_before_probes() {
    crate::registry::before_probes(|| {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Err(e) = cleanup_on_signals() {
                tracing::warn!(error = %format!("{e:#}"), "an interrupted probe may leave files behind");
            }
        });
    });
}

/// Block the signals in this thread (and so in every thread it starts afterwards: call it
/// before any) and start the thread that handles them.
pub fn cleanup_on_signals() -> Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking SIGINT/SIGTERM/SIGHUP")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            tracing::info!(signal = %sig, "interrupted: stopping probes");
            crate::registry::abort_probes();
            // SAFETY: restores the default action of one signal; no handler is involved.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
            let _ = set.thread_unblock();
            let _ = signal::raise(sig);
            std::process::exit(128 + sig as i32);
        })
        .context("starting the signal thread")?;
    Ok(())
}
