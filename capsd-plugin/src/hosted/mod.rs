//! Plugins out of process: capsd runs every plugin it vetted in a helper process of its own,
//! which loads it (its initialisers and entry point run there, never in capsd) and answers
//! capsd's calls, so a plugin that crashes, aborts, exits or hangs, when loaded or when
//! called, fails only itself.
//!
//! - [`supervisor`]: capsd's side. [`start_dir`] checks a directory's files and starts a
//!   helper for each, all at once, at most one deadline in all; a helper that loads its
//!   plugin says hello with its name and becomes a [`HostedPlugin`], a
//!   [`capsd_core::DomainCapsDriver`] that sends one request at a time (others queue), bounds
//!   each call by a deadline, kills the helper when it is exceeded, and restarts a failed
//!   helper with exponential, capped backoff.
//! - [`helper`]: the helper's side, run by `capsd plugin-host`: loads the one vetted file
//!   (by descriptor, after checking it is still the vetted inode) and answers requests.
//! - [`launch`]: how helpers are started and their process trees ended ([`Launcher`]).
//! - [`proto`]: the versioned, length-prefixed frames between them.
//!
//! Helpers are started with a socket pair on descriptor 3, stdin and stdout on `/dev/null`,
//! stderr shared with capsd (its log), every other descriptor closed, `PR_SET_PDEATHSIG`
//! (SIGKILL), `PR_SET_NO_NEW_PRIVS`, as the user capsd runs as, with capsd's environment;
//! by [`launch::GroupLauncher`] in a process group of their own, by capsd's launcher as the
//! init of a PID namespace of their own.

pub mod helper;
pub mod launch;
pub mod proto;
pub mod supervisor;

pub use launch::{GroupLauncher, HelperProcess, Launcher};
pub use supervisor::{start_dir, HostOptions, HostedPlugin, StartFailure, StartReport};
