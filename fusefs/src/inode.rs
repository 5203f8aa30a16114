//! The inode table: the mount's own inode numbers, the server node each stands for, and the names that lead to it.
//! Inode numbers are the mount's, not the server's, because a file written here exists only locally until it is uploaded.
//! Architecture Invariant: a name leaves this table (`detach`) only after the server confirmed its removal (L1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netdisk_protocol::{Attr, MAX_DEPTH, MAX_PATH};

pub const ROOT: u64 = 1;

/// Why an inode has no path to ask the server about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPath {
    /// It has no name any more (unlinked, or not known here): ENOENT.
    Gone,
    /// Its path from the mount's root is longer than the protocol carries (`MAX_PATH` bytes, `MAX_DEPTH` names):
    /// ENAMETOOLONG, as a local file system gives for a path past its limits.
    TooLong,
}

pub struct Inode {
    /// Parent directory of the primary name; 0 once the last name is gone (unlinked but maybe still open).
    pub parent: u64,
    pub name: String,
    /// The server's node id; `None` for a file created here and not uploaded yet.
    pub remote: Option<u64>,
    /// Last known attributes (`attr.ino` is the server's id; the kernel sees this table's number).
    pub attr: Attr,
    /// When `attr` came from the server; `None` once a change made here altered it there (fetch it again).
    pub fetched: Option<Instant>,
    /// Kernel references (lookups not yet forgotten).
    pub lookups: u64,
    /// md5 of the content whose pages the kernel may still cache (for `FOPEN_KEEP_CACHE`).
    pub cached_md5: Option<String>,
}

pub struct Inodes {
    nodes: HashMap<u64, Inode>,
    by_remote: HashMap<u64, u64>,
    names: HashMap<(u64, String), u64>,
    next: u64,
}

impl Inodes {
    pub fn new(root: Attr) -> Inodes {
        let mut nodes = HashMap::new();
        let mut by_remote = HashMap::new();
        by_remote.insert(root.ino, ROOT);
        nodes.insert(
            ROOT,
            Inode {
                parent: 0,
                name: String::new(),
                remote: Some(root.ino),
                attr: root,
                fetched: Some(Instant::now()),
                lookups: 1,
                cached_md5: None,
            },
        );
        Inodes { nodes, by_remote, names: HashMap::new(), next: ROOT + 1 }
    }

    /// Whether `ino`'s attributes came from the server less than `ttl` ago and nothing here changed them since.
    pub fn fresh(&self, ino: u64, ttl: Duration) -> bool {
        self.nodes.get(&ino).and_then(|n| n.fetched).is_some_and(|t| t.elapsed() < ttl)
    }

    /// A change made here altered `ino`'s attributes on the server (a directory's times and link count after
    /// a name in it changed, a node's ctime and link count after a link or rename): ask the server next time.
    pub fn invalidate(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.fetched = None;
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.nodes.get_mut(&ino)
    }

    /// The server path of an inode.
    pub fn path(&self, ino: u64) -> Result<String, NoPath> {
        self.path_with(ino, None)
    }

