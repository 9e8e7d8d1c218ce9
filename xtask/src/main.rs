//! xtask: the project's developer commands (`cargo xtask <task>`), one module per task.

mod bench;
mod conformance;
mod corpus;
mod deb;
mod record_qemu;
mod stacks;
mod test;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        None | Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("bench") => bench::run(rest),
        Some("test") => test::run(rest),
        Some("record-qemu") => record_qemu::run(rest),
        Some("conformance") => conformance::run(rest),
        Some("corpus") => corpus::run(rest),
        Some("deb") => deb::run(rest),
        Some(other) => bail!("unknown task '{other}'\n\n{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask <task> [args]

tasks:
  bench [core|qemu|agent|plugin|stacks|fleet]...
                               run benchmarks (all when none named) and print figures;
                               fleet: --hosts N (default 1000), --members 1|3 (etcd members)
  test [--quick]               the whole test suite as CI runs it (fmt, clippy, tests, examples)
  record-qemu [--oracle DIR] BINARY...|all
                               record QEMU probes (and libvirt's answers) as replay fixtures
  conformance [--keep DIR]     compare capsd with libvirt on this host, case by case
  corpus [--release V]... [--ratchet-add] [--keep DIR]
                               libvirt's own test corpus (Debian's libvirt 9.0.0 and 11.3.0
                               sources, fetched into target/corpus): replay every transcript
                               and compare with the documents libvirt's domaincapstest prints
  deb [--test] [--suite S]...  build target/debian/capsd_<version>_<arch>.deb; --test installs
                               and checks it in clean Debian 12/13 chroots (as root; S:
                               bookworm, trixie; chroots cached in /var/lib/capsd-deb-test)
  help                         this text";
