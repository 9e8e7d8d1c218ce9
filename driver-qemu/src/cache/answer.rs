//! Rendered answers kept beside the probe record they were derived from, so that a warm
//! `capsd domcapabilities` reads one small file instead of loading the probe and deriving.
//!
//! An answer file holds the bytes one query printed (XML or JSON) and, in its header, what
//! they were computed from: the query as the driver resolved it before probing (emulator,
//! arch, machine and virt type as given, target libvirt release, output form and options),
//! the whole invalidation key ([`CacheKey`]) the probe record was valid for, and the stamp
//! (inode, size, times) of that probe record's file. An answer is served only when all three
//! are byte for byte what the current lookup computes: any input that would re-probe (the
//! binary, a cpu_map file, a firmware descriptor, qemu.conf, the kernel, capsd itself, ...)
//! also voids every answer, and so does a probe record rewritten or removed
//! ([`ProbeCache::invalidate`]). Derivation is a pure function of the probe record and the
//! query, so nothing else can change the bytes.
//!
//! Files are trusted, opened and written exactly like probe records (the directory's and
//! file's owner and mode, `O_NOFOLLOW`, atomic replacement), and checked by a checksum of
//! the header and body; anything wrong is logged and the answer computed again.
//!
//! ```text
//! capsd-answer <file version> <header length> <body length> <checksum>\n
//! <header: query, probe record stamp, key; each length-prefixed bytes><body>
//! ```

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use std::hash::{Hash, Hasher};

use super::{checksum, entry_name, open_dir, open_trusted, write_atomic, CacheKey, FileProblem, FileStamp, ProbeCache};

const MAGIC: &str = "capsd-answer";
const VERSION: u32 = 2;
/// Largest answer read (a document is tens of KiB).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// The bytes of `value` as its `Hash` implementation feeds them: every field in order,
/// strings followed by a byte no UTF-8 text has, sequences and options by a length or
/// discriminant first, so two different keys give different bytes. Not a hash: the bytes
/// themselves are kept and compared. Native integer widths and byte order: an answer file
/// is read only by the program that wrote it (the key holds capsd's executable).
fn key_bytes(value: &impl Hash) -> Vec<u8> {
    struct Sink(Vec<u8>);
    impl Hasher for Sink {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }
    let mut sink = Sink(Vec::with_capacity(16 * 1024));
    value.hash(&mut sink);
    sink.0
}

/// The first length-prefixed part of `stored`, as [`header_bytes`] writes each, and what
/// follows it; `None` when `stored` is too short.
fn split_part(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = stored.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Whether `part` is exactly what [`key_bytes`] gives for `value`, compared as the value
/// is fed, without building those bytes (a warm lookup's key is about 16 KiB).
fn same_key_bytes(part: &[u8], value: &impl Hash) -> bool {
    struct Compare<'a> {
        rest: &'a [u8],
        same: bool,
    }
    impl Hasher for Compare<'_> {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            match self.rest.strip_prefix(bytes) {
                Some(rest) if self.same => self.rest = rest,
                _ => self.same = false,
            }
        }
    }
    let mut cmp = Compare { rest: part, same: true };
    value.hash(&mut cmp);
    cmp.same && cmp.rest.is_empty()
}

/// Whether `stored` is exactly the header [`header_bytes`] would make of these.
fn header_matches(stored: &[u8], query: &str, probe_file: &FileStamp, key: &CacheKey) -> bool {
    let parts = (|| {
        let (q, rest) = split_part(stored)?;
        let (p, rest) = split_part(rest)?;
        let (k, rest) = split_part(rest)?;
        rest.is_empty().then_some((q, p, k))
    })();
    parts.is_some_and(|(q, p, k)| q == query.as_bytes() && same_key_bytes(p, probe_file) && same_key_bytes(k, key))
}

/// The answer file of `query` for `binary`: `<probe entry stem>-<hash of the query>.answer`.
fn answer_name(binary: &Path, query: &str) -> String {
    let entry = entry_name(binary);
    let stem = entry.strip_suffix(".probe").unwrap_or(&entry);
    format!("{stem}-{:016x}.answer", checksum(query.as_bytes()))
}

/// The stamp of `binary`'s probe record in `dir` (not following a link), `None` when absent.
fn probe_file_stamp(dir: &File, binary: &Path) -> Option<FileStamp> {
    let st = nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        entry_name(binary).as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()?;
    Some(FileStamp::of_stat(String::new(), &st))
}

