//! The conformance suite run against driver-lxc on this host.
//!
//! libvirt defines no domain capabilities for LXC, so driver-lxc states some enums libvirt
//! does not document (container namespaces, cgroups, filesystem and interface types); they are passed to
//! the suite explicitly as extensions below, so any other unknown enum still fails.

use capsd_core::Query;
use capsd_tests::conformance::{self, Options};
use capsd_tests::enums::Values;
use driver_lxc::LxcDriver;

fn extensions() -> Vec<(String, String, Values)> {
    let open = |k: &str, n: &str| (k.to_owned(), n.to_owned(), Values::Open);
    vec![
        ("os".to_owned(), "type".to_owned(), Values::Closed(&["exe"])),
        (
            "os".to_owned(),
            "namespaces".to_owned(),
            Values::Closed(&["mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"]),
        ),
        ("os".to_owned(), "userns".to_owned(), Values::Closed(&["idmap", "unprivileged"])),
        ("os".to_owned(), "cgroup".to_owned(), Values::Closed(&["v1", "v2"])),
        open("os", "cgroupControllers"),
        (
            "devices/filesystem".to_owned(),
            "type".to_owned(),
            Values::Closed(&["mount", "block", "file", "template", "ram", "bind", "volume"]),
        ),
        ("devices/filesystem".to_owned(), "procViews".to_owned(), Values::Closed(&["meminfo"])),
        // <interface type=...> words of the domain XML.
        (
            "devices/interface".to_owned(),
            "type".to_owned(),
            Values::Closed(&[
                "user",
                "ethernet",
                "vhostuser",
                "server",
                "client",
                "mcast",
                "network",
                "bridge",
                "internal",
                "direct",
                "hostdev",
                "udp",
                "vdpa",
                "null",
                "vds",
            ]),
        ),
    ]
}

#[test]
fn lxc_on_this_host() {
    let d = LxcDriver::new();
    let arch = capsd_tests::conformance::host_arch();
    let queries = [
        Query::default(),
        Query { virt_type: Some("lxc".into()), ..Query::default() },
        Query { arch: Some(arch.into()), virt_type: Some("lxc".into()), ..Query::default() },
    ];
    let opts = Options { extra_enums: extensions(), ..Options::default() };
    let report = conformance::assert_conforms_with(&d, &queries, &opts);
    eprintln!("{report}");
}
