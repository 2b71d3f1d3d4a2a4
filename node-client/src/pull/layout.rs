//! The OCI image-layout archive handed to the executor: a tar holding
//! `oci-layout`, `index.json` (one manifest) and `blobs/sha256/<hex>`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

/// What goes into an archive.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Media type of the manifest.
    pub manifest_media_type: String,
    /// Digest of the manifest (`sha256:...`).
    pub manifest_digest: String,
    /// The manifest, byte for byte as the registry sent it.
    pub manifest: Vec<u8>,
    /// Tag for `org.opencontainers.image.ref.name`, if any.
    pub tag: Option<String>,
    /// Verified config and layer blobs: (digest, path).
    pub blobs: Vec<(String, PathBuf)>,
}

/// Writes `layout` to `archive` (through a temporary file renamed at the
/// end, so a present archive is always complete); returns its size.
pub(super) fn write_archive(layout: &Layout, archive: &Path) -> std::io::Result<u64> {
    let partial = archive.with_extension("tar.partial");
    let result = write_tar(layout, &partial).and_then(|()| std::fs::rename(&partial, archive));
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    Ok(std::fs::metadata(archive)?.len())
}

fn write_tar(layout: &Layout, path: &Path) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(BufWriter::new(File::create(path)?));
    let mut descriptor = json!({
        "mediaType": layout.manifest_media_type,
        "digest": layout.manifest_digest,
        "size": layout.manifest.len(),
    });
    if let Some(tag) = &layout.tag {
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    });
    append_bytes(&mut builder, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append_bytes(&mut builder, "index.json", &serde_json::to_vec(&index).map_err(std::io::Error::other)?)?;
    append_bytes(&mut builder, &blob_name(&layout.manifest_digest), &layout.manifest)?;
    let mut written = vec![layout.manifest_digest.as_str()];
    for (digest, blob) in &layout.blobs {
        // A config may equal a layer; a tar must not hold a path twice.
        if written.contains(&digest.as_str()) {
            continue;
        }
        written.push(digest);
        let mut file = File::open(blob)?;
        let mut header = header(file.metadata()?.len());
        builder.append_data(&mut header, blob_name(digest), &mut file)?;
    }
    let mut out = builder.into_inner()?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes<W: Write>(builder: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut header = header(bytes.len() as u64);
    builder.append_data(&mut header, name, bytes)
}
