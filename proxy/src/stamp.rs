//! What the config's files look like from outside — which files, their identity, size and
//! times — so that polling can tell "unchanged" from a few `stat` calls instead of reading
//! and hashing every file on every tick.
//!
//! Reading is done off the workers, on the background thread, and a tick that starts that
//! thread keeps the process from having one thread (see [`crate::background`]). A stamp is
//! taken on the worker: one `stat` for a file, a directory listing and one `stat` per YAML
//! file for a directory, once per poll — local metadata, microseconds.
//!
//! A file can change without its stamp changing when two writes of the same size land within
//! one tick of the file system's clock. As git does for its index, a stamp taken while its
//! newest file was that fresh is *racy*: it never vouches for its files, so they are read
//! again at the next poll, when the question has settled.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How recently a file must have changed for a stamp taken now to be racy: wider than the
/// coarsest timestamps in use (FAT's two seconds).
const RACY: Duration = Duration::from_secs(2);

/// The identity, size and times of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The config's files as of one look at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    files: Vec<FileStamp>,
    /// Some file changed too close to the look for the stamp to vouch for it.
    racy: bool,
}

impl Stamp {
    /// The stamp of the files `strait_config::load::read_sources` would read for `path`, or
    /// `None` when they cannot be listed or looked at (the read then reports why).
    pub fn of(path: &Path) -> Option<Self> {
        let now = SystemTime::now();
        let mut racy = false;
        let files = strait_config::load::source_files(path)
            .ok()?
            .into_iter()
            .map(|path| {
                // `metadata` follows symlinks: a Kubernetes ConfigMap update, which swaps a
                // link, shows as another file.
                let meta = std::fs::metadata(&path).ok()?;
                racy |= last_change(&meta)
                    .and_then(|changed| changed.checked_add(RACY))
                    .is_none_or(|settled| settled >= now);
                Some(FileStamp {
                    path,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { files, racy })
    }

    /// Whether the files are known to be as they were when `earlier` was taken: the same
    /// files, unchanged, and `earlier` was not racy.
    pub fn unchanged_since(&self, earlier: &Stamp) -> bool {
        !earlier.racy && self.files == earlier.files
    }
}

/// When the file's content or status last changed (`None` if its times cannot be read).
fn last_change(meta: &std::fs::Metadata) -> Option<SystemTime> {
    let status = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
        u64::try_from(meta.ctime()).ok()?,
        u32::try_from(meta.ctime_nsec()).ok()?,
    ))?;
    Some(meta.modified().ok()?.max(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("strait-stamp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Dir(dir)
    }

    /// `stamp` as if taken long after its files last changed.
    fn settled(stamp: Stamp) -> Stamp {
        Stamp {
            racy: false,
            ..stamp
        }
    }

    #[test]
    fn a_fresh_change_makes_the_stamp_racy_so_it_does_not_vouch() {
        let dir = scratch("racy");
        let file = dir.0.join("config.yaml");
        std::fs::write(&file, "a: 1\n").expect("write");
        let stamp = Stamp::of(&file).expect("stamp");
        assert!(stamp.racy, "a file written just now");
        assert!(!Stamp::of(&file).expect("stamp").unchanged_since(&stamp));
        assert!(Stamp::of(&file)
            .expect("stamp")
            .unchanged_since(&settled(stamp)));
    }

    #[test]
    fn rewrites_renames_and_new_files_change_the_stamp() {
        let dir = scratch("changes");
        std::fs::write(dir.0.join("a.yaml"), "a: 1\n").expect("write");
        std::fs::write(dir.0.join(".hidden.yaml"), "x\n").expect("write");
        std::fs::write(dir.0.join("notes.txt"), "x\n").expect("write");
        let before = settled(Stamp::of(&dir.0).expect("stamp"));
        assert_eq!(
            before.files.len(),
            1,
            "only the YAML files read_sources reads"
        );
        assert!(Stamp::of(&dir.0).expect("stamp").unchanged_since(&before));

        // Files read_sources skips do not matter.
        std::fs::write(dir.0.join("notes.txt"), "longer\n").expect("write");
        assert!(Stamp::of(&dir.0).expect("stamp").unchanged_since(&before));

        // A rewrite of another size.
        std::fs::write(dir.0.join("a.yaml"), "a: 22\n").expect("write");
        let rewritten = settled(Stamp::of(&dir.0).expect("stamp"));
        assert!(!rewritten.unchanged_since(&before));

        // Same size, replaced by a rename (as editors and ConfigMaps do): another inode.
        std::fs::write(dir.0.join("next"), "a: 33\n").expect("write");
        std::fs::rename(dir.0.join("next"), dir.0.join("a.yaml")).expect("rename");
        let renamed = settled(Stamp::of(&dir.0).expect("stamp"));
        assert!(!renamed.unchanged_since(&rewritten));

        // A new file.
        std::fs::write(dir.0.join("b.yml"), "b: 1\n").expect("write");
        assert!(!Stamp::of(&dir.0).expect("stamp").unchanged_since(&renamed));
    }

    #[test]
    fn a_missing_path_has_no_stamp() {
        let dir = scratch("missing");
        assert_eq!(Stamp::of(&dir.0.join("absent.yaml")), None);
    }
}
