//! openraft's own storage conformance suite against the sled store.

use kairos_controlplane::store::types::{StorageError, TypeConfig};
use kairos_controlplane::store::{LogStore, StateMachineStore, Store};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb};
use tempfile::TempDir;

/// Opens a fresh store in its own temporary directory for every suite case;
/// the directory (the guard) is removed after the case drops the store.
struct TempDirStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let (log, sm) = Store::open(dir.path())?;
        Ok((dir, log, sm))
    }
}

/// Not async: the suite builds a tokio runtime per case itself.
#[test]
fn storage_suite_conformance() {
    if let Err(e) = Suite::test_all(TempDirStoreBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
