//! `capsd --version` and the hidden `capsd generate-assets` (man pages, completions).

use std::process::{Command, Output};

fn capsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().unwrap()
}

/// The subcommands `capsd --help` lists.
fn subcommands() -> Vec<String> {
    subcommands_of(&[])
}

/// The subcommands `capsd PATH... --help` lists (none when it lists no Commands).
fn subcommands_of(path: &[&str]) -> Vec<String> {
    let help = String::from_utf8(capsd(&[path, &["--help"]].concat()).stdout).unwrap();
    let Some(listed) = help.split("Commands:\n").nth(1) else { return Vec::new() };
    let listed = listed.split("\n\n").next().unwrap();
    listed.lines().map(|l| l.split_whitespace().next().unwrap().to_owned()).filter(|c| c != "help").collect()
}

#[test]
fn version_names_the_commit_and_the_drivers_built_in() {
    let out = capsd(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().unwrap();
    let commit = match std::env::var("CAPSD_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => String::from_utf8(head.stdout).unwrap().trim().to_owned(),
    };
    assert!(!commit.is_empty());
    let expected =
        format!("capsd {}\ncommit: {commit}\ndrivers built in: qemu, xen, lxc, test\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(text, expected);
    let short = String::from_utf8(capsd(&["-V"]).stdout).unwrap();
    assert_eq!(short, format!("capsd {} ({commit})\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn man_pages_and_completions_cover_every_subcommand_and_hide_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let (man, comp) = (dir.path().join("man"), dir.path().join("comp"));
    std::fs::create_dir_all(&man).unwrap();
    std::fs::create_dir_all(&comp).unwrap();
    let out = capsd(&["generate-assets", "--man", man.to_str().unwrap(), "--completions", comp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let subs = subcommands();
    assert!(subs.contains(&"domcapabilities".to_owned()) && subs.len() >= 10, "{subs:?}");
    let mut pages: Vec<String> =
        std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut expected: Vec<String> = subs.iter().map(|s| format!("capsd-{s}.1")).collect();
    // Nested subcommands (capsd fleet check) have pages of their own.
    for s in &subs {
        expected.extend(subcommands_of(&[s]).iter().map(|n| format!("capsd-{s}-{n}.1")));
    }
    expected.push("capsd.1".to_owned());
    expected.sort();
    assert_eq!(pages, expected);
    // The page says what --help says.
    let page = std::fs::read_to_string(man.join("capsd-serve.1")).unwrap();
    let version = format!("capsd {} (", env!("CARGO_PKG_VERSION"));
    assert!(page.contains(&format!(".TH capsd-serve 1  \"{version}")), "{page}");
    assert!(page.contains("LISTEN_FDS"), "the serve page lacks the socket activation note");

    for file in ["capsd.bash", "_capsd", "capsd.fish"] {
        let text = std::fs::read_to_string(comp.join(file)).unwrap();
        for s in &subs {
            assert!(text.contains(s.as_str()), "{file} lacks {s}");
        }
        for hidden in ["generate-assets", "plugin-host"] {
            assert!(!text.contains(hidden), "{file} offers the hidden {hidden}");
        }
    }
}

#[test]
fn generate_assets_names_a_missing_directory() {
    let out = capsd(&["generate-assets", "--man", "/nonexistent/capsd-man"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--man /nonexistent/capsd-man: not an existing directory"), "{err}");
    let out = capsd(&["generate-assets"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nothing to write"));
}
