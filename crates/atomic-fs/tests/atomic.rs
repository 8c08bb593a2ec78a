//! The contract of `atomic-fs`: exact contents, nothing left behind on error, the
//! previous file or directory intact, and no silent replacement of a directory.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use atomic_fs::Error;
use proptest::prelude::*;

/// A fresh empty directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("atomic-fs-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

fn names(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// An error of the caller's own, as `fill` would return it.
#[derive(Debug)]
enum FillError {
    Io(#[allow(dead_code)] Error),
    Mine,
}

impl From<Error> for FillError {
    fn from(e: Error) -> Self {
        FillError::Io(e)
    }
}

#[test]
fn write_creates_and_replaces_a_file_with_exactly_its_contents() {
    let tmp = TempDir::new("write");
    let file = tmp.path().join("f.bin");
    atomic_fs::write(&file, b"first").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"first");
    atomic_fs::write(&file, b"second, longer").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"second, longer");
    atomic_fs::write(&file, b"").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    assert_eq!(entries(tmp.path()), names(&["f.bin"]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_ne!(mode & 0o077, 0, "not owner-only: {mode:o}");
    }
}

#[test]
fn a_failed_fill_leaves_the_previous_file_and_no_temporary() {
    let tmp = TempDir::new("write-with");
    let file = tmp.path().join("f.txt");
    atomic_fs::write(&file, "old").unwrap();
    let mut seen = None;
    let result = atomic_fs::write_with(&file, |temp| {
        seen = Some(temp.to_path_buf());
        std::fs::write(temp, "half of the new").unwrap();
        Err(FillError::Mine)
    });
    assert!(matches!(result, Err(FillError::Mine)));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
    assert_eq!(entries(tmp.path()), names(&["f.txt"]));
    // The temporary was a hidden sibling in the same directory.
    let seen = seen.unwrap();
    assert_eq!(seen.parent(), Some(tmp.path()));
    let name = seen.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(".f.txt.tmp-"), "{name}");

    // A successful fill is renamed into place.
    atomic_fs::write_with(&file, |temp| {
        std::fs::write(temp, "new").map_err(|e| Error {
            path: temp.to_path_buf(),
            source: e,
        })
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
    assert_eq!(entries(tmp.path()), names(&["f.txt"]));
}

#[test]
fn missing_parents_are_made_and_one_that_cannot_be_is_named() {
    let tmp = TempDir::new("parents");
    let file = tmp.path().join("a").join("b").join("f.txt");
    atomic_fs::write(&file, "x").unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    let dir = tmp.path().join("c").join("d");
    atomic_fs::write_dir(&dir, false, |t| atomic_fs::write(&t.join("g.txt"), "g")).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("g.txt")).unwrap(), "g");
    assert_eq!(entries(tmp.path()), names(&["a", "c"]));

    // A file where a directory must go: the error names that path and the target, and
    // nothing is written.
    std::fs::write(tmp.path().join("plain"), "").unwrap();
    let file = tmp.path().join("plain").join("sub").join("f.txt");
    let err = atomic_fs::write(&file, "x").unwrap_err();
    assert_eq!(err.path, tmp.path().join("plain").join("sub"));
    assert!(err.to_string().contains("f.txt"), "{err}");
    let dir = tmp.path().join("plain").join("d");
    let err = atomic_fs::write_dir(&dir, true, |_| Ok::<(), Error>(())).unwrap_err();
    assert_eq!(err.path, tmp.path().join("plain"));
    assert_eq!(entries(tmp.path()), names(&["a", "c", "plain"]));
}

#[test]
fn write_dir_builds_the_directory_whole() {
    let tmp = TempDir::new("dir");
    let dir = tmp.path().join("out");
    atomic_fs::write_dir(&dir, false, |temp| {
        assert!(entries(temp).is_empty(), "handed over empty");
        std::fs::create_dir(temp.join("sub")).unwrap();
        atomic_fs::write(&temp.join("a.txt"), "a")?;
        atomic_fs::write(&temp.join("sub").join("b.txt"), "b")
    })
    .unwrap();
    assert_eq!(entries(&dir), names(&["a.txt", "sub"]));
    assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(dir.join("sub/b.txt")).unwrap(), "b");
    assert_eq!(entries(tmp.path()), names(&["out"]));
}

#[test]
fn write_dir_refuses_an_existing_directory_without_overwrite() {
    let tmp = TempDir::new("exists");
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "old").unwrap();
    let mut called = false;
    let err = atomic_fs::write_dir(&dir, false, |_| {
        called = true;
        Ok::<(), Error>(())
    })
    .unwrap_err();
    assert!(!called, "nothing is built for a refused target");
    assert_eq!(err.path, dir);
    assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(entries(&dir), names(&["keep.txt"]));
    assert_eq!(entries(tmp.path()), names(&["out"]));
    // An existing file is refused the same way.
    let file = tmp.path().join("file");
    std::fs::write(&file, "f").unwrap();
    let err = atomic_fs::write_dir(&file, false, |_| Ok::<(), Error>(())).unwrap_err();
    assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "f");
}

