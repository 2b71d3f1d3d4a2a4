//! Replication reads: a byte budget per call, never an empty answer.

use kairos_controlplane::store::{Request, MAX_READ_BYTES};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::RaftLogReader;

use crate::common::{normal, open, runtime, tempdir};

#[test]
fn limited_reads_stop_at_the_byte_budget_but_return_at_least_one_entry() {
    let dir = tempdir();
    runtime().block_on(async {
        let (mut log, _sm) = open(dir.path());
        let big = vec![b'x'; MAX_READ_BYTES * 6 / 10];
        let huge = vec![b'y'; MAX_READ_BYTES * 2];
        log.blocking_append((1..=3).map(|i| normal(1, i, Request::put(format!("k/{i}"), big.clone()))))
            .await
            .expect("append");
        log.blocking_append([normal(1, 4, Request::put("k/4", huge))]).await.expect("append");
        let mut reader = log.get_log_reader().await;

        let indexes =
            |v: Vec<kairos_controlplane::store::types::Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(indexes(reader.limited_get_log_entries(1, 5).await.expect("read")), vec![1, 2]);
        assert_eq!(indexes(reader.limited_get_log_entries(3, 5).await.expect("read")), vec![3, 4]);
        assert_eq!(indexes(reader.limited_get_log_entries(4, 5).await.expect("read")), vec![4], "one oversized entry");
        assert_eq!(indexes(reader.try_get_log_entries(1..5).await.expect("read")), vec![1, 2, 3, 4], "no budget");
        assert!(reader.limited_get_log_entries(5, 9).await.expect("read").is_empty());
    });
}
