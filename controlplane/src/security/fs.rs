//! File helpers: read with the path in the error, write atomically, and
//! keep private keys and secrets readable by the owner only.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::SecurityError;

/// Reads a UTF-8 file; the error names the file.
pub(crate) fn read_text(path: &Path) -> Result<String, SecurityError> {
    fs::read_to_string(path).map_err(|source| SecurityError::Read { path: path.to_path_buf(), source })
}

/// Creates `dir` and its parents; the error names the folder.
pub(crate) fn create_dir(dir: &Path) -> Result<(), SecurityError> {
    fs::create_dir_all(dir).map_err(|source| SecurityError::Write { path: dir.to_path_buf(), source })
}

/// Writes a file readable by everyone (certificates, configs).
pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<(), SecurityError> {
    write_atomic(path, contents, 0o644).map_err(|source| SecurityError::Write { path: path.to_path_buf(), source })
}

/// Writes a file only its owner may read (private keys, tokens).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecurityError> {
    write_atomic(path, contents, 0o600).map_err(|source| SecurityError::Write { path: path.to_path_buf(), source })
}

/// Writes to a sibling temp file with `mode`, syncs, then renames over
/// `path`: a crash never leaves a half-written key, and a key is never
/// readable by others, not even for a moment.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        // A leftover temp file from a crash keeps its old mode: force it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}