    /// The server path of `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Result<String, NoPath> {
        self.path_with(parent, Some(name))
    }

    /// Walks up from `ino` to the root: at most `MAX_DEPTH` steps, whatever the table holds (a cycle a hostile
    /// server built included), and never a path the server would refuse or a request could not carry.
    fn path_with(&self, ino: u64, child: Option<&str>) -> Result<String, NoPath> {
        let too_long = |names: &[&str], len: usize| names.len() > MAX_DEPTH || len > MAX_PATH;
        let mut names: Vec<&str> = child.into_iter().collect();
        let mut len = child.map_or(0, |name| 1 + name.len());
        let mut at = ino;
        while at != ROOT {
            let node = self.nodes.get(&at).ok_or(NoPath::Gone)?;
            if node.parent == 0 {
                return Err(NoPath::Gone);
            }
            names.push(node.name.as_str());
            len += 1 + node.name.len();
            if too_long(&names, len) {
                return Err(NoPath::TooLong);
            }
            at = node.parent;
        }
        if too_long(&names, len) {
            return Err(NoPath::TooLong);
        }
        if names.is_empty() {
            return Ok("/".to_string());
        }
        let mut path = String::with_capacity(len);
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        Ok(path)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&(parent, name.to_string())).copied()
    }

    /// Records what the server says is at `parent/name`; returns the inode number (stable per server node).
    pub fn remember(&mut self, parent: u64, name: &str, attr: Attr) -> u64 {
        let ino = match self.by_remote.get(&attr.ino) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_remote.insert(attr.ino, ino);
                ino
            }
        };
        if let Some(old) = self.names.insert((parent, name.to_string()), ino) {
            if old != ino {
                self.drop_name_of(old, parent, name);
            }
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Inode {
            parent,
            name: name.to_string(),
            remote: Some(attr.ino),
            attr: attr.clone(),
            fetched: Some(Instant::now()),
            lookups: 0,
            cached_md5: None,
        });
        node.parent = parent;
        node.name = name.to_string();
        node.remote = Some(attr.ino);
        node.attr = attr;
        node.fetched = Some(Instant::now());
        ino
    }

    /// Whether directory `dir` holds a file that so far exists only in this mount (being written, not uploaded yet):
    /// the server sees the directory empty, but removing it would lose that file.
    pub fn holds_local(&self, dir: u64) -> bool {
        self.nodes.values().any(|n| n.remote.is_none() && n.parent == dir)
    }

    /// A file that so far exists only in this mount.
    pub fn add_local(&mut self, parent: u64, name: &str, attr: Attr) -> u64 {
        let ino = self.next;
        self.next += 1;
        if let Some(old) = self.names.insert((parent, name.to_string()), ino) {
            self.drop_name_of(old, parent, name);
        }
        self.nodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_string(),
                remote: None,
                attr,
                fetched: Some(Instant::now()),
                lookups: 0,
                cached_md5: None,
            },
        );
        ino
    }

    /// After an upload: the inode now stands for a server node.
    pub fn set_remote(&mut self, ino: u64, attr: Attr) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if let Some(old) = node.remote {
                if old != attr.ino {
                    self.by_remote.remove(&old);
                }
            }
            node.remote = Some(attr.ino);
            node.attr = attr.clone();
            node.fetched = Some(Instant::now());
            self.by_remote.insert(attr.ino, ino);
        }
    }

    pub fn set_attr(&mut self, ino: u64, attr: Attr) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.attr = attr;
            node.fetched = Some(Instant::now());
        }
    }

    /// The name `parent/name` is gone (confirmed by the server). Returns the inode it named.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.names.remove(&(parent, name.to_string()))?;
        self.drop_name_of(ino, parent, name);
        Some(ino)
    }

    /// If `ino`'s primary name was `parent/name`, switch to another of its names, or mark it nameless.
    fn drop_name_of(&mut self, ino: u64, parent: u64, name: &str) {
        let Some(node) = self.nodes.get(&ino) else { return };
        if node.parent != parent || node.name != name {
            return;
        }
        let other = self.names.iter().find(|(_, &i)| i == ino).map(|((p, n), _)| (*p, n.clone()));
        if let Some(node) = self.nodes.get_mut(&ino) {
            match other {
                Some((p, n)) => {
                    node.parent = p;
                    node.name = n;
                }
                None => node.parent = 0,
            }
        }
    }

    /// A rename the server confirmed. A replaced target loses its name.
    pub fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let Some(ino) = self.names.remove(&(parent, name.to_string())) else { return };
        self.detach(new_parent, new_name);
        self.names.insert((new_parent, new_name.to_string()), ino);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = new_parent;
            node.name = new_name.to_string();
        }
    }

    /// Replaces the remembered names of a directory with a fresh listing, keeping files that exist only here.
    pub fn forget_names_in(&mut self, dir: u64) {
        let stale: Vec<(u64, String)> = self
            .names
            .iter()
            .filter(|((p, _), ino)| *p == dir && self.nodes.get(ino).is_some_and(|n| n.remote.is_some()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.names.remove(&key);
        }
    }

    /// Files of `dir` that exist only in this mount: (name, inode).
    pub fn local_children(&self, dir: u64) -> Vec<(String, u64)> {
        self.names
            .iter()
            .filter(|((p, _), ino)| *p == dir && self.nodes.get(ino).is_some_and(|n| n.remote.is_none()))
            .map(|((_, name), ino)| (name.clone(), *ino))
            .collect()
    }

    pub fn looked_up(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// The kernel dropped `n` references. An inode nobody references and that has no name is removed.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && node.parent == 0 {
            if let Some(remote) = node.remote {
                self.by_remote.remove(&remote);
            }
            self.nodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdisk_protocol::{NodeKind, Timespec};

    fn attr(ino: u64, kind: NodeKind) -> Attr {
        Attr {
            ino,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            rdev: 0,
            md5: None,
        }
    }

    #[test]
    fn paths_follow_renames_and_detaches() {
        let mut t = Inodes::new(attr(100, NodeKind::Dir));
        let a = t.remember(ROOT, "a", attr(101, NodeKind::Dir));
        let f = t.remember(a, "f", attr(102, NodeKind::File));
        assert_eq!(t.path(f).unwrap(), "/a/f");
        t.rename(ROOT, "a", ROOT, "b");
        assert_eq!(t.path(f).unwrap(), "/b/f");
        assert_eq!(t.remember(a, "f", attr(102, NodeKind::File)), f, "same server node, same inode");
        let l = t.add_local(a, "new", attr(0, NodeKind::File));
        assert_eq!(t.local_children(a), vec![("new".to_string(), l)]);
        t.forget_names_in(a);
        assert_eq!(t.child(a, "new"), Some(l));
        assert_eq!(t.child(a, "f"), None);
        t.remember(a, "f", attr(102, NodeKind::File));
        assert_eq!(t.detach(a, "f"), Some(f));
        assert_eq!(t.path(f), Err(NoPath::Gone));
    }

    #[test]
    fn paths_past_the_protocol_limits_are_too_long() {
        let mut t = Inodes::new(attr(100, NodeKind::Dir));
        assert_eq!(t.path(ROOT).unwrap(), "/");
        assert_eq!(t.child_path(ROOT, "a").unwrap(), "/a");
        // Directories of 255-byte names: 127 of them make a path of MAX_PATH - 256 bytes.
        let name = |i: usize| format!("{i:03}{}", "d".repeat(netdisk_protocol::MAX_NAME - 3));
        let mut dir = ROOT;
        for i in 0..MAX_PATH / 256 - 1 {
            dir = t.remember(dir, &name(i), attr(1000 + i as u64, NodeKind::Dir));
        }
        assert_eq!(t.path(dir).unwrap().len(), MAX_PATH - 256);
        assert_eq!(t.child_path(dir, &"f".repeat(255)).unwrap().len(), MAX_PATH, "exactly the limit");
        assert_eq!(t.child_path(dir, &"f".repeat(256)), Err(NoPath::TooLong), "one byte past it");
        let last = t.remember(dir, &"f".repeat(255), attr(5000, NodeKind::Dir));
        assert_eq!(t.path(last).unwrap().len(), MAX_PATH);
        assert_eq!(t.child_path(last, "x"), Err(NoPath::TooLong));
        // A name below it (the server listed it: a rename above made the path longer) has no path to send.
        let below = t.remember(last, "x", attr(5001, NodeKind::File));
        assert_eq!(t.path(below), Err(NoPath::TooLong));

        // MAX_DEPTH names of one byte are a short path; one more name is too deep.
        let mut dir = ROOT;
        for i in 0..MAX_DEPTH {
            dir = t.remember(dir, "x", attr(10_000 + i as u64, NodeKind::Dir));
        }
        assert_eq!(t.path(dir).unwrap(), "/x".repeat(MAX_DEPTH));
        assert_eq!(t.child_path(dir, "y"), Err(NoPath::TooLong));

        // A cycle (only a hostile server could make one) ends the walk too.
        let a = t.remember(ROOT, "a", attr(20_000, NodeKind::Dir));
        let b = t.remember(a, "b", attr(20_001, NodeKind::Dir));
        t.remember(b, "a", attr(20_000, NodeKind::Dir));
        assert_eq!(t.path(a), Err(NoPath::TooLong));
    }

    #[test]
    fn hard_links_keep_a_path_while_one_name_is_left() {
        let mut t = Inodes::new(attr(100, NodeKind::Dir));
        let x = t.remember(ROOT, "x", attr(5, NodeKind::File));
        assert_eq!(t.remember(ROOT, "y", attr(5, NodeKind::File)), x);
        t.detach(ROOT, "y");
        assert_eq!(t.path(x).unwrap(), "/x");
        t.detach(ROOT, "x");
        assert_eq!(t.path(x), Err(NoPath::Gone));
    }
}
