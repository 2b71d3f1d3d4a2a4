//! Writing the catalog, for AddRelease and SyncReleases alike: a release is
//! stored only while its key is absent, together with its audit entry, so
//! concurrent adds of one image agree on one record and one entry.

use std::collections::HashSet;

use tonic::Status;

use super::{ReleaseRecord, RELEASES_PREFIX};
use crate::api::audit::{commit_with_entries, Call, Outcome, Planned};
use crate::replica::ReplicaClient;
use crate::store::{Compare, KvReader, Op};

/// Releases per transaction: a record and its entry are about 1 KiB, so a
/// batch stays far below the raft message limit.
pub const BATCH: usize = 64;

/// What storing a release found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, with its audit entry.
    Created(ReleaseRecord),
    /// Already in the catalog (or twice in the batch): the record there,
    /// which may differ from the one offered (digest, source, time).
    Existing(ReleaseRecord),
}

/// The catalog record stored under `key`, if any.
pub fn read(reader: &KvReader, key: &str) -> Result<Option<ReleaseRecord>, Status> {
    let Some(kv) = reader.get(key.as_bytes()).map_err(|e| Status::internal(e.to_string()))? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| Status::internal(format!("stored release {key} does not decode: {e}")))
}

/// Whether the catalog already holds `image_ref` (this replica's applied state).
pub fn contains(reader: &KvReader, image_ref: &str) -> Result<bool, Status> {
    let key = format!("{RELEASES_PREFIX}{image_ref}");
    reader.get(key.as_bytes()).map(|kv| kv.is_some()).map_err(|e| Status::internal(e.to_string()))
}

/// Stores each of `records` that is not in the catalog yet, each with the
/// audit entry of `call` about `release/<image ref>` and `summary` of it,
/// all in one transaction; answers per record, in order.
pub async fn store(
    client: &ReplicaClient,
    call: &Call,
    records: &[ReleaseRecord],
    summary: impl Fn(&ReleaseRecord) -> String,
) -> Result<Vec<Stored>, Status> {
    commit_with_entries(client, call.method(), |reader| {
        let mut planned = Planned { compares: Vec::new(), ops: Vec::new(), target: String::new(), value: Vec::new() };
        let mut entries = Vec::new();
        let mut batch = HashSet::new();
        for record in records {
            let key = record.key();
            if let Some(stored) = read(reader, &key)? {
                planned.value.push(Stored::Existing(stored));
                continue;
            }
            if !batch.insert(key.clone()) {
                planned.value.push(Stored::Existing(record.clone()));
                continue;
            }
            let value = serde_json::to_vec(record).map_err(|e| Status::internal(format!("encode {key}: {e}")))?;
            planned.compares.push(Compare::missing(key.as_str()));
            planned.ops.push(Op::put(key.as_str(), value));
            let about = call.clone().about(format!("release/{}", record.image_ref), summary(record));
            entries.push(about.entry(Outcome::Succeeded, None, client.id()));
            planned.value.push(Stored::Created(record.clone()));
        }
        Ok((planned, entries))
    })
    .await
}