/// The header of an answer: the query's description, the probe record's stamp and the key
/// ([`key_bytes`]), each preceded by its length.
fn header_bytes(query: &str, probe_file: &FileStamp, key: &CacheKey) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [query.as_bytes(), &key_bytes(probe_file), &key_bytes(key)] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

impl ProbeCache {
    /// The answer kept for `query` (a description of everything besides the probe that the
    /// answer depends on) of `binary`, when it was derived from the probe record that is
    /// there now, under `key` (the current key). `None` (logged when the file was damaged
    /// or not ours) otherwise.
    pub fn answer(&self, binary: &Path, key: &CacheKey, query: &str) -> Option<Vec<u8>> {
        let name = answer_name(binary, query);
        match self.read_answer(binary, key, query, &name) {
            Ok(body) => Some(body),
            Err(FileProblem::Absent) => None,
            Err(FileProblem::Stale(what)) => {
                tracing::debug!(file = %self.dir().join(&name).display(), changed = %what, "kept answer is stale");
                None
            }
            Err(e) => {
                tracing::warn!(file = %self.dir().join(&name).display(), problem = %e, "kept answer ignored");
                None
            }
        }
    }

    fn read_answer(&self, binary: &Path, key: &CacheKey, query: &str, name: &str) -> Result<Vec<u8>, FileProblem> {
        use std::io::Read;
        let dir = open_dir(self.dir(), false)?;
        let f = match open_trusted(&dir, name) {
            Ok(f) => f,
            Err(FileProblem::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Err(FileProblem::Absent),
            Err(e) => return Err(e),
        };
        let probe_file = probe_file_stamp(&dir, binary).ok_or_else(|| FileProblem::Stale("the probe record".into()))?;
        // Read at once into a buffer of the file's size (not grown, copied and faulted in
        // step by step).
        let size = f.metadata()?.len().min(MAX_ANSWER + 1);
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
        (&f).take(MAX_ANSWER + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_ANSWER {
            return Err(FileProblem::Damaged(format!("larger than {MAX_ANSWER} bytes")));
        }
        let damaged = |s: &str| FileProblem::Damaged(s.to_owned());
        let nl = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| damaged("no header line"))?;
        let first = std::str::from_utf8(&bytes[..nl]).map_err(|_| damaged("header line is not text"))?;
        let parts: Vec<&str> = first.split(' ').collect();
        let [magic, version, hlen, blen, sum] = parts[..] else { return Err(damaged("malformed header line")) };
        if magic != MAGIC {
            return Err(damaged("not a capsd answer file"));
        }
        if version != VERSION.to_string() {
            return Err(FileProblem::OtherVersion(format!("answer file version {version}")));
        }
        let hlen: usize = hlen.parse().map_err(|_| damaged("bad header length"))?;
        let blen: usize = blen.parse().map_err(|_| damaged("bad body length"))?;
        let start = nl + 1;
        if start.checked_add(hlen).and_then(|h| h.checked_add(blen)) != Some(bytes.len()) {
            return Err(damaged("lengths do not match the file's size"));
        }
        let rest = &bytes[start..];
        if format!("{:016x}", checksum(rest)) != sum {
            return Err(damaged("checksum mismatch"));
        }
        if !header_matches(&rest[..hlen], query, &probe_file, key) {
            return Err(FileProblem::Stale("the probe record, the key or the query".into()));
        }
        bytes.drain(..start + hlen);
        Ok(bytes)
    }

    /// Keep `body`, the answer to `query` derived from `binary`'s probe record valid under
    /// `key`, for [`Self::answer`]. Only when that record is in the cache directory (an
    /// answer is never kept without the record it came from); failures are logged.
    pub fn store_answer(&self, binary: &Path, key: &CacheKey, query: &str, body: &[u8]) {
        let name = answer_name(binary, query);
        let stored = (|| -> Result<(), FileProblem> {
            let dir = open_dir(self.dir(), false)?;
            let Some(probe_file) = probe_file_stamp(&dir, binary) else { return Ok(()) };
            let header = header_bytes(query, &probe_file, key);
            let mut rest = header;
            let hlen = rest.len();
            rest.extend_from_slice(body);
            let mut out = format!("{MAGIC} {VERSION} {hlen} {} {:016x}\n", body.len(), checksum(&rest)).into_bytes();
            out.extend_from_slice(&rest);
            Ok(write_atomic(&dir, &name, &out)?)
        })();
        if let Err(e) = stored {
            tracing::debug!(file = %self.dir().join(&name).display(), problem = %e, "answer not kept");
        }
    }
}

/// Run `f` (a derivation) and say whether it logged a warning or an error: an answer whose
/// derivation warned (something omitted because it could not be read, say) is not kept,
/// so that every answer that omits for such a reason is printed with its warning, as
/// before answers were kept. Events reach the subscriber in place as before; this counts
/// them on the way, whatever level that subscriber shows.
pub(crate) fn warned_during<T>(f: impl FnOnce() -> T) -> (T, bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tracing::level_filters::LevelFilter;
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Level, Metadata, Subscriber};

