//! How driver-xen runs host commands (`xl info`): a [`CommandRunner`] trait with the real
//! implementation ([`SystemRunner`]) and a replaying one ([`RecordedRunner`]) that answers
//! from files written earlier, so tests see the same bytes a real host printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a command produced no usable output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{program} {args} exited with {status}: {stderr}")]
    Failed { program: String, args: String, status: String, stderr: String },
    /// The program printed something that is not UTF-8.
    #[error("{program} {args} printed output that is not UTF-8")]
    NotUtf8 { program: String, args: String },
    /// A replaying runner has no recording for this command.
    #[error("no recording for '{command}' in {dir}")]
    NotRecorded { command: String, dir: PathBuf },
}

/// Runs one command and returns its standard output.
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Run `program` with `args`; `Ok` carries stdout of a successful run.
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError>;
}

/// Runs commands on this machine with `std::process::Command`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError> {
        let prog = program.display().to_string();
        tracing::debug!(program = %prog, ?args, "running host command");
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| RunError::Spawn { program: prog.clone(), source })?;
        if !out.status.success() {
            return Err(RunError::Failed {
                program: prog,
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| RunError::NotUtf8 { program: prog, args: args.join(" ") })
    }
}

/// Answers commands from recordings: the output of `xl info` is the file `xl-info.out`
/// (program file name, then each argument, joined with `-`, plus `.out`) in one directory.
/// A command without a recording fails with [`RunError::NotRecorded`], as a missing
/// program would.
#[derive(Debug, Clone)]
pub struct RecordedRunner {
    dir: PathBuf,
    outputs: BTreeMap<String, String>,
}

impl RecordedRunner {
    /// Load every `*.out` file of `dir`. A missing directory means "nothing recorded".
    pub fn from_dir(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        let mut outputs = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry?.path();
                    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                    if let Some(key) = name.strip_suffix(".out") {
                        outputs.insert(key.to_owned(), std::fs::read_to_string(&path)?);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(RecordedRunner { dir, outputs })
    }

    /// A runner with the given recordings (key as described on the type).
    pub fn from_map(outputs: BTreeMap<String, String>) -> Self {
        RecordedRunner { dir: PathBuf::from("(memory)"), outputs }
    }

    /// The recording key of a command.
    pub fn key(program: &Path, args: &[&str]) -> String {
        let base = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::iter::once(base.as_str()).chain(args.iter().copied()).collect::<Vec<_>>().join("-")
    }
}

impl CommandRunner for RecordedRunner {
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError> {
        let key = Self::key(program, args);
        self.outputs.get(&key).cloned().ok_or_else(|| RunError::NotRecorded { command: key, dir: self.dir.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_runner_keys_by_program_name_and_args() {
        let mut m = BTreeMap::new();
        m.insert("xl-info".to_owned(), "host : x\n".to_owned());
        let r = RecordedRunner::from_map(m);
        assert_eq!(r.run(Path::new("/usr/sbin/xl"), &["info"]).unwrap(), "host : x\n");
        let err = r.run(Path::new("/usr/sbin/xl"), &["list"]).unwrap_err();
        assert!(err.to_string().contains("xl-list"), "{err}");
    }

    #[test]
    fn system_runner_reports_missing_program() {
        let err = SystemRunner.run(Path::new("/nonexistent/xl"), &["info"]).unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/xl"));
    }

    #[test]
    fn system_runner_reports_failure_status() {
        let err = SystemRunner.run(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains('3'), "{msg}");
    }
}
