//! Atomic writes of files and whole directories: the one place of the workspace that
//! writes an output beside its target and renames it.
//!
//! # Contract
//!
//! - Everything is first written under a **temporary sibling name**, a hidden entry
//!   `.{name}.{tag}-{pid}-{n}` in the same parent directory as the target (so the final
//!   rename never crosses file systems), and then renamed to the target. A reader of
//!   the target sees either the previous version or the complete new one, never a
//!   partial one.
//! - On any error the temporary file or directory is removed and the target is left
//!   as it was (an existing file or directory untouched, a missing one still missing).
//!   Missing directories above the target are made first ([`create_parent_dirs`]) and
//!   stay.
//! - Files and directories are created with the process's normal permissions
//!   (`0666` / `0777` minus the umask on Unix), not owner-only.
//! - Every error is an [`Error`] naming the path it concerns (the target, not the
//!   temporary name, whenever the failure is about the target).
//! - [`Lock`] keeps a second process from writing the same output at the same time.
//! - Nothing is flushed to stable storage (no `fsync`): the writes are atomic with
//!   respect to other processes and to failures of this one, not to a power loss.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("atomic-fs-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let file = dir.join("hello.txt");
//! atomic_fs::write(&file, "hello")?;
//! assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello");
//!
//! // A directory built whole: `fill` writes into an empty temporary directory.
//! let out = dir.join("out");
//! atomic_fs::write_dir(&out, false, |tmp| atomic_fs::write(&tmp.join("a.txt"), "a"))?;
//! assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a");
//! // An existing directory is only replaced when asked to.
//! assert!(atomic_fs::write_dir(&out, false, |_| Ok::<(), atomic_fs::Error>(())).is_err());
//! std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), atomic_fs::Error>(())
//! ```
#![warn(missing_docs)]

mod lock;

pub use lock::Lock;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O error, naming the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Error {
    /// The file or directory the failed operation was about.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl Error {
    /// An error about `path`.
    fn new(path: &Path, source: io::Error) -> Self {
        Error {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A closure turning an [`io::Error`] into an [`Error`] about `path`.
    fn at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::new(path, source)
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes the directories above `path` that are missing (nothing for a bare file name).
///
/// # Errors
/// The directory that cannot be made (the error names it and says it is for `path`).
pub fn create_parent_dirs(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => fs::create_dir_all(parent).map_err(|e| {
            Error::new(
                parent,
                io::Error::new(
                    e.kind(),
                    format!("cannot make this directory for {}: {e}", path.display()),
                ),
            )
        }),
        None => Ok(()),
    }
}

/// Writes `contents` to `path` through a temporary sibling file, then renames it over
/// `path`.
///
/// # Errors
/// A path without a final component, a parent directory that cannot be made or is not
/// writable, a failed write or rename; each names `path`. `path` is then untouched.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    write_with(path, |temp| {
        fs::write(temp, contents.as_ref()).map_err(Error::at(path))
    })
}

/// `fill` writes the temporary sibling file whose path it is given; on success it is
/// renamed to `path`, on error it is removed and `path` is untouched.
///
/// The temporary file exists (empty) when `fill` is called; `fill` may write it in
/// place or replace it (for example through a library that creates its own file).
/// Missing directories above `path` are made first.
///
/// # Errors
/// `fill`'s error as it is; otherwise an [`Error`] naming `path` (no final component,
/// no writable parent directory, a failed rename) or the parent that cannot be made.
pub fn write_with<E: From<Error>>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    create_parent_dirs(path)?;
    let temp = reserve_sibling(path, "tmp", |p| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map(drop)
    })?;
    let result =
        fill(&temp).and_then(|()| fs::rename(&temp, path).map_err(|e| Error::new(path, e).into()));
    if result.is_err() {
        // Best effort: the temporary file is ours and nobody else knows its name.
        let _ = remove_any(&temp);
    }
    result
}

