//! The bearer token that loopback TCP clients must send (`capsd serve --token-file`).
//!
//! Any local user can connect to a loopback port, so on TCP every route that can make the
//! agent work for the client (`/v1/...`: a derivation, a probe, the drivers' availability
//! checks, which may run plugin code) needs `Authorization: Bearer TOKEN`; `/healthz` and
//! `/metrics` do not. The Unix socket relies on its mode and group instead.
//!
//! The token file must be a regular file owned by root or the agent's user, not readable
//! or writable by others and not writable by its group (checked on the descriptor it is then
//! read from); its content, less surrounding whitespace, is the token: at least [`MIN_LEN`]
//! printable ASCII characters without spaces. SIGHUP reads it again. The scheme is matched
//! without regard to case (`Bearer`, `bearer`: RFC 9110, 11.1).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use subtle::ConstantTimeEq;

/// Shortest token accepted.
pub const MIN_LEN: usize = 16;

/// The token and the file it came from.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    token: RwLock<Vec<u8>>,
}

impl TokenFile {
    /// Read and check the token file.
    pub fn load(path: &Path) -> Result<Self, String> {
        Ok(TokenFile { path: path.to_owned(), token: RwLock::new(read_token(path)?) })
    }

    /// Read the file again; on error the old token stays.
    pub fn reload(&self) -> Result<(), String> {
        let t = read_token(&self.path)?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = t;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an `Authorization` header value carries the token (compared in constant time).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(bearer) else { return false };
        let token = self.token.read().unwrap_or_else(|e| e.into_inner());
        bool::from(given.ct_eq(token.as_slice()))
    }
}

/// The credentials of a `Bearer` authorization (the scheme in any case, then one or more
/// spaces).
fn bearer(h: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = h.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let given = rest.trim_ascii_start();
    (!given.is_empty()).then_some(given)
}

fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let name = path.display();
    // Checked on the descriptor it is read from; non-blocking, so a FIFO cannot hold us.
    let mut file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("--token-file {name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("--token-file {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("--token-file {name}: not a regular file"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "--token-file {name}: owned by uid {}, not by root or the agent's user (uid {me}): \
             another user could change the token",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o026 != 0 {
        return Err(format!(
            "--token-file {name}: mode {mode:03o} lets others read it or others or its group change it \
             (the token is a password: chmod 600 or 640)"
        ));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(|e| format!("--token-file {name}: {e}"))?;
    let token = text.trim_ascii();
    if token.len() < MIN_LEN || !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--token-file {name}: the token must be at least {MIN_LEN} printable ASCII characters without spaces"
        ));
    }
    Ok(token.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("token");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn the_token_file_is_checked_and_the_token_compared() {
        let tmp = tempfile::tempdir().unwrap();
        let t = TokenFile::load(&file(tmp.path(), "0123456789abcdef\n", 0o640)).unwrap();
        assert!(t.admits(Some(b"Bearer 0123456789abcdef")));
        // The scheme is case-insensitive (RFC 9110, 11.1), the token is not.
        for good in [&b"bearer 0123456789abcdef"[..], b"BEARER 0123456789abcdef", b"bEaReR  0123456789abcdef"] {
            assert!(t.admits(Some(good)), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"Bearer 0123456789abcdeF"[..],
            b"Bearer 0123456789abcde",
            b"0123456789abcdef",
            b"Bearer ",
            b"Bearer0123456789abcdef",
            b"Basic 0123456789abcdef",
        ] {
            assert!(!t.admits(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!t.admits(None));
        for (text, mode, needle) in [
            ("0123456789abcdef", 0o644, "lets others read it"),
            ("0123456789abcdef", 0o660, "lets others read it"),
            ("short", 0o600, "at least 16"),
            ("0123456789 abcdef", 0o600, "without spaces"),
        ] {
            let e = TokenFile::load(&file(tmp.path(), text, mode)).unwrap_err();
            assert!(e.contains(needle) && e.contains("token"), "{text} {mode:o}: {e}");
        }
        // Owned by another user (not root, not ours): refused, naming the file.
        if nix::unistd::geteuid().is_root() {
            let p = file(tmp.path(), "0123456789abcdef", 0o600);
            nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = TokenFile::load(&p).unwrap_err();
            assert!(e.contains(&p.display().to_string()) && e.contains("owned by uid 65534"), "{e}");
            std::fs::remove_file(&p).unwrap();
        }
        // A failed reload keeps the old token.
        file(tmp.path(), "fedcba9876543210", 0o600);
        t.reload().unwrap();
        assert!(t.admits(Some(b"Bearer fedcba9876543210")));
        file(tmp.path(), "x", 0o600);
        assert!(t.reload().is_err());
        assert!(t.admits(Some(b"Bearer fedcba9876543210")));
    }
}
