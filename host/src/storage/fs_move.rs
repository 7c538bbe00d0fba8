//! Storing a work file on the `fs` backend in one blocking call: the file is moved (renamed)
//! into place when it lies on the same file system, else copied beside its place and renamed.
//!
//! The general path ([`OpBackend::put_file`](super::operator::OpBackend::put_file)) reads the
//! file in chunks and writes it through opendal: a blocking-pool round trip for every open,
//! read, write, sync and rename, and a second copy of the bytes. A profile of the ComfyUI path
//! showed those hand-offs and the new inodes among the largest costs per task. An output the
//! dispatcher hands over is a file in the attempt's own work folder, deleted right after, so
//! it may be moved instead.
//!
//! Durability is the same as before: the file's data and its directory entry are synced
//! (`fdatasync` of the file, `fsync` of its folder and of every folder this call created)
//! before the call returns, so the completion committed after it never names a file a power
//! cut could lose. A reader never sees half a file: a rename is atomic, and a copy is written
//! under the backend's temporary folder first.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use super::StorageError;
use super::key::FS_TMP_DIR;

/// Moves (or copies) `src`, a regular file inside the folder `within`, to `root/rel`;
/// answers its size. A file elsewhere (through a symbolic link, say) is copied, never moved.
pub(super) fn store(
    root: &Path,
    rel: &str,
    key: &str,
    src: &Path,
    within: &Path,
) -> Result<u64, StorageError> {
    let dest = root.join(rel);
    let local = |p: &Path, e: io::Error| StorageError::local("put", key, p, e);
    let meta = fs::symlink_metadata(src).map_err(|e| local(src, e))?;
    if !meta.is_file() {
        return Err(local(
            src,
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let inside = match (src.parent().map(fs::canonicalize), fs::canonicalize(within)) {
        (Some(Ok(dir)), Ok(within)) => dir.starts_with(within),
        _ => false,
    };
    let parent = dest.parent().unwrap_or(root).to_path_buf();
    let created = create_dirs(root, &parent).map_err(|e| local(&parent, e))?;
    match if inside {
        fs::rename(src, &dest)
    } else {
        Err(io::ErrorKind::CrossesDevices.into())
    } {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            copy_in(root, src, &dest).map_err(|e| local(&dest, e))?;
        }
        Err(e) => return Err(local(&dest, e)),
    }
    File::open(&dest)
        .and_then(|f| f.sync_data())
        .map_err(|e| local(&dest, e))?;
    sync_dir(&parent).map_err(|e| local(&parent, e))?;
    for dir in created {
        if let Some(up) = dir.parent() {
            sync_dir(up).map_err(|e| local(up, e))?;
        }
    }
    Ok(meta.len())
}

/// Creates the missing folders of `dir` under `root`; answers the ones it created, deepest
/// last.
fn create_dirs(root: &Path, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = dir;
    while at != root && !at.is_dir() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(up) => at = up,
            None => break,
        }
    }
    missing.reverse();
    for d in &missing {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// Copies `src` to a temporary file under the backend's temporary folder, then renames it to
/// `dest` (another file system: a rename cannot cross).
fn copy_in(root: &Path, src: &Path, dest: &Path) -> io::Result<()> {
    let tmp_dir = root.join(FS_TMP_DIR);
    fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
    if let Err(e) = fs::copy(src, &tmp).and_then(|_| fs::rename(&tmp, dest)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_into_new_folders_and_answers_the_size() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir_in(root.path()).unwrap();
        let src = work.path().join("out.png");
        fs::write(&src, b"12345").unwrap();
        let n = store(
            root.path(),
            "outputs/t/1/out.png",
            "outputs/t/1/out.png",
            &src,
            work.path(),
        )
        .unwrap();
        assert_eq!(n, 5);
        assert!(!src.exists(), "moved, not copied");
        // A file outside the folder it is said to be in is copied and left in place.
        let other = tempfile::tempdir().unwrap();
        let kept = other.path().join("kept.txt");
        fs::write(&kept, b"abc").unwrap();
        assert_eq!(
            store(root.path(), "outputs/k", "outputs/k", &kept, work.path()).unwrap(),
            3
        );
        assert_eq!(fs::read(&kept).unwrap(), b"abc");
        assert_eq!(fs::read(root.path().join("outputs/k")).unwrap(), b"abc");
        assert_eq!(
            fs::read(root.path().join("outputs/t/1/out.png")).unwrap(),
            b"12345"
        );
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("secret");
        fs::write(&target, b"x").unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = store(root.path(), "outputs/a", "outputs/a", &link, root.path()).unwrap_err();
        assert_eq!(e.code(), crate::error_codes::STORAGE_IO, "{e}");
        assert!(target.exists() && !root.path().join("outputs/a").exists());
    }
}
