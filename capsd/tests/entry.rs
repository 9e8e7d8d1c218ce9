//! The process around the commands: capsd starts at its own entry point, not std's, and
//! must still do what std's did for it (`SIGPIPE` ignored), end with the status the command
//! chose and leave nothing unwritten.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

fn capsd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsd"));
    c.env_remove("CAPSD_CACHE_DIR").env_remove("CAPSD_PLUGIN_DIR").env_remove("CAPSD_PLUGIN_TIMEOUT_MS");
    c
}

/// The built-in test document, whole: everything written before the process ended.
#[test]
fn output_is_complete_and_the_status_is_kept() {
    let ok = capsd().args(["domcapabilities", "--driver", "test"]).output().expect("running capsd");
    assert!(ok.status.success(), "{ok:?}");
    let text = String::from_utf8(ok.stdout).expect("UTF-8");
    assert!(text.starts_with("<domainCapabilities>") && text.ends_with("</domainCapabilities>\n"), "{text}");

    let bad = capsd().args(["domcapabilities", "--driver", "test", "--arch", "nonesuch"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("capsd: error:"), "{bad:?}");
    // A status of clap's own (a usage error) passes through too.
    let usage = capsd().args(["domcapabilities", "--bogus"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

/// Writing to a pipe nobody reads is an error the command reports, not death by `SIGPIPE`.
#[test]
fn a_closed_pipe_is_an_error_not_a_signal() {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = capsd()
        .args(["domcapabilities", "--driver", "test"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("running capsd");
    assert_eq!(out.status.signal(), None, "{out:?}");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writing to standard output") && err.contains("Broken pipe"), "{err}");
}

/// The unwinder is linked in (`libgcc_eh`, see main.rs): the executable does not load
/// `libgcc_s.so.1` at start.
#[test]
fn the_executable_does_not_need_libgcc_s() {
    let out = Command::new("readelf")
        .args(["--dynamic", env!("CARGO_BIN_EXE_capsd")])
        .output()
        .expect("running readelf (binutils, installed with gcc)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(needed.iter().any(|l| l.contains("libc.so")), "{text}");
    assert!(!needed.iter().any(|l| l.contains("libgcc_s")), "{needed:?}");
}
