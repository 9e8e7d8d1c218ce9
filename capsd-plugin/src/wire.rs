//! The structured error that crosses the boundary: an `ERR_*` code plus a JSON object of the
//! fields of the matching `capsd_core::DriverError` variant. Both sides use these functions,
//! so the encoding exists once.

use std::path::PathBuf;

use capsd_core::DriverError;
use serde::{Deserialize, Serialize};

use crate::abi::{
    ERR_INTERNAL, ERR_INVALID_INPUT, ERR_IO, ERR_NOT_SUPPORTED, ERR_PANIC, ERR_PROBE_FAILED, ERR_UNAVAILABLE,
};

/// The JSON payload of a `REPLY_ERROR`. `message` is always set (the error as text); the
/// other fields are those of the variant named by the code. Unknown fields are ignored so a
/// later plugin may add some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_error: Option<i32>,
}

/// Encode a driver error as `(code, payload)`.
pub fn encode_error(err: &DriverError) -> (u32, ErrorPayload) {
    let mut p = ErrorPayload { message: err.to_string(), ..ErrorPayload::default() };
    let code = match err {
        DriverError::Unavailable { reason, .. } => {
            p.reason = Some(reason.clone());
            ERR_UNAVAILABLE
        }
        DriverError::NotSupported { what, .. } => {
            p.what = Some(what.clone());
            ERR_NOT_SUPPORTED
        }
        DriverError::InvalidInput { field, value, reason } => {
            p.field = Some(field.clone());
            p.value = Some(value.clone());
            p.reason = Some(reason.clone());
            ERR_INVALID_INPUT
        }
        DriverError::ProbeFailed { target, reason } => {
            p.target = Some(target.clone());
            p.reason = Some(reason.clone());
            ERR_PROBE_FAILED
        }
        DriverError::Io { path, source } => {
            p.path = Some(path.display().to_string());
            p.reason = Some(source.to_string());
            p.os_error = source.raw_os_error();
            ERR_IO
        }
        // DriverError is non-exhaustive: a variant added later still crosses as its text.
        _ => ERR_INTERNAL,
    };
    (code, p)
}

/// A panic or an internal failure of the plugin, as a payload.
pub fn message_payload(message: impl Into<String>) -> ErrorPayload {
    ErrorPayload { message: message.into(), ..ErrorPayload::default() }
}

/// Rebuild the driver error a plugin called `driver` (loaded from `origin`, used in messages)
/// sent. Missing fields fall back to `message`, so a sloppy payload still reads well.
pub fn decode_error(driver: &str, origin: &str, code: u32, p: ErrorPayload) -> DriverError {
    let msg = p.message;
    let or_msg = |v: Option<String>| v.unwrap_or_else(|| msg.clone());
    match code {
        ERR_UNAVAILABLE => DriverError::Unavailable { driver: driver.to_owned(), reason: or_msg(p.reason) },
        ERR_NOT_SUPPORTED => DriverError::NotSupported { driver: driver.to_owned(), what: or_msg(p.what) },
        ERR_INVALID_INPUT => DriverError::InvalidInput {
            field: p.field.unwrap_or_else(|| "query".to_owned()),
            value: p.value.unwrap_or_default(),
            reason: or_msg(p.reason),
        },
        ERR_PROBE_FAILED => DriverError::ProbeFailed {
            target: p.target.unwrap_or_else(|| format!("plugin '{driver}'")),
            reason: or_msg(p.reason),
        },
        ERR_IO => {
            let source = match p.os_error {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other(or_msg(p.reason)),
            };
            DriverError::Io { path: PathBuf::from(p.path.unwrap_or_else(|| origin.to_owned())), source }
        }
        ERR_PANIC => DriverError::ProbeFailed {
            target: format!("plugin '{driver}' ({origin})"),
            reason: format!("the plugin panicked: {msg}"),
        },
        ERR_INTERNAL => DriverError::ProbeFailed {
            target: format!("plugin '{driver}' ({origin})"),
            reason: format!("internal plugin error: {msg}"),
        },
        other => DriverError::ProbeFailed {
            target: format!("plugin '{driver}' ({origin})"),
            reason: format!("error with unknown code {other}: {msg}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsd_core::ErrorKind;

    fn round_trip(err: DriverError) -> DriverError {
        let (code, p) = encode_error(&err);
        let json = serde_json::to_string(&p).unwrap();
        decode_error("bhyve", "/x/libbhyve.so", code, serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn every_variant_keeps_its_kind_and_text() {
        let cases = vec![
            DriverError::Unavailable { driver: "bhyve".into(), reason: "no bhyve".into() },
            DriverError::not_supported("bhyve", "arch 'aarch64'"),
            DriverError::invalid("virttype", "kvm", "bhyve only offers 'bhyve'"),
            DriverError::probe_failed("/usr/sbin/bhyve", "exit status 3"),
            DriverError::io("/foo", std::io::Error::from_raw_os_error(2)),
        ];
        for err in cases {
            let text = err.to_string();
            let kind = err.kind();
            let back = round_trip(err);
            assert_eq!(back.kind(), kind);
            assert_eq!(back.to_string(), text);
        }
    }

    #[test]
    fn panic_and_unknown_codes_become_probe_failures_naming_the_plugin() {
        let e = decode_error("p", "/d/libp.so", ERR_PANIC, message_payload("boom"));
        assert_eq!(e.kind(), ErrorKind::ProbeFailed);
        assert_eq!(e.to_string(), "probing plugin 'p' (/d/libp.so) failed: the plugin panicked: boom");
        let e = decode_error("p", "/d/libp.so", 77, message_payload("odd"));
        assert!(e.to_string().contains("unknown code 77: odd"), "{e}");
    }
}
