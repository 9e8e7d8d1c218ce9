//! The framed protocol between capsd and a plugin helper process, over a Unix stream socket
//! pair. Version [`VERSION`].
//!
//! Every frame is `len: u32 (little endian) | version: u8 | tag: u8 | body`, where `len`
//! counts the version, tag and body bytes. A reader refuses a frame longer than its limit
//! before reading the body, a version other than [`VERSION`], and an unknown tag.
//!
//! | tag | direction | body |
//! |-----|-----------|------|
//! | 1 `Hello` | helper → capsd, once, after loading | the plugin's driver name (UTF-8) |
//! | 2 `LoadFailed` | helper → capsd, instead of `Hello` | why the plugin did not load (UTF-8) |
//! | 10 `Availability` | capsd → helper | empty |
//! | 11 `DomainCapabilities` | capsd → helper | the query as the ABI's JSON |
//! | 20 `Reply` | helper → capsd | `kind: u32 | code: u32 | data`: the plugin's reply as it gave it (`REPLY_*`, `ERR_*`) |
//! | 21 `HostError` | helper → capsd | why the plugin's reply could not be relayed (UTF-8) |
//! | 30 `Ended` | helper's init → capsd | `status: i32`: the raw wait status of the helper's worker, which a signal ended (see [`super::helper`]) |
//!
//! One request is answered before the next is sent. The helper relays what the plugin
//! returned without reading it; capsd reads documents with capsd-core's strict readers.

use std::io::{Read, Write};

use crate::loader::MAX_REPLY;

/// The protocol version this crate speaks; both ends are the same capsd binary.
pub const VERSION: u8 = 1;

/// Largest frame capsd accepts from a helper: a reply of [`MAX_REPLY`] bytes and its header.
pub const MAX_FROM_HELPER: usize = MAX_REPLY + 16;

/// Largest frame a helper accepts from capsd (a query is a few hundred bytes).
pub const MAX_FROM_CAPSD: usize = 64 * 1024;

const TAG_HELLO: u8 = 1;
const TAG_LOAD_FAILED: u8 = 2;
const TAG_AVAILABILITY: u8 = 10;
const TAG_DOMAIN_CAPABILITIES: u8 = 11;
const TAG_REPLY: u8 = 20;
const TAG_HOST_ERROR: u8 = 21;
const TAG_ENDED: u8 = 30;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello { name: String },
    LoadFailed { message: String },
    Availability,
    DomainCapabilities { query: Vec<u8> },
    Reply { kind: u32, code: u32, data: Vec<u8> },
    HostError { message: String },
    Ended { status: i32 },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("the connection was closed")]
    Closed,
    #[error("reading the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame of protocol version {found}; this capsd speaks version {VERSION}")]
    Version { found: u8 },
    #[error("frame with unknown tag {tag}")]
    UnknownTag { tag: u8 },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl ProtoError {
    /// Whether the read ran past its deadline (a socket read timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProtoError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

impl Frame {
    /// The frame's kind, for messages (never its body, which may be large).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::LoadFailed { .. } => "load-failed",
            Frame::Availability => "availability",
            Frame::DomainCapabilities { .. } => "domain-capabilities",
            Frame::Reply { .. } => "reply",
            Frame::HostError { .. } => "host-error",
            Frame::Ended { .. } => "ended",
        }
    }

    fn tag_and_body(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Hello { name } => (TAG_HELLO, name.as_bytes().to_vec()),
            Frame::LoadFailed { message } => (TAG_LOAD_FAILED, message.as_bytes().to_vec()),
            Frame::Availability => (TAG_AVAILABILITY, Vec::new()),
            Frame::DomainCapabilities { query } => (TAG_DOMAIN_CAPABILITIES, query.clone()),
            Frame::Reply { kind, code, data } => {
                let mut b = Vec::with_capacity(8 + data.len());
                b.extend_from_slice(&kind.to_le_bytes());
                b.extend_from_slice(&code.to_le_bytes());
                b.extend_from_slice(data);
                (TAG_REPLY, b)
            }
            Frame::HostError { message } => (TAG_HOST_ERROR, message.as_bytes().to_vec()),
            Frame::Ended { status } => (TAG_ENDED, status.to_le_bytes().to_vec()),
        }
    }

    fn from_parts(tag: u8, body: Vec<u8>) -> Result<Frame, ProtoError> {
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| ProtoError::Malformed("text that is not UTF-8"));
        Ok(match tag {
            TAG_HELLO => Frame::Hello { name: text(body)? },
            TAG_LOAD_FAILED => Frame::LoadFailed { message: text(body)? },
            TAG_AVAILABILITY if body.is_empty() => Frame::Availability,
            TAG_AVAILABILITY => return Err(ProtoError::Malformed("availability request with a body")),
            TAG_DOMAIN_CAPABILITIES => Frame::DomainCapabilities { query: body },
            TAG_REPLY => {
                if body.len() < 8 {
                    return Err(ProtoError::Malformed("reply shorter than its 8-byte header"));
                }
                let word = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
                let (kind, code) = (word(0), word(4));
                Frame::Reply { kind, code, data: body[8..].to_vec() }
            }
            TAG_HOST_ERROR => Frame::HostError { message: text(body)? },
            TAG_ENDED => match <[u8; 4]>::try_from(body.as_slice()) {
                Ok(b) => Frame::Ended { status: i32::from_le_bytes(b) },
                Err(_) => return Err(ProtoError::Malformed("ended frame without a 4-byte status")),
            },
            tag => return Err(ProtoError::UnknownTag { tag }),
        })
    }
}

