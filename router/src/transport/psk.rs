//! The network password: reading it, and turning it into the Noise pre-shared key.

use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2s256, Digest};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Name of the environment variable holding the network password.
pub const PASSWORD_ENV: &str = "WEFT_PASSWORD";

/// Cluster name used for the PSK salt when the operator does not name the cluster.
pub const DEFAULT_CLUSTER: &str = "weft";

/// A password file larger than this is surely the wrong file.
pub const MAX_PASSWORD_FILE: u64 = 64 * 1024;

/// Argon2id memory cost in KiB (19 MiB).
const ARGON2_M_KIB: u32 = 19 * 1024;
/// Argon2id passes.
const ARGON2_T: u32 = 2;
/// Argon2id lanes.
const ARGON2_P: u32 = 1;

/// Derives the 32-byte Noise PSK from the network password.
///
/// Argon2id with m = 19 MiB, t = 2, p = 1: the OWASP minimum recommendation for Argon2id. It
/// is computed once at start, so its cost (tens of milliseconds optimised) is paid once per
/// process, while an attacker holding a captured handshake pays it per guess. The salt is
/// BLAKE2s-256 of `"weft-psk-salt:" || cluster`: every router of one cluster derives the same
/// key, and a password reused across clusters yields unrelated keys.
pub fn derive_psk(password: &[u8], cluster: &str) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"weft-psk-salt:");
    h.update(cluster.as_bytes());
    let salt = h.finalize();
    // Constant, valid parameters: construction cannot fail.
    let params =
        Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32)).expect("valid Argon2 parameters");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; 32];
    // Fails only for a password longer than 4 GiB or a too-short salt/output, none of which
    // can happen here (read_password bounds the password, salt and output are 32 bytes).
    argon
        .hash_password_into(password, &salt, &mut out)
        .expect("Argon2id with a 32-byte salt and output");
    out
}

/// Why the network password could not be read. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("password file {0} is larger than {MAX_PASSWORD_FILE} bytes; is it the right file?")]
    TooLarge(PathBuf),
    #[error("the network password from {0} is empty (an empty password is a misconfiguration; to run without a password, give neither --password-file nor {PASSWORD_ENV})")]
    Empty(String),
    #[error("both --password-file and {PASSWORD_ENV} are set; give only one")]
    Both,
}

/// Reads the network password from `--password-file` (`file`) or from the `WEFT_PASSWORD`
/// environment value (`env`, passed in by the caller so this stays testable).
///
/// Trailing whitespace (a final `\n` or `\r\n` from `echo` or a Kubernetes Secret) is
/// trimmed. `Ok(None)` means no password was configured. An empty or whitespace-only password
/// is an error, not "no password": running unencrypted must never happen by accident. Giving
/// both sources is an error too. The returned bytes are wiped from memory when dropped.
pub fn read_password(
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<Zeroizing<Vec<u8>>>, PasswordError> {
    let env = env.map(|s| Zeroizing::new(s.into_bytes()));
    let (raw, source) = match (file, env) {
        (Some(_), Some(_)) => return Err(PasswordError::Both),
        (None, None) => return Ok(None),
        (None, Some(v)) => (v, PASSWORD_ENV.to_string()),
        (Some(path), None) => (read_file(path)?, path.display().to_string()),
    };
    let len = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if len == 0 {
        return Err(PasswordError::Empty(source));
    }
    Ok(Some(Zeroizing::new(raw[..len].to_vec())))
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PasswordError> {
    use std::io::Read;
    let err = |source| PasswordError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_PASSWORD_FILE {
        return Err(PasswordError::TooLarge(path.to_path_buf()));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_rejects_empty() {
        let p = read_password(None, Some("s3cret \r\n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(&p[..], b"s3cret");
        let p = read_password(None, Some(" lead".into())).unwrap().unwrap();
        assert_eq!(&p[..], b" lead");
        assert!(matches!(
            read_password(None, Some(" \n\t".into())),
            Err(PasswordError::Empty(_))
        ));
        assert!(matches!(
            read_password(None, Some(String::new())),
            Err(PasswordError::Empty(_))
        ));
        assert!(read_password(None, None).unwrap().is_none());
    }

    #[test]
    fn file_errors_never_show_the_password() {
        let dir = std::env::temp_dir().join(format!("weft-psk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let p = read_password(Some(&f), None).unwrap().unwrap();
        assert_eq!(&p[..], b"hunter2");
        let e = read_password(Some(&f), Some("hunter2".into())).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        std::fs::write(&f, "\n\n").unwrap();
        let e = read_password(Some(&f), None).unwrap_err();
        assert!(matches!(e, PasswordError::Empty(_)), "{e}");
        let e = read_password(Some(&dir.join("missing")), None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
