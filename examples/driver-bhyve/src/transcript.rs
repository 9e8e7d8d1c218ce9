//! Recorded host facts: a transcript of the commands the driver runs on a FreeBSD host and
//! what they printed, so the driver can answer on any host (and in tests) by replaying it.
//!
//! # Format (`transcript.txt`)
//! ```text
//! # free text before the first command is a comment
//! $ command -v bhyve
//! /usr/sbin/bhyve             <- the bhyve binary the probes ran
//! $ bhyve -h
//! Usage: bhyve ...            <- what `bhyve -h` wrote to standard error
//! $ bhyve -l bootrom
//! ...
//! $ ls -a /usr/local/share/uefi-firmware
//! .
//! ..
//! BHYVE_UEFI.fd               <- `ls -a` output, one entry a line, in directory order
//! ```
//! A line starting with `$ ` starts a command; the lines up to the next command are its
//! output. For `bhyve` that is standard error (where bhyve writes usage and errors); for
//! `ls -a DIR` it is the listing, or a single `ls: ...` error line when the directory could
//! not be opened.

use std::path::{Path, PathBuf};

/// One recorded command and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The words after `$ ` (`["bhyve", "-s", "0,ahci"]`).
    pub argv: Vec<String>,
    pub output: String,
}

/// A parsed transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

/// Why a transcript could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl Transcript {
    /// Parse transcript text read from `path` (used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, TranscriptError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                let argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    return Err(TranscriptError {
                        path: path.to_owned(),
                        line: i + 1,
                        message: "empty command".into(),
                    });
                }
                entries.push(Entry { argv, output: String::new() });
            } else if let Some(last) = entries.last_mut() {
                last.output.push_str(line);
                last.output.push('\n');
            } else if !(line.starts_with('#') || line.trim().is_empty()) {
                return Err(TranscriptError {
                    path: path.to_owned(),
                    line: i + 1,
                    message: "output before the first `$ command` line".into(),
                });
            }
        }
        Ok(Transcript { path: path.to_owned(), entries })
    }

    /// The output recorded for exactly this command line.
    pub fn output(&self, argv: &[&str]) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.argv.iter().map(String::as_str).eq(argv.iter().copied()))
            .map(|e| e.output.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_outputs() {
        let t =
            Transcript::parse(Path::new("t"), "# rec\n\n$ bhyve -h\nUsage: x\n  -h: help\n$ ls -a /foo\n.\n..\nbar\n")
                .unwrap();
        assert_eq!(t.output(&["bhyve", "-h"]), Some("Usage: x\n  -h: help\n"));
        assert_eq!(t.output(&["ls", "-a", "/foo"]), Some(".\n..\nbar\n"));
        assert_eq!(t.output(&["bhyve", "-s", "0,ahci"]), None);
    }

    #[test]
    fn output_before_a_command_names_the_line() {
        let e = Transcript::parse(Path::new("/r/transcript.txt"), "# c\nstray\n$ bhyve -h\n").unwrap_err();
        assert_eq!(e.to_string(), "/r/transcript.txt:2: output before the first `$ command` line");
    }
}
