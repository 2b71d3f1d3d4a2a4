//! The store's error type and its mapping onto openraft's `StorageError`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use super::types::NodeId;

/// What the store was doing with sled when sled failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Opening the database or one of its trees.
    Open,
    /// Reading a key or iterating a range.
    Read,
    /// Inserting, removing or applying a batch.
    Write,
    /// Forcing written data to disk (fsync).
    Flush,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Open => "open",
            Access::Read => "read",
            Access::Write => "write",
            Access::Flush => "flush",
        })
    }
}

/// Everything that can go wrong in the replicated store.
///
/// Any of these reaching openraft stops the raft node: a store that cannot
/// read or persist its own data must not keep voting.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory that was asked for.
        path: PathBuf,
        /// Why the filesystem refused.
        source: io::Error,
    },
    /// sled itself returned an error.
    #[error("sled failed to {access} {target}: {source}")]
    Sled {
        /// What the store was doing.
        access: Access,
        /// The tree or key involved, for the operator reading the log.
        target: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Bytes read from disk (or received as a snapshot) do not decode.
    #[error("{key} holds undecodable data: {reason}")]
    Corrupt {
        /// The tree and key (or snapshot id) that holds the bad bytes.
        key: String,
        /// What the decoder found wrong.
        reason: String,
    },
    /// A value could not be encoded; a bug rather than a disk problem.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's error.
        source: postcard::Error,
    },
}

impl StoreError {
    /// Wraps a sled error with what the store was doing and on which key or tree.
    pub(crate) fn sled(access: Access, target: impl Into<String>, source: sled::Error) -> Self {
        StoreError::Sled { access, target: target.into(), source }
    }

    /// The openraft verb that best describes the failed operation.
    pub fn verb(&self) -> ErrorVerb {
        match self {
            StoreError::Sled { access: Access::Write | Access::Flush, .. } | StoreError::Encode { .. } => {
                ErrorVerb::Write
            }
            StoreError::DataDir { .. }
            | StoreError::Sled { access: Access::Open | Access::Read, .. }
            | StoreError::Corrupt { .. } => ErrorVerb::Read,
        }
    }

    /// Converts into openraft's storage error about `subject`, keeping this
    /// error (and its message naming the key) as the source.
    pub fn into_storage_error(self, subject: ErrorSubject<NodeId>) -> openraft::StorageError<NodeId> {
        let verb = self.verb();
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

impl From<StoreError> for openraft::StorageError<NodeId> {
    fn from(e: StoreError) -> Self {
        e.into_storage_error(ErrorSubject::Store)
    }
}

/// Renders a key for error messages: printable ASCII as is, other bytes escaped.
pub(crate) fn printable(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}
