//! A small blocking QMP client over a Unix socket: read the greeting, negotiate
//! capabilities, then run commands. Commands can be pipelined: [`QmpClient::run_batch`]
//! writes a whole batch before reading replies, matching replies to commands by `id`, so a
//! stage of hundreds of `device-list-properties` costs one round trip of latency instead of
//! hundreds. Asynchronous events are skipped. Every read has a deadline; garbage, EOF and
//! timeouts are errors that name the command that was waiting.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::probe_data::{Exchange, QmpError, Reply};

/// One QMP command to send: what the probe plan's stages (`crate::plan`) produce and
/// [`QmpClient::run_batch`] sends. It lives here, below every stage, so that the stage
/// modules (`cpu::plan`, `derive::plan`) and the plan that joins them depend on it in one
/// direction only.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Option<Value>,
}

impl Request {
    pub fn new(execute: &str) -> Self {
        Request { execute: execute.to_owned(), arguments: None }
    }
    pub fn with_args(execute: &str, arguments: Value) -> Self {
        Request { execute: execute.to_owned(), arguments: Some(arguments) }
    }
}

/// Why talking QMP failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpClientError {
    #[error("QMP I/O error while {during}: {source}")]
    Io {
        during: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP timed out after {timeout:?} while {during}")]
    Timeout { during: String, timeout: Duration },
    #[error("QMP connection closed by QEMU while {during}")]
    Eof { during: String },
    #[error("QMP sent something that is not a QMP message while {during}: {line:?}")]
    Garbage { during: String, line: String },
    #[error("QMP command '{command}' failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
}

/// The `during` of an error met before QEMU's greeting arrived.
pub const GREETING: &str = "waiting for the QMP greeting";

/// Timeouts of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for any single reply (and the greeting).
    pub per_command: Duration,
    /// Longest a whole session may take, from connect to the last reply.
    pub overall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // libvirt waits for a probe's replies without a limit; the agent answers 504 after its
        // own request timeout (60 s) whatever these are.
        Timeouts { per_command: Duration::from_secs(30), overall: Duration::from_secs(60) }
    }
}

/// A QMP session in command mode.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeouts: Timeouts,
    start: Instant,
    next_id: u64,
    greeting: Value,
    line: String,
}

const MAX_LINE: usize = 64 << 20;

/// Batches up to this size are written before reading (they fit in a socket buffer).
const INLINE_WRITE: usize = 32 << 10;

impl QmpClient {
    /// Take over a connected stream: read the greeting and send `qmp_capabilities`.
    pub fn handshake(stream: UnixStream, timeouts: Timeouts) -> Result<QmpClient, QmpClientError> {
        let writer =
            stream.try_clone().map_err(|source| QmpClientError::Io { during: "cloning socket".into(), source })?;
        let mut c = QmpClient {
            reader: BufReader::with_capacity(1 << 16, stream),
            writer,
            timeouts,
            start: Instant::now(),
            next_id: 0,
            greeting: Value::Null,
            line: String::new(),
        };
        let g = c.read_message(GREETING)?;
        match g.get("QMP") {
            Some(q) => c.greeting = q.clone(),
            None => return Err(QmpClientError::Garbage { during: GREETING.into(), line: g.to_string() }),
        }
        c.execute(&Request::new("qmp_capabilities")).and_then(|e| match e.reply.into_result() {
            Ok(_) => Ok(()),
            Err(err) => Err(QmpClientError::Command { command: e.execute, class: err.class, desc: err.desc }),
        })?;
        Ok(c)
    }

    /// The greeting's `QMP` object.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Run one command and return its exchange (a QMP error reply is `Ok` with `Err` inside).
    pub fn execute(&mut self, req: &Request) -> Result<Exchange, QmpClientError> {
        Ok(self.run_batch(std::slice::from_ref(req))?.remove(0))
    }

