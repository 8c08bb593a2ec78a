//! [`Lock`]: one writer per output path, across processes.

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An exclusive advisory lock (`flock`) on a lock file, held until the value is dropped;
/// the operating system releases it when the process dies, even by `SIGKILL`.
///
/// The lock file is created if absent and removed when the lock is dropped. A process
/// that opened the file just before it was removed could lock the removed file, so a
/// lock counts only when the locked file is still the one at the path (same device and
/// inode); otherwise the attempt is repeated.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    // Held for its `flock`; released when dropped.
    _file: File,
}

impl Lock {
    /// Takes the lock of `path` without waiting: `Ok(None)` while another holder has it.
    ///
    /// # Errors
    /// A lock file that cannot be created, opened or locked, naming `path`.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(Error::at(path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(Error::new(path, e)),
            }
            let held = file.metadata().map_err(Error::at(path))?;
            match fs::metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(Some(Lock {
                        path: path.to_path_buf(),
                        _file: file,
                    }));
                }
                // Removed or replaced by the holder before us: lock the file there now.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::new(path, e)),
            }
        }
    }
}

impl Drop for Lock {
    /// Removes the lock file while still holding the lock, then releases it.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
