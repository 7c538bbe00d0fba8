//! Attempts' work folders (`{work_dir}/{task}-{attempt}`), made from a pool of emptied ones.
//!
//! Making a folder and deleting it again for every attempt was among the largest costs per
//! task in a profile of the ComfyUI path: ext4 skips inodes freed in the last minute when it
//! allocates one, so under a steady stream of deletions every `mkdir` scans past thousands of
//! them. A finished attempt's folder is emptied and kept under a spare name instead (at most
//! [`SPARES`]), and the next attempt's folder is a spare renamed: no inode is freed or
//! allocated for the folder itself. Spares are plain empty folders named `.spare-…`; a process
//! adopts the ones it finds at start.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Spare folders kept at most.
const SPARES: usize = 64;

/// The prefix of a spare folder's name.
const SPARE_PREFIX: &str = ".spare-";

/// The pool of one dispatcher's work folders.
#[derive(Debug)]
pub(crate) struct WorkDirs {
    root: PathBuf,
    spares: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl WorkDirs {
    /// The pool under `root`, with the spares an earlier process left there.
    pub(crate) fn new(root: &Path) -> Self {
        let spares = fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(SPARE_PREFIX))
                    .map(|e| e.path())
                    .take(SPARES)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            root: root.to_owned(),
            spares: Mutex::new(spares),
            next: AtomicU64::new(0),
        }
    }

    /// Makes the empty folder `root/name` (a spare renamed when there is one).
    pub(crate) async fn take(&self, name: &str) -> io::Result<PathBuf> {
        let dest = self.root.join(name);
        let spare = self.spares.lock().expect("spares lock").pop();
        let path = dest.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(s) = spare
                && fs::rename(&s, &path).is_ok()
            {
                return Ok(());
            }
            fs::create_dir_all(&path)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(dest)
    }

    /// Empties `dir` and keeps it as a spare (or deletes it when the pool is full or it
    /// cannot be emptied).
    pub(crate) async fn give_back(&self, dir: PathBuf) {
        let keep = self.spares.lock().expect("spares lock").len() < SPARES;
        let spare = self.root.join(format!(
            "{SPARE_PREFIX}{}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let kept = tokio::task::spawn_blocking(move || {
            if keep && empty(&dir).is_ok() && fs::rename(&dir, &spare).is_ok() {
                return Some(spare);
            }
            let _ = fs::remove_dir_all(&dir);
            None
        })
        .await
        .ok()
        .flatten();
        if let Some(s) = kept {
            self.spares.lock().expect("spares lock").push(s);
        }
    }
}

/// Deletes what `dir` holds (never following a symbolic link out of it).
fn empty(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_given_back_is_emptied_and_reused() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path());
        let a = dirs.take("t1-1").await.unwrap();
        fs::create_dir(a.join("sub")).unwrap();
        fs::write(a.join("sub/x"), b"x").unwrap();
        fs::write(a.join("y"), b"y").unwrap();
        let outside = root.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, a.join("link")).unwrap();
        dirs.give_back(a.clone()).await;
        assert!(!a.exists());
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"keep",
            "a link is removed, not followed"
        );
        let b = dirs.take("t2-1").await.unwrap();
        assert_eq!(
            fs::read_dir(&b).unwrap().count(),
            0,
            "a reused folder is empty"
        );
        // The spare was renamed, not a new one made: no spare is left.
        let spares = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(SPARE_PREFIX))
            .count();
        assert_eq!(spares, 0);
        // Another process adopts the spares it finds.
        dirs.give_back(b).await;
        let again = WorkDirs::new(root.path());
        assert_eq!(again.spares.lock().unwrap().len(), 1);
    }
}
