//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Why settings or a file could not be loaded. A failed [`crate::AuthService::reload`] returns
/// one of these and keeps the previous state.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A line of an `acl_file` is not valid Mosquitto ACL syntax.
    #[error("{path}:{line}: {message}")]
    AclFile {
        /// The file (empty when parsed from a string).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file is larger than the crate accepts.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// `jwt_public_key_file` is not an RSA or P-256 public key in PEM.
    #[error("jwt key {path}: {message}")]
    JwtKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The settings are inconsistent (e.g. `workers = 0`, an invalid `http_url`).
    #[error("auth settings: {0}")]
    Settings(String),
    /// A worker or timer thread could not be started.
    #[error("starting auth thread: {0}")]
    Spawn(#[source] io::Error),
}

/// Most bytes read from a password, ACL or key file (16 MiB).
pub(crate) const FILE_BYTES_MAX: u64 = 16 << 20;

/// Reads a whole file, bounded by [`FILE_BYTES_MAX`].
pub(crate) fn read_bounded(path: &std::path::Path) -> Result<String, AuthError> {
    let io_err = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.len() > FILE_BYTES_MAX {
        return Err(AuthError::TooLarge {
            path: path.to_path_buf(),
            limit: FILE_BYTES_MAX,
        });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    String::from_utf8(bytes).map_err(|e| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}