#[test]
fn overwrite_replaces_the_directory_as_a_whole() {
    let tmp = TempDir::new("overwrite");
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "old").unwrap();
    atomic_fs::write_dir(&dir, true, |temp| {
        atomic_fs::write(&temp.join("new.txt"), "new")
    })
    .unwrap();
    assert_eq!(entries(&dir), names(&["new.txt"]));
    assert_eq!(entries(tmp.path()), names(&["out"]), "no backup left");
    // A file in the way is replaced too.
    let file = tmp.path().join("file");
    std::fs::write(&file, "f").unwrap();
    atomic_fs::write_dir(&file, true, |temp| atomic_fs::write(&temp.join("x"), "x")).unwrap();
    assert_eq!(entries(&file), names(&["x"]));
    assert_eq!(entries(tmp.path()), names(&["file", "out"]));
}

#[test]
fn a_failed_fill_leaves_the_previous_directory_and_no_temporary() {
    let tmp = TempDir::new("dir-fail");
    let dir = tmp.path().join("out");
    for overwrite in [false, true] {
        let result = atomic_fs::write_dir(&dir, overwrite, |temp| {
            atomic_fs::write(&temp.join("partial.txt"), "partial")?;
            Err(FillError::Mine)
        });
        assert!(matches!(result, Err(FillError::Mine)));
        assert!(entries(tmp.path()).is_empty(), "overwrite = {overwrite}");
    }
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "old").unwrap();
    let result = atomic_fs::write_dir(&dir, true, |temp| {
        atomic_fs::write(&temp.join("partial.txt"), "partial")?;
        Err(FillError::Mine)
    });
    assert!(matches!(result, Err(FillError::Mine)));
    assert_eq!(entries(&dir), names(&["keep.txt"]));
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "old"
    );
    assert_eq!(entries(tmp.path()), names(&["out"]));
}

#[test]
fn replace_dir_moves_a_staged_directory_into_place() {
    let tmp = TempDir::new("replace");
    let (staged, dir) = (tmp.path().join("staged"), tmp.path().join("dir"));
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("a"), "1").unwrap();
    atomic_fs::replace_dir(&staged, &dir).unwrap();
    assert_eq!(entries(tmp.path()), names(&["dir"]));
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("b"), "2").unwrap();
    atomic_fs::replace_dir(&staged, &dir).unwrap();
    assert_eq!(entries(tmp.path()), names(&["dir"]));
    assert_eq!(entries(&dir), names(&["b"]));
    // A missing staged directory: an error naming the target, which stays.
    let err = atomic_fs::replace_dir(&staged, &dir).unwrap_err();
    assert_eq!(err.path, dir);
    assert_eq!(entries(&dir), names(&["b"]));
    assert_eq!(entries(tmp.path()), names(&["dir"]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes come back exactly, over an existing file of other contents.
    #[test]
    fn arbitrary_contents_round_trip(
        first in proptest::collection::vec(any::<u8>(), 0..4096),
        second in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let tmp = TempDir::new("prop");
        let file = tmp.path().join("data");
        atomic_fs::write(&file, &first).unwrap();
        prop_assert_eq!(std::fs::read(&file).unwrap(), first);
        atomic_fs::write(&file, &second).unwrap();
        prop_assert_eq!(std::fs::read(&file).unwrap(), second);
        prop_assert_eq!(entries(tmp.path()), names(&["data"]));
    }
}

#[test]
fn a_lock_has_one_holder_and_its_file_goes_with_it() {
    let tmp = TempDir::new("lock");
    let path = tmp.path().join("out.lock");
    let first = atomic_fs::Lock::try_acquire(&path).unwrap().expect("free");
    assert!(path.exists());
    // A second open file description conflicts, as another process's would.
    assert!(atomic_fs::Lock::try_acquire(&path).unwrap().is_none());
    drop(first);
    assert!(!path.exists(), "the lock file is removed with the lock");
    // A lock file left by a killed holder does not block.
    std::fs::write(&path, b"").unwrap();
    let again = atomic_fs::Lock::try_acquire(&path)
        .unwrap()
        .expect("stale file");
    drop(again);
    // A lock file under a missing directory: an error naming it.
    let missing = tmp.path().join("no/such/dir.lock");
    let e = atomic_fs::Lock::try_acquire(&missing).unwrap_err();
    assert_eq!(e.path, missing);
}

/// Threads taking and dropping the lock as fast as they can: never two holders at once,
/// although each lock file is removed and created again all the time.
#[test]
fn contending_threads_never_hold_the_lock_together() {
    let tmp = TempDir::new("lock-threads");
    let path = tmp.path().join("out.lock");
    let holders = AtomicUsize::new(0);
    let taken = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    if let Some(lock) = atomic_fs::Lock::try_acquire(&path).unwrap() {
                        assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        taken.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                        holders.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                    }
                }
            });
        }
    });
    assert!(taken.load(Ordering::Relaxed) > 0);
    assert!(!path.exists());
}
