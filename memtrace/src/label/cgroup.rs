//! Memory cgroup ids to `cgroup` label values.
//!
//! The programs count allocations per memory cgroup id: the `kernfs_node.id` of the task's
//! memory cgroup, which is the inode number of that cgroup's directory in the cgroup
//! filesystem. This module finds the hierarchy that holds the memory controller (cgroup v1:
//! the `cgroup` mount with the `memory` option, usually `/sys/fs/cgroup/memory`; cgroup v2:
//! the `cgroup2` mount, usually `/sys/fs/cgroup`) and maps ids to paths relative to its root
//! by walking its directories and reading their inode numbers.
//!
//! A resolved id keeps its path for the daemon's lifetime, so that a series never changes
//! its label (the kernel's counts are cumulative). An id whose directory is gone (the cgroup
//! was deleted before it was first resolved) reads `unknown`, and is not looked for again.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use memtrace_common::{CGROUP_OVERFLOW, CGROUP_UNREADABLE};

use super::UNKNOWN;

/// Most directories one walk visits: a bound on the time and memory a walk may take.
const WALK_MAX_DIRS: usize = 100_000;

/// Most ids remembered (resolved or not). The programs' map bounds the ids there can be;
/// this is a second bound, should that map be made very large.
const CACHE_MAX: usize = 65_536;

/// Which cgroup version holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The root of the hierarchy that holds the memory controller, from `/proc/self/mountinfo`:
/// a v1 `cgroup` mount whose options name `memory`, else the `cgroup2` mount. Only mounts of
/// a hierarchy's own root qualify, not bind mounts of a subtree.
pub fn memory_hierarchy(mountinfo: &str) -> Option<(PathBuf, Version)> {
    let mut v2 = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 5 || r.is_empty() || l[3] != "/" {
            continue;
        }
        let mountpoint = PathBuf::from(unescape(l[4]));
        match r[0] {
            "cgroup"
                if r.get(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "memory")) =>
            {
                return Some((mountpoint, Version::V1));
            }
            "cgroup2" if v2.is_none() => v2 = Some((mountpoint, Version::V2)),
            _ => {}
        }
    }
    v2
}

/// Undoes the octal escapes (`\040` for a space) of mount table fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps memory cgroup ids to paths relative to the hierarchy's root (`/` for the root,
/// `/system.slice/foo.service` below it), with a bounded cache.
#[derive(Debug)]
pub struct Resolver {
    root: PathBuf,
    known: HashMap<u64, String>,
    /// Ids a walk did not find: their cgroups are gone, and ids are never reused.
    gone: HashSet<u64>,
    walks: u64,
}

