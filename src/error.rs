//! Typed errors for the library. Every variant names the file (or zip member)
//! it is about and keeps the underlying cause where there is one.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in h2e's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {source}")]
    Decode {
        /// File or `bundle.zip!member`.
        path: String,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// An image is larger than the decode cap.
    #[error("{path}: image of {width}x{height} exceeds the limit of {limit} pixels")]
    TooManyPixels {
        /// File or member.
        path: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Cap on width*height.
        limit: u64,
    },
    /// A zip member decompresses to more bytes than allowed (zip bomb guard).
    #[error("{path}: member {member} decompresses to more than {limit} bytes (possible zip bomb)")]
    MemberTooLarge {
        /// The zip file.
        path: PathBuf,
        /// The member.
        member: String,
        /// Cap in bytes.
        limit: u64,
    },
    /// A zip archive is unreadable or malformed. The message says what is
    /// wrong in words (the zip reader's own text, "Could not find EOCD" and
    /// the like, is kept where it helps); the reader's error is in `error`,
    /// not chained as `source()`, so it is not printed twice.
    #[error("{path}: {}", describe_zip(error))]
    Zip {
        /// The zip file.
        path: PathBuf,
        /// The zip reader's error.
        error: zip::result::ZipError,
    },
    /// A zip member has an unsafe name (`..`, absolute path, drive letter).
    #[error("{path}: member {member:?} has an unsafe path (absolute or containing '..'); refusing it")]
    UnsafeMember {
        /// The zip file.
        path: PathBuf,
        /// The offending name.
        member: String,
    },
    /// The same member name appears twice.
    #[error("{path}: duplicate member {member:?}")]
    DuplicateMember {
        /// The zip file.
        path: PathBuf,
        /// The duplicated name.
        member: String,
    },
    /// A JSON document (manifest, config, report) is missing or invalid.
    #[error("{path}: invalid {what}: {reason}")]
    Invalid {
        /// The file (or `zip!member`).
        path: String,
        /// What document ("manifest", "config.json", ...).
        what: &'static str,
        /// What is wrong and, where possible, how to fix it.
        reason: String,
    },
    /// A document was written by a newer h2e.
    #[error("{path}: {what} version {found} is newer than this build understands (max {supported}); upgrade h2e")]
    NewerVersion {
        /// The file.
        path: String,
        /// What document.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The data set is unusable as given (empty class, no images, ...).
    #[error("{path}: {reason}")]
    Dataset {
        /// The folder, file or bundle.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A command-line or API argument is out of range.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// A compute device is not available in this build or on this machine.
    #[error("device {device} is unavailable: {reason}")]
    Device {
        /// The requested device.
        device: String,
        /// Why, and how to fix it.
        reason: String,
    },
    /// A model or training step failed.
    #[error("{0}")]
    Train(String),
}

/// The message of [`Error::Zip`]: what is wrong with the archive, in words.
fn describe_zip(error: &zip::result::ZipError) -> String {
    use zip::result::ZipError;
    match error {
        ZipError::InvalidArchive(m) if m == "Could not find EOCD" => {
            "not a zip archive (it has no zip directory at its end: another kind of file, or a zip cut short)"
                .to_string()
        }
        ZipError::InvalidArchive(m) => format!("invalid zip archive: {m}"),
        ZipError::UnsupportedArchive(m) => format!("unsupported zip archive: {m}"),
        ZipError::Io(e) => format!("invalid zip archive: reading it failed: {e}"),
        ZipError::FileNotFound => "invalid zip archive: a member it lists is missing".to_string(),
        other => format!("invalid zip archive: {other}"),
    }
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// Builds an [`Error::Invalid`].
    pub fn invalid(path: impl Into<String>, what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), what, reason: reason.into() }
    }

    /// Builds an [`Error::Dataset`].
    pub fn dataset(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Dataset { path: path.into(), reason: reason.into() }
    }
}