/// Write one frame (a single `write_all` of header and body).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> std::io::Result<()> {
    let (tag, body) = frame.tag_and_body();
    let len = u32::try_from(body.len() + 2).map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    let mut buf = Vec::with_capacity(6 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.push(VERSION);
    buf.push(tag);
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Read one frame of at most `max` bytes (after the length). [`ProtoError::Closed`] when the
/// peer closed the connection between frames.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Frame, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::Malformed("connection closed inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    if len < 2 {
        return Err(ProtoError::Malformed("frame shorter than its version and tag"));
    }
    let mut rest = vec![0u8; len];
    r.read_exact(&mut rest).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtoError::Malformed("connection closed inside a frame"),
        _ => ProtoError::Io(e),
    })?;
    if rest[0] != VERSION {
        return Err(ProtoError::Version { found: rest[0] });
    }
    let tag = rest[1];
    rest.drain(..2);
    Frame::from_parts(tag, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_reads_back() {
        let frames = [
            Frame::Hello { name: "bhyve".into() },
            Frame::LoadFailed { message: "no entry point".into() },
            Frame::Availability,
            Frame::DomainCapabilities { query: br#"{"arch":"x86_64"}"#.to_vec() },
            Frame::Reply { kind: 1, code: 0, data: b"<domainCapabilities/>".to_vec() },
            Frame::Reply { kind: 3, code: 4, data: Vec::new() },
            Frame::HostError { message: "too large".into() },
            Frame::Ended { status: 6 | 0x80 },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r, MAX_FROM_HELPER).unwrap(), f);
        }
        assert!(matches!(read_frame(&mut r, MAX_FROM_HELPER), Err(ProtoError::Closed)));
    }

    #[test]
    fn bad_frames_are_refused_before_their_body_is_read() {
        // A length past the limit: refused from the header alone.
        let mut r = &[0xff, 0xff, 0xff, 0x7f][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::TooLarge { len: 0x7fff_ffff, max: 1024 })));
        let mut r = &[3, 0, 0, 0, 9, 1, b'x'][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::Version { found: 9 })));
        let mut r = &[2, 0, 0, 0, VERSION, 77][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::UnknownTag { tag: 77 })));
        let mut r = &[5, 0, 0, 0, VERSION, TAG_REPLY, 1, 2, 3][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::Malformed(_))));
        let mut r = &[9, 0, 0, 0, VERSION, TAG_HELLO][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::Malformed("connection closed inside a frame"))));
        let mut r = &[9, 0][..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ProtoError::Malformed(_))));
    }
}