impl Resolver {
    /// A resolver for the running system's memory hierarchy, or why there is none.
    pub fn from_system() -> Result<(Resolver, Version), String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let (root, version) = memory_hierarchy(&mountinfo)
            .ok_or("no cgroup hierarchy with the memory controller is mounted")?;
        Ok((Resolver::new(root), version))
    }

    pub fn new(root: PathBuf) -> Resolver {
        Resolver {
            root,
            known: HashMap::new(),
            gone: HashSet::new(),
            walks: 0,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times the hierarchy has been walked (for tests).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The label of every id in `ids`; walks the hierarchy once if some id is new.
    /// [`CGROUP_OVERFLOW`] reads `other`.
    pub fn labels(&mut self, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        let ids: Vec<u64> = ids.into_iter().collect();
        let new: HashSet<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                *id != CGROUP_OVERFLOW
                    && *id != CGROUP_UNREADABLE
                    && !self.known.contains_key(id)
                    && !self.gone.contains(id)
            })
            .collect();
        if !new.is_empty() {
            self.walk(&new);
        }
        ids.into_iter()
            .map(|id| {
                let label = match id {
                    CGROUP_OVERFLOW => crate::label::OTHER.to_string(),
                    _ => self
                        .known
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| UNKNOWN.to_string()),
                };
                (id, label)
            })
            .collect()
    }

    /// Walks the hierarchy looking for `wanted` ids; what is not found is gone.
    fn walk(&mut self, wanted: &HashSet<u64>) {
        self.walks += 1;
        if self.known.len() + self.gone.len() + wanted.len() > CACHE_MAX {
            // Forget what is resolved: labels are recomputed from the tree as it is now.
            self.known.clear();
            self.gone.clear();
        }
        let mut left = wanted.len();
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        let mut visited = 0;
        while let Some((dir, rel)) = stack.pop() {
            visited += 1;
            if visited > WALK_MAX_DIRS {
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue; // removed while walking
            };
            if wanted.contains(&meta.ino()) && !self.known.contains_key(&meta.ino()) {
                self.known.insert(meta.ino(), rel.clone());
                left -= 1;
                if left == 0 {
                    break;
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
        for id in wanted {
            if !self.known.contains_key(id) {
                self.gone.insert(*id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "memtrace-cgroup-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/foo.service")).unwrap();
        std::fs::create_dir_all(root.join("user.slice")).unwrap();
        std::fs::write(root.join("system.slice/memory.max"), "max").unwrap();
        root
    }

    #[test]
    fn resolves_ids_to_paths_relative_to_the_root() {
        let root = tree();
        let foo = ino(&root.join("system.slice/foo.service"));
        let user = ino(&root.join("user.slice"));
        let top = ino(&root);
        let mut r = Resolver::new(root.clone());
        let l = r.labels([foo, user, top, CGROUP_OVERFLOW, CGROUP_UNREADABLE]);
        assert_eq!(l[&foo], "/system.slice/foo.service");
        assert_eq!(l[&user], "/user.slice");
        assert_eq!(l[&top], "/");
        assert_eq!(l[&CGROUP_OVERFLOW], "other");
        assert_eq!(l[&CGROUP_UNREADABLE], UNKNOWN);
        assert_eq!(r.walks(), 1);
        // Known ids need no walk.
        r.labels([foo, user]);
        assert_eq!(r.walks(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_new_cgroup_triggers_a_walk_and_a_deleted_one_reads_unknown_once() {
        let root = tree();
        let mut r = Resolver::new(root.clone());
        let foo = ino(&root.join("system.slice/foo.service"));
        assert_eq!(r.labels([foo])[&foo], "/system.slice/foo.service");
        // Created after the first walk: found by a second one.
        std::fs::create_dir(root.join("user.slice/bar")).unwrap();
        let bar = ino(&root.join("user.slice/bar"));
        assert_eq!(r.labels([foo, bar])[&bar], "/user.slice/bar");
        assert_eq!(r.walks(), 2);
        // Deleted: a resolved id keeps its label (its series must not change name).
        std::fs::remove_dir(root.join("user.slice/bar")).unwrap();
        assert_eq!(r.labels([bar])[&bar], "/user.slice/bar");
        // An id no directory has: unknown, and not looked for again.
        let stale = u64::MAX - 7;
        assert_eq!(r.labels([stale])[&stale], UNKNOWN);
        assert_eq!(r.labels([stale])[&stale], UNKNOWN);
        assert_eq!(r.walks(), 3);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn finds_the_memory_hierarchy_in_mountinfo() {
        let v1 = "\
25 1 0:22 / /sys rw shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 30 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            memory_hierarchy(v1),
            Some((PathBuf::from("/sys/fs/cgroup/memory"), Version::V1))
        );
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            memory_hierarchy(v2),
            Some((PathBuf::from("/sys/fs/cgroup"), Version::V2))
        );
        // A bind mount of a subtree is not the hierarchy's root.
        let sub = "40 25 0:26 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(memory_hierarchy(sub), None);
        let spaced = "36 30 0:32 / /mnt/cgroup\\040mem rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            memory_hierarchy(spaced),
            Some((PathBuf::from("/mnt/cgroup mem"), Version::V1))
        );
        assert_eq!(memory_hierarchy(""), None);
    }
}
