//! Plugins out of process: capsd runs every plugin it vetted in a helper process of its own,
//! so a plugin that crashes, aborts, exits or hangs fails only its own requests.
//!
//! - [`supervisor`]: capsd's side, [`HostedPlugin`], a [`capsd_core::DomainCapsDriver`]
//!   that starts the helper on demand, sends one request at a time (others queue), bounds
//!   each call by a deadline, kills the helper's process group when it is exceeded, and
//!   restarts a failed helper with exponential, capped backoff.
//! - [`helper`]: the helper's side, run by `capsd plugin-host`: loads the one vetted file
//!   (by descriptor, after checking it is still the vetted inode) and answers requests.
//! - [`proto`]: the versioned, length-prefixed frames between them.
//!
//! Helpers are started with a socket pair on descriptor 3, stdin and stdout on `/dev/null`,
//! stderr shared with capsd (its log), every other descriptor closed, `PR_SET_PDEATHSIG`
//! (SIGKILL), `PR_SET_NO_NEW_PRIVS`, in a process group of their own, as the user capsd
//! runs as, with capsd's environment.

pub mod helper;
pub mod proto;
pub mod supervisor;

pub use supervisor::{HostOptions, HostedPlugin};
