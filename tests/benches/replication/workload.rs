//! What one write carries: an image reference unique to its sequence
//! number, and the key and JSON value Kairos stores for it, which the etcd
//! side puts as they are.

use anyhow::Context as _;
use kairos_controlplane::api::release::ReleaseRecord;
use kairos_controlplane::fleet::image::ImageRef;

/// The image reference of write `seq`: a v1.x core image whose minor and
/// patch numbers spell the sequence number, so no two writes of a run share
/// a key (AddRelease of a known image would be a no-op, not a write).
pub fn image(seq: u64) -> String {
    format!("quay.io/kairos/core-opensuse:v1.{}.{}", seq / 1000, seq % 1000)
}

/// The store key and value Kairos writes for `seq`: `releases/<image ref>`
/// and the release record as JSON (its `added_at_ms` is the time of this
/// call, which changes the bytes but not their number).
pub fn record(seq: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let reference = image(seq);
    let parsed = ImageRef::upgrade_target(&reference).with_context(|| format!("parsing {reference}"))?;
    let record = ReleaseRecord::manual(&parsed, None);
    let value = serde_json::to_vec(&record).with_context(|| format!("encoding the record of {reference}"))?;
    Ok((record.key(), value))
}

/// Sizes of the keys and values of a run's writes.
#[derive(Debug, Clone, Copy)]
pub struct ValueSizes {
    /// Writes sized (every write of the run, or a sample of them).
    pub sampled: u64,
    /// Key bytes: min, mean, max.
    pub key: (usize, f64, usize),
    /// Value bytes: min, mean, max.
    pub value: (usize, f64, usize),
}

impl ValueSizes {
    /// Sizes of the records of writes `0..writes`, at most 10,000 of them
    /// spread evenly.
    pub fn sample(writes: u64) -> anyhow::Result<ValueSizes> {
        let step = (writes / 10_000).max(1);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut seq = 0;
        while seq < writes.max(1) {
            let (key, value) = record(seq)?;
            keys.push(key.len());
            values.push(value.len());
            seq += step;
        }
        Ok(ValueSizes { sampled: keys.len() as u64, key: stats(&keys), value: stats(&values) })
    }
}

fn stats(sizes: &[usize]) -> (usize, f64, usize) {
    let min = sizes.iter().copied().min().unwrap_or(0);
    let max = sizes.iter().copied().max().unwrap_or(0);
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    (min, mean, max)
}
