//! The private copy of a plugin library that the host actually opens.
//!
//! The dynamic loader maps a library from its file for as long as the process lives. If that
//! file is then overwritten in place (`cp new.so plugins/`), truncated or rewritten, the pages
//! the process runs change under it, and the next touch of a page past the new end kills it
//! with SIGBUS. So the host never opens the file in the plugin folder: it copies it into a new
//! folder of its own (mode 0700, under the system's temporary folder, `TMPDIR`), checks the
//! copy (see `elf.rs`), opens the copy, and deletes the copy and its folder at once. The
//! mapping keeps the deleted copy's contents alive and nobody else can reach them, so whatever
//! happens to the file in the plugin folder afterwards cannot touch the running process (a
//! changed file is reported as `plugin_needs_restart` on reload).

use std::{
    fs::File,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// A copy of a library in a folder only this process uses; dropped, it is deleted (the folder
/// with it). A library opened from it stays mapped.
pub(super) struct PrivateCopy {
    dir: PathBuf,
    /// The copy.
    pub(super) path: PathBuf,
    /// The copy, open for reading (the checks read through it).
    pub(super) file: File,
}

impl PrivateCopy {
    /// Copies `source` into a new private folder. `Err` is one short reason.
    pub(super) fn of(source: &Path) -> Result<PrivateCopy, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir();
        let dir = base.join(format!(
            "aihost-plugin-{}-{n}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        // `create`, not `create_all`: the folder must be new, so it is ours and empty.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create a private folder in {}: {e}", base.display()))?;
        let name = source
            .file_name()
            .map_or_else(|| "plugin.so".into(), |n| n.to_os_string());
        let path = dir.join(name);
        let copied = (|| -> std::io::Result<File> {
            let mut from = File::open(source)?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o500)
                .open(&path)?;
            std::io::copy(&mut from, &mut to)?;
            File::open(&path)
        })();
        match copied {
            Ok(file) => Ok(PrivateCopy { dir, path, file }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                Err(format!("cannot copy it to {}: {e}", path.display()))
            }
        }
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