/// Builds the directory `dir` as a temporary sibling directory (created empty, then
/// handed to `fill`), then moves it to `dir`. An existing `dir` is an error (naming
/// `dir`, kind [`AlreadyExists`](io::ErrorKind::AlreadyExists)) unless `overwrite`, in
/// which case it is replaced as a whole by [`replace_dir`]. On any error the temporary
/// directory is removed and an existing `dir` is left as it was.
///
/// # Errors
/// `fill`'s error as it is; otherwise an [`Error`] naming `dir` (it exists and
/// `overwrite` is false, no final component, no writable parent directory, a failed
/// rename) or, after a successful replacement, the previous directory that could not
/// be removed.
pub fn write_dir<E: From<Error>>(
    dir: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if !overwrite {
        refuse_existing(dir)?;
    }
    create_parent_dirs(dir)?;
    let temp = reserve_sibling(dir, "tmp", |p| fs::create_dir(p))?;
    let result = fill(&temp).and_then(|()| {
        if overwrite {
            replace_dir(&temp, dir)
        } else {
            // Checked again: `dir` may have appeared while `fill` ran, and a rename
            // onto an empty directory would silently replace it.
            refuse_existing(dir).and_then(|()| fs::rename(&temp, dir).map_err(Error::at(dir)))
        }
        .map_err(E::from)
    });
    if result.is_err() {
        // Best effort: the temporary directory is ours and holds nothing else.
        let _ = remove_any(&temp);
    }
    result
}

/// Moves the finished directory `staged` to `dir`, replacing an existing `dir` as a
/// whole (moved aside to a temporary sibling first, put back if the rename fails,
/// removed after).
///
/// # Errors
/// A failed rename names `dir` (the previous `dir` is then back in place and `staged`
/// where it was); a previous `dir` that could not be removed after the replacement
/// names its temporary name (the new `dir` is in place).
pub fn replace_dir(staged: &Path, dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return fs::rename(staged, dir).map_err(Error::at(dir));
    }
    let old = free_sibling(dir, "old")?;
    fs::rename(dir, &old).map_err(Error::at(dir))?;
    if let Err(source) = fs::rename(staged, dir) {
        // Put the previous directory back so nothing is lost.
        let _ = fs::rename(&old, dir);
        return Err(Error::new(dir, source));
    }
    remove_any(&old).map_err(Error::at(&old))
}

/// The error for an existing `path` that may not be replaced.
fn refuse_existing(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::new(
            path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "already exists (overwrite to replace it)",
            ),
        ));
    }
    Ok(())
}

/// The parent directory of `path` and its final component.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path has no final component",
            ),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string_lossy().into_owned()))
}

/// The candidate temporary names `.{name}.{tag}-{pid}-{n}` beside `path`, in order.
fn siblings(path: &Path, tag: &str) -> Result<impl Iterator<Item = PathBuf>> {
    let (parent, name) = split(path)?;
    let pid = std::process::id();
    let tag = tag.to_string();
    Ok((0..u32::MAX).map(move |n| parent.join(format!(".{name}.{tag}-{pid}-{n}"))))
}

/// The first temporary name beside `path` that `create` makes (a name taken already,
/// [`AlreadyExists`](io::ErrorKind::AlreadyExists), moves on to the next one), so
/// that two writers never share one.
fn reserve_sibling(
    path: &Path,
    tag: &str,
    create: impl Fn(&Path) -> io::Result<()>,
) -> Result<PathBuf> {
    for candidate in siblings(path, tag)? {
        match create(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::new(path, e)),
        }
    }
    Err(no_free_name(path))
}

/// The first temporary name beside `path` that nothing uses.
fn free_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    siblings(path, tag)?
        .find(|p| fs::symlink_metadata(p).is_err())
        .ok_or_else(|| no_free_name(path))
}

fn no_free_name(path: &Path) -> Error {
    Error::new(
        path,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name beside this path",
        ),
    )
}

/// Removes a file, a symbolic link or a whole directory.
fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
