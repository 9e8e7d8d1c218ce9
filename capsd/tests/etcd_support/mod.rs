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
    pub tls: bool,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.client_port)
    }
}

/// TLS for the members' client port: their certificate and key, and the CA whose
/// certificates clients must present.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug)]
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub tls: Option<ServerTls>,
}

impl Etcd {
    /// Ports for an `n`-member cluster, nothing started yet.
    pub fn plan(n: usize) -> Etcd {
        assert!(Path::new(ETCD).exists(), "{ETCD} is missing: run .ci/setup (package etcd-server)");
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                tls: false,
            })
            .collect();
        Etcd { dir: tempfile::tempdir().unwrap(), members, tls: None }
    }

    /// Start an `n`-member cluster whose client port needs TLS with a client certificate
    /// signed by `tls.client_ca`; `ready` says when a member answers (the caller's client).
    pub fn start_tls(n: usize, tls: ServerTls, ready: impl Fn(&str) -> bool) -> Etcd {
        let mut e = Etcd::plan(n);
        for m in &mut e.members {
            m.tls = true;
        }
        e.tls = Some(tls);
        e.spawn_all();
        for i in 0..n {
            let t = Instant::now();
            let ep = e.members[i].endpoint();
            while !ready(&ep) {
                if t.elapsed() > Duration::from_secs(30) {
                    let log = std::fs::read_to_string(e.dir.path().join(format!("m{i}.log"))).unwrap_or_default();
                    panic!("etcd member m{i} did not answer over TLS in 30 s; its log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        e
    }

    /// Start an `n`-member cluster and wait until it answers.
    pub fn start(n: usize) -> Etcd {
        let mut e = Etcd::plan(n);
        e.launch();
        e
    }

    /// Start every planned member and wait until each is healthy.
    pub fn launch(&mut self) {
        self.spawn_all();
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    fn spawn_all(&mut self) {
        let cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let cluster = cluster.join(",");
        for m in &mut self.members {
            let data: PathBuf = self.dir.path().join(&m.name);
            let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
            let mut cmd = Command::new(ETCD);
            if let Some(t) = &self.tls {
                cmd.arg("--cert-file")
                    .arg(&t.cert)
                    .arg("--key-file")
                    .arg(&t.key)
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&t.client_ca);
            }
            let child = cmd
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
