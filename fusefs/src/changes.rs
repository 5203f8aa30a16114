//! The changes this mount has in flight, and when each ended, per inode: what keeps an answer fetched while a change
//! raced it from being applied (L1: a removed name never comes back from a listing fetched before the removal).
//! A reader takes a token for the inode whose data it fetches (a directory's names, a node's attributes) and applies
//! the answer only if no change to that inode was in flight then or ended since. A change marks every inode whose
//! data it alters (a directory whose names change, a node whose attributes change, and the node's directory, whose
//! listing carries those attributes), so a change in one directory costs readers of another nothing.

use std::collections::HashMap;
use std::sync::Mutex;

/// Inodes whose last change is remembered, at most: past it the memory starts over, and tokens taken before
/// then count as raced (their readers fetch once more).
const REMEMBERED: usize = 4096;

#[derive(Default)]
pub struct ChangeLog {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    in_flight: HashMap<u64, u32>,
    /// When each inode's last change ended (a value of `seq`).
    ended: HashMap<u64, u64>,
    /// Counts ended changes.
    seq: u64,
    /// Tokens older than this count as raced: what ended before it is forgotten.
    floor: u64,
}

/// "Nothing was changing this inode when the reader asked", as of one moment.
#[derive(Clone, Copy, Debug)]
pub struct Token(u64);

/// A change in flight; it ends when dropped (after its result went into the inode table).
pub struct Change<'a> {
    changes: &'a ChangeLog,
    inodes: Vec<u64>,
}

impl ChangeLog {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("changes lock")
    }

    /// A change of these inodes begins.
    pub fn begin(&self, inodes: impl IntoIterator<Item = u64>) -> Change<'_> {
        let mut inodes: Vec<u64> = inodes.into_iter().filter(|&ino| ino != 0).collect();
        inodes.sort_unstable();
        inodes.dedup();
        let mut t = self.table();
        for &ino in &inodes {
            *t.in_flight.entry(ino).or_default() += 1;
        }
        Change { changes: self, inodes }
    }

    /// A token for reading `ino`, or `None` while a change of it is in flight.
    pub fn quiet(&self, ino: u64) -> Option<Token> {
        let t = self.table();
        (!t.in_flight.contains_key(&ino)).then_some(Token(t.seq))
    }

    /// Whether nothing changed `ino` since `token` was taken (and nothing is changing it now).
    pub fn still_quiet(&self, ino: u64, token: Option<Token>) -> bool {
        let Some(Token(at)) = token else { return false };
        let t = self.table();
        !t.in_flight.contains_key(&ino) && at >= t.floor && t.ended.get(&ino).is_none_or(|&ended| ended <= at)
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        let mut t = self.changes.table();
        t.seq += 1;
        let seq = t.seq;
        for ino in &self.inodes {
            if let Some(n) = t.in_flight.get_mut(ino) {
                *n -= 1;
                if *n == 0 {
                    t.in_flight.remove(ino);
                }
            }
            t.ended.insert(*ino, seq);
        }
        if t.ended.len() > REMEMBERED {
            t.ended.clear();
            t.floor = seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_disturbs_readers_of_the_inodes_it_marks_only() {
        let changes = ChangeLog::default();
        let (dir, other) = (2, 3);
        let before = changes.quiet(dir);
        let unrelated = changes.quiet(other);
        let change = changes.begin([dir, 7]);
        assert!(changes.quiet(dir).is_none(), "in flight");
        let during = changes.quiet(other);
        drop(change);
        assert!(!changes.still_quiet(dir, before), "a change ended since the token");
        assert!(changes.still_quiet(other, unrelated), "another directory is not disturbed");
        assert!(changes.still_quiet(other, during));
        let after = changes.quiet(dir);
        assert!(changes.still_quiet(dir, after));
        assert!(!changes.still_quiet(dir, None));
    }

    #[test]
    fn nested_changes_keep_an_inode_in_flight_until_the_last_ends() {
        let changes = ChangeLog::default();
        let first = changes.begin([5]);
        let second = changes.begin([5, 5]);
        drop(first);
        assert!(changes.quiet(5).is_none());
        drop(second);
        assert!(changes.quiet(5).is_some());
    }

    #[test]
    fn forgetting_old_changes_makes_old_tokens_raced_never_quiet() {
        let changes = ChangeLog::default();
        let old = changes.quiet(1);
        for ino in 10..(10 + REMEMBERED as u64 + 1) {
            drop(changes.begin([ino]));
        }
        assert!(!changes.still_quiet(1, old), "a token older than the memory is raced");
        let fresh = changes.quiet(1);
        drop(changes.begin([2]));
        assert!(changes.still_quiet(1, fresh));
    }
}
