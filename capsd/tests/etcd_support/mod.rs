//! Real etcd for the fleet tests: Debian's `etcd` binary (package etcd-server, installed by
//! `.ci/setup`), one or more members on loopback with their own data directories and free
//! ports, killed when dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

#[derive(Debug)]
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

impl Etcd {
    /// Ports for an `n`-member cluster, nothing started yet.
    pub fn plan(n: usize) -> Etcd {
        assert!(Path::new(ETCD).exists(), "{ETCD} is missing: run .ci/setup (package etcd-server)");
        let members = (0..n)
            .map(|i| Member { name: format!("m{i}"), client_port: free_port(), peer_port: free_port(), child: None })
            .collect();
        Etcd { dir: tempfile::tempdir().unwrap(), members }
    }

    /// Start an `n`-member cluster and wait until it answers.
    pub fn start(n: usize) -> Etcd {
        let mut e = Etcd::plan(n);
        e.launch();
        e
    }

    /// Start every planned member and wait until each is healthy.
    pub fn launch(&mut self) {
        let cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let cluster = cluster.join(",");
        for m in &mut self.members {
            let data: PathBuf = self.dir.path().join(&m.name);
            let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
            let child = Command::new(ETCD)
                .arg("--name")
                .arg(&m.name)
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(m.endpoint())
                .arg("--advertise-client-urls")
                .arg(m.endpoint())
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{}", m.peer_port))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{}", m.peer_port))
                .arg("--initial-cluster")
                .arg(&cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(format!("capsd-test-{}", std::process::id()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            m.child = Some(child);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    fn wait_healthy(&self, i: usize) {
        let m = &self.members[i];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if health(m.client_port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default();
        panic!("etcd member {} did not become healthy in 30 s; its log:\n{log}", m.name);
    }

    /// Every member's endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// etcd's `/health` on a client port says `"health":"true"`.
pub fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}