    /// Send every request, then read every reply; the exchanges come back in request order.
    pub fn run_batch(&mut self, reqs: &[Request]) -> Result<Vec<Exchange>, QmpClientError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let first_id = self.next_id;
        let mut buf = Vec::with_capacity(reqs.len() * 64);
        for (i, r) in reqs.iter().enumerate() {
            let mut msg = json!({ "execute": r.execute, "id": first_id + i as u64 });
            if let Some(a) = &r.arguments {
                msg["arguments"] = a.clone();
            }
            serde_json::to_writer(&mut buf, &msg).map_err(|e| QmpClientError::Io {
                during: format!("encoding '{}'", r.execute),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        self.next_id += reqs.len() as u64;
        let during = format!("sending '{}'", reqs[0].execute);
        self.writer.set_write_timeout(Some(self.remaining(&during)?)).ok();
        let per_command = self.timeouts.per_command;
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                QmpClientError::Timeout { during: during.clone(), timeout: per_command }
            }
            _ => QmpClientError::Io { during: during.clone(), source },
        };
        if buf.len() <= INLINE_WRITE {
            // Fits in the socket buffer: QEMU cannot block us before we read.
            self.writer.write_all(&buf).map_err(io)?;
            return self.read_replies(reqs, first_id);
        }
        // A large batch: write from another thread while replies are read, so that neither
        // side waits for the other with a full buffer.
        let mut writer = self.writer.try_clone().map_err(io)?;
        let stop = self.writer.try_clone().map_err(io)?;
        std::thread::scope(|s| {
            let w = s.spawn(move || writer.write_all(&buf));
            let replies = self.read_replies(reqs, first_id);
            if replies.is_err() {
                // Unblock the writer if QEMU stopped reading.
                let _ = stop.shutdown(std::net::Shutdown::Both);
            }
            let written = w.join().unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")));
            let replies = replies?;
            written.map_err(io)?;
            Ok(replies)
        })
    }

    /// Read the replies to a batch sent with ids `first_id..`, skipping events.
    fn read_replies(&mut self, reqs: &[Request], first_id: u64) -> Result<Vec<Exchange>, QmpClientError> {
        let mut replies: Vec<Option<Result<Value, QmpError>>> = vec![None; reqs.len()];
        let mut got = 0;
        while got < reqs.len() {
            let waiting = replies.iter().position(Option::is_none).unwrap_or(0);
            let during = format!("waiting for the reply to '{}'", reqs[waiting].execute);
            let msg = self.read_message(&during)?;
            if msg.get("event").is_some() {
                continue;
            }
            let id = msg.get("id").and_then(Value::as_u64);
            let idx = match id {
                Some(id) if id >= first_id && id < first_id + reqs.len() as u64 => (id - first_id) as usize,
                _ => return Err(QmpClientError::Garbage { during, line: msg.to_string() }),
            };
            let reply = if let Some(r) = msg.get("return") {
                Ok(r.clone())
            } else if let Some(e) = msg.get("error") {
                Err(QmpError {
                    class: e.get("class").and_then(Value::as_str).unwrap_or("GenericError").to_owned(),
                    desc: e.get("desc").and_then(Value::as_str).unwrap_or("").to_owned(),
                })
            } else {
                return Err(QmpClientError::Garbage { during, line: msg.to_string() });
            };
            if replies[idx].replace(reply).is_none() {
                got += 1;
            }
        }
        Ok(reqs
            .iter()
            .zip(replies)
            .map(|(r, reply)| Exchange {
                execute: r.execute.clone(),
                arguments: r.arguments.clone(),
                reply: Reply::from(
                    reply.unwrap_or_else(|| Err(QmpError { class: "NoReply".into(), desc: String::new() })),
                ),
            })
            .collect())
    }

    fn remaining(&self, during: &str) -> Result<Duration, QmpClientError> {
        let left = self.timeouts.overall.checked_sub(self.start.elapsed()).unwrap_or_default();
        if left.is_zero() {
            return Err(QmpClientError::Timeout { during: during.to_owned(), timeout: self.timeouts.overall });
        }
        Ok(left.min(self.timeouts.per_command))
    }