    struct Counting {
        inner: tracing::Dispatch,
        warned: Arc<AtomicBool>,
    }
    fn counted(m: &Metadata<'_>) -> bool {
        m.is_event() && *m.level() <= Level::WARN
    }
    impl Subscriber for Counting {
        fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
            if counted(m) {
                Interest::sometimes()
            } else {
                self.inner.register_callsite(m)
            }
        }
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            counted(m) || self.inner.enabled(m)
        }
        fn max_level_hint(&self) -> Option<LevelFilter> {
            // The inner subscriber's hint is not public: no hint, every level asked.
            None
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.inner.new_span(a)
        }
        fn record(&self, span: &Id, values: &Record<'_>) {
            self.inner.record(span, values)
        }
        fn record_follows_from(&self, span: &Id, follows: &Id) {
            self.inner.record_follows_from(span, follows)
        }
        fn event(&self, e: &Event<'_>) {
            if counted(e.metadata()) {
                self.warned.store(true, Ordering::Relaxed);
                if !self.inner.enabled(e.metadata()) {
                    return;
                }
            }
            self.inner.event(e)
        }
        fn enter(&self, span: &Id) {
            self.inner.enter(span)
        }
        fn exit(&self, span: &Id) {
            self.inner.exit(span)
        }
        fn clone_span(&self, id: &Id) -> Id {
            self.inner.clone_span(id)
        }
        fn try_close(&self, id: Id) -> bool {
            self.inner.try_close(id)
        }
    }
    let warned = Arc::new(AtomicBool::new(false));
    let inner = tracing::dispatcher::get_default(Clone::clone);
    let counting = tracing::Dispatch::new(Counting { inner, warned: warned.clone() });
    let out = tracing::dispatcher::with_default(&counting, f);
    (out, warned.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{HostKey, KeySources};

    fn stamp(name: &str, size: u64) -> FileStamp {
        FileStamp { name: name.to_owned(), size, mtime_ns: 7, ctime_ns: 8, ino: 9, dev: 10 }
    }

    /// The header is compared as it is fed: the same verdict as building the bytes and
    /// comparing them, for equal inputs and for each kind of difference.
    #[test]
    fn a_header_matches_exactly_when_its_bytes_are_equal() {
        let key = CacheKey { binary: stamp("/usr/bin/qemu", 1), host: HostKey::read(&KeySources::host(), "1.0") };
        let probe = stamp("", 2);
        let stored = header_bytes("q", &probe, &key);
        let mut other_host = key.clone();
        other_host.host.kernel.push("other".into());
        let mut other_binary = key.clone();
        other_binary.binary.size += 1;
        let cases: Vec<(&str, FileStamp, CacheKey)> = vec![
            ("q", probe.clone(), key.clone()),
            ("q2", probe.clone(), key.clone()),
            ("", probe.clone(), key.clone()),
            ("q", stamp("", 3), key.clone()),
            ("q", probe.clone(), other_host),
            ("q", probe.clone(), other_binary),
        ];
        for (i, (q, p, k)) in cases.iter().enumerate() {
            let same = stored == header_bytes(q, p, k);
            assert_eq!(header_matches(&stored, q, p, k), same, "case {i}");
            assert_eq!(same, i == 0, "case {i}");
        }
        // Stored bytes cut short or followed by more are not the header.
        assert!(!header_matches(&stored[..stored.len() - 1], "q", &probe, &key));
        let mut longer = stored.clone();
        longer.push(0);
        assert!(!header_matches(&longer, "q", &probe, &key));
        assert!(!header_matches(&[], "q", &probe, &key));
    }
}
