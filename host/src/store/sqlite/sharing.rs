//! Whether several processes can share a SQLite file: they can on one machine (WAL mode with
//! its shared-memory index, locks and the change log), not across machines. A file on a network
//! file system is the sign of the latter (SQLite: "WAL does not work over a network
//! filesystem"), so `aihost api` and `aihost consumer` refuse one. Separate because it reads
//! the machine's mount table, nothing of the database.

use std::path::{Path, PathBuf};

/// File system types that are shared between machines (as `/proc/self/mountinfo` names them).
const NETWORK_FILE_SYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "fuse.glusterfs",
    "fuse.sshfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.rclone",
];

/// The network file system type `path` (a database file, which may not exist yet) lives on,
/// or none when it is local or the mount table cannot be read (not Linux).
pub(crate) fn network_file_system(path: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let fs_type = file_system_of(&mountinfo, &existing_ancestor(path))?;
    NETWORK_FILE_SYSTEMS
        .contains(&fs_type.as_str())
        .then_some(fs_type)
}

/// The path itself or its nearest existing ancestor, absolute and without symlinks.
fn existing_ancestor(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute
        .ancestors()
        .find_map(|p| std::fs::canonicalize(p).ok())
        .unwrap_or(absolute)
}

/// The type of the file system mounted at the longest mount point that holds `path`, from the
/// text of `/proc/self/mountinfo` (`id parent major:minor root mount-point options ... - type
/// source super-options`; octal escapes such as `\040` for a space in the mount point).
fn file_system_of(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let fs_type = right.split(' ').next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.components().count(), fs_type.to_owned()))
        })
        // The last of equally deep mounts is the one on top.
        .max_by(|a, b| a.0.cmp(&b.0).then(std::cmp::Ordering::Less))
        .map(|(_, fs_type)| fs_type)
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash).
fn unescape(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:40 / /srv/shared rw,relatime - nfs4 fileserver:/export rw,vers=4.2
41 40 0:41 / /srv/shared/local\\040disk rw,relatime - xfs /dev/sdb1 rw
42 27 0:42 / /mnt rw - tmpfs tmpfs rw
43 27 0:43 / /mnt rw - cifs //nas/share rw
";

    #[test]
    fn the_deepest_mount_holding_the_path_decides() {
        let fs = |p: &str| file_system_of(MOUNTINFO, Path::new(p));
        assert_eq!(fs("/var/lib/aihost/aihost.db").as_deref(), Some("ext4"));
        assert_eq!(fs("/srv/shared/aihost.db").as_deref(), Some("nfs4"));
        assert_eq!(
            fs("/srv/shared/local disk/aihost.db").as_deref(),
            Some("xfs")
        );
        // Not a prefix by components.
        assert_eq!(fs("/srv/sharedx/aihost.db").as_deref(), Some("ext4"));
        // Mounted over: the later line is on top.
        assert_eq!(fs("/mnt/aihost.db").as_deref(), Some("cifs"));
    }

    #[test]
    fn a_local_temporary_folder_is_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            network_file_system(&dir.path().join("not/yet/there.db")),
            None
        );
    }
}