    /// Read one JSON object line.
    fn read_message(&mut self, during: &str) -> Result<Value, QmpClientError> {
        let deadline = Instant::now() + self.remaining(during)?;
        self.line.clear();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(during, deadline));
            }
            self.reader.get_ref().set_read_timeout(Some(left)).ok();
            let before = self.line.len();
            match self.reader.read_line(&mut self.line) {
                Ok(0) => {
                    return Err(QmpClientError::Eof { during: during.to_owned() });
                }
                Ok(_) if self.line.ends_with('\n') => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if self.line.len() == before {
                        return Err(self.timeout_error(during, deadline));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(QmpClientError::Garbage { during: during.to_owned(), line: "(not UTF-8)".into() })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(QmpClientError::Io { during: during.to_owned(), source }),
            }
            if self.line.len() > MAX_LINE {
                return Err(QmpClientError::Garbage {
                    during: during.to_owned(),
                    line: "(line longer than 64 MiB)".into(),
                });
            }
        }
        let text = self.line.trim();
        match serde_json::from_str::<Value>(text) {
            Ok(v) if v.is_object() => Ok(v),
            _ => {
                let mut shown: String = text.chars().take(200).collect();
                if text.len() > shown.len() {
                    shown.push_str("...");
                }
                Err(QmpClientError::Garbage { during: during.to_owned(), line: shown })
            }
        }
    }

    fn timeout_error(&self, during: &str, _deadline: Instant) -> QmpClientError {
        let overall_left = self.timeouts.overall.checked_sub(self.start.elapsed()).unwrap_or_default();
        let timeout = if overall_left.is_zero() { self.timeouts.overall } else { self.timeouts.per_command };
        QmpClientError::Timeout { during: during.to_owned(), timeout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn short() -> Timeouts {
        // Generous for a loaded machine: the fakes answer at once or never.
        Timeouts { per_command: Duration::from_secs(2), overall: Duration::from_secs(20) }
    }

    /// A fake QEMU: sends a greeting, then answers each command line via `answer`.
    fn fake(
        server: UnixStream,
        answer: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut w = server.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n").unwrap();
            let r = BufReader::new(server);
            for line in r.lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap();
                for out in answer(&v) {
                    if w.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        })
    }

    #[test]
    fn pipelined_batch_with_events_and_errors_out_of_order() {
        let (c, s) = pair();
        // Answer in reverse pairs with an event in between to check id matching.
        let pending = std::sync::Mutex::new(Vec::<Value>::new());
        let t = fake(s, move |v| {
            let id = v["id"].clone();
            let cmd = v["execute"].as_str().unwrap().to_owned();
            let reply = if cmd == "bad" {
                json!({"error": {"class": "CommandNotFound", "desc": "no such"}, "id": id})
            } else {
                json!({"return": {"cmd": cmd, "args": v.get("arguments")}, "id": id})
            };
            if cmd == "qmp_capabilities" {
                return vec![format!("{reply}\r\n")];
            }
            let mut p = pending.lock().unwrap();
            p.push(reply);
            if p.len() == 2 {
                let b = p.pop().unwrap();
                let a = p.pop().unwrap();
                vec![format!("{b}\r\n"), "{\"event\": \"X\", \"timestamp\": {}}\r\n".into(), format!("{a}\r\n")]
            } else {
                vec![]
            }
        });
        let mut q = QmpClient::handshake(c, short()).unwrap();
        assert_eq!(q.greeting()["version"]["qemu"]["major"], 7);
        let reqs = vec![
            Request::new("query-version"),
            Request::new("bad"),
            Request::with_args("device-list-properties", json!({"typename": "virtio-blk-pci"})),
            Request::new("query-kvm"),
        ];
        let ex = q.run_batch(&reqs).unwrap();
        assert_eq!(ex.len(), 4);
        assert_eq!(ex[0].reply.get().unwrap()["cmd"], "query-version");
        assert_eq!(ex[1].reply.get().unwrap_err().class, "CommandNotFound");
        assert_eq!(ex[2].reply.get().unwrap()["args"]["typename"], "virtio-blk-pci");
        assert_eq!(ex[2].arguments.as_ref().unwrap()["typename"], "virtio-blk-pci");
        assert_eq!(ex[3].execute, "query-kvm");
        drop(q);
        t.join().unwrap();
    }

    #[test]
    fn large_batch_does_not_deadlock() {
        // 3000 commands (~200 KiB) with 1 KiB replies: more than both socket buffers hold,
        // so writing everything before reading would block forever.
        let (c, s) = pair();
        let _t = fake(s, |v| vec![format!("{}\r\n", json!({"return": {"pad": "x".repeat(1024)}, "id": v["id"]}))]);
        let mut q =
            QmpClient::handshake(c, Timeouts { per_command: Duration::from_secs(5), overall: Duration::from_secs(20) })
                .unwrap();
        let reqs: Vec<Request> = (0..3000)
            .map(|i| {
                Request::with_args("device-list-properties", json!({"typename": format!("device-type-number-{i:06}")}))
            })
            .collect();
        let ex = q.run_batch(&reqs).unwrap();
        assert_eq!(ex.len(), 3000);
        assert_eq!(ex[2999].arguments.as_ref().unwrap()["typename"], "device-type-number-002999");
        assert!(ex.iter().all(|e| e.reply.is_ok()));
    }

    #[test]
    fn garbage_names_the_command() {
        let (c, s) = pair();
        let _t = fake(s, |v| {
            if v["execute"] == "qmp_capabilities" {
                vec![format!("{}\r\n", json!({"return": {}, "id": v["id"]}))]
            } else {
                vec!["this is not json\r\n".into()]
            }
        });
        let mut q = QmpClient::handshake(c, short()).unwrap();
        let e = q.execute(&Request::new("query-machines")).unwrap_err();
        assert!(matches!(e, QmpClientError::Garbage { .. }), "{e}");
        assert!(e.to_string().contains("query-machines"), "{e}");
    }

    #[test]
    fn silence_times_out_with_command_name() {
        let (c, s) = pair();
        let _t = fake(s, |v| {
            if v["execute"] == "qmp_capabilities" {
                vec![format!("{}\r\n", json!({"return": {}, "id": v["id"]}))]
            } else {
                vec![]
            }
        });
        let mut q = QmpClient::handshake(c, short()).unwrap();
        let t0 = Instant::now();
        let e = q.execute(&Request::new("query-cpus-fast")).unwrap_err();
        // The per-command limit (2 s) ended it, not the peer: it never answers.
        assert!(t0.elapsed() < Duration::from_secs(60));
        assert!(matches!(e, QmpClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("query-cpus-fast"), "{e}");
    }

    #[test]
    fn eof_before_greeting() {
        let (c, s) = pair();
        drop(s);
        let e = QmpClient::handshake(c, short()).unwrap_err();
        assert!(matches!(e, QmpClientError::Eof { .. }), "{e}");
        assert!(e.to_string().contains("greeting"), "{e}");
    }

    #[test]
    fn greeting_must_be_qmp() {
        let (c, mut s) = pair();
        s.write_all(b"{\"hello\": 1}\n").unwrap();
        let e = QmpClient::handshake(c, short()).unwrap_err();
        assert!(matches!(e, QmpClientError::Garbage { .. }), "{e}");
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let _ = s.read_to_end(&mut rest);
    }

    #[test]
    fn capabilities_refused_is_command_error() {
        let (c, s) = pair();
        let _t = fake(s, |v| {
            vec![format!("{}\n", json!({"error": {"class": "GenericError", "desc": "nope"}, "id": v["id"]}))]
        });
        let e = QmpClient::handshake(c, short()).unwrap_err();
        assert!(e.to_string().contains("qmp_capabilities"), "{e}");
    }
}
