//! Helpers of the agent tests: start `capsd serve` on a socket in a temporary directory,
//! a minimal HTTP/1.1 client, metric lookup.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Agent {
    /// Start `capsd serve` with `extra` arguments and wait for its socket.
    pub fn start(extra: &[&str]) -> Agent {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// The same in a directory the test prepared (files `extra` names).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        let socket = dir.path().join("capsd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, socket };
        agent.wait_ready();
        agent
    }

    pub fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not listen on {} within 20 s", self.socket.display());
    }

    pub fn get(&self, target: &str) -> Resp {
        self.get_with(target, &[])
    }

    pub fn get_with(&self, target: &str, headers: &[(&str, &str)]) -> Resp {
        http_get(UnixStream::connect(&self.socket).unwrap(), target, headers)
    }

    /// Stop with SIGTERM and wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request, `Connection: close`, whole response read.
pub fn http_get(mut s: impl Read + Write, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: capsd\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Resp { status, headers, body: body.to_owned() }
}

/// A token file (mode 0600) in `dir`, and its token.
pub fn token_file(dir: &std::path::Path) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let token = format!("t0k3n-{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let token = token.replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (p, token)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Connect to a loopback port, waiting for the agent to listen.
pub fn connect_tcp(port: u16) -> std::net::TcpStream {
    let t = Instant::now();
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if t.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A line of a process's `/proc/PID/status` (e.g. `VmHWM`, `Threads`), as a number (kB for
/// sizes).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The value of a sample line `name{labels} value`.
pub fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}
