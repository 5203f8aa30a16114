//! The hashes of a file being written (md5, SHA-256 and the server's proof tag: `netdisk_protocol::content`), kept up
//! to date as the writes arrive, so that the upload at close needs no pass over the bytes. A big file is hashed on a
//! thread of its own, off the path of the write: the writing process waits for each write's answer, and hashing
//! costs as much as the rest of a write together. Small files are hashed inline (a thread each would cost more than
//! it saves).
//! Architecture Invariant: a digest is only given for bytes that were hashed in file order; anything else
//! (a write into hashed bytes, a truncation, a read error) gives up, and the caller hashes the file itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use netdisk_protocol::{ContentHasher, ContentHashes};

/// Bytes hashed inline before the hashing moves to a thread.
const INLINE_LIMIT: u64 = 1 << 20;
/// Writes queued for the thread (each at most one FUSE write, 1 MiB): bounds the memory a fast writer takes.
const QUEUED_WRITES: usize = 8;
/// Most write ranges held ahead of the hashed end before giving up.
const MAX_AHEAD: usize = 4096;

pub struct RunningHash {
    mode: Mode,
    file: Arc<File>,
    salt: Arc<[u8]>,
}

// One per file being written; boxing the inline state would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Inline(Progress),
    Thread(SyncSender<Message>),
}

enum Message {
    Written(u64, Vec<u8>),
    Truncated(u64),
    Digest(mpsc::Sender<Option<(ContentHashes, u64)>>),
}

/// Hashes of bytes `0..covered` while no write has gone back into hashed bytes, and the ranges written beyond
/// `covered` (start -> end), hashed once the gap before them is filled: the kernel may deliver writes slightly
/// out of order.
struct Progress {
    hasher: Option<(ContentHasher, u64)>,
    /// The proof salt of the server the content goes to (a new hasher starts from it).
    salt: Arc<[u8]>,
    ahead: BTreeMap<u64, u64>,
    /// The staging file, to read back ranges that were written ahead.
    file: Arc<File>,
}

impl RunningHash {
    /// A running hash of the (empty) file `file`, its proof tag salted with `salt`.
    pub fn new(file: File, salt: Arc<[u8]>) -> RunningHash {
        let file = Arc::new(file);
        let hasher = Some((ContentHasher::new(&salt), 0));
        let progress = Progress { hasher, salt: salt.clone(), ahead: BTreeMap::new(), file: file.clone() };
        RunningHash { mode: Mode::Inline(progress), file, salt }
    }

    /// `data` was written at `offset` (and is in the file already).
    pub fn written(&mut self, offset: u64, data: &[u8]) {
        match &mut self.mode {
            Mode::Inline(progress) => {
                progress.written(offset, data);
                if progress.covered().is_some_and(|c| c > INLINE_LIMIT) {
                    self.move_to_thread();
                }
            }
            Mode::Thread(tx) => {
                if tx.send(Message::Written(offset, data.to_vec())).is_err() {
                    self.give_up();
                }
            }
        }
    }

    /// The file was truncated (or extended) to `size`.
    pub fn truncated(&mut self, size: u64) {
        match &mut self.mode {
            Mode::Inline(progress) => progress.truncated(size),
            Mode::Thread(tx) => {
                if tx.send(Message::Truncated(size)).is_err() {
                    self.give_up();
                }
            }
        }
    }

    /// The file changed in a way this does not follow (zeros punched into it): no digest from now on.
    pub fn forget(&mut self) {
        self.give_up();
    }

    /// The hashes of the file's `size` bytes if they were all hashed as they came; `None` otherwise.
    pub fn digest(&mut self, size: u64) -> Option<ContentHashes> {
        let found = match &self.mode {
            Mode::Inline(progress) => progress.digest(),
            Mode::Thread(tx) => {
                let (reply, answer) = mpsc::channel();
                tx.send(Message::Digest(reply)).ok().and_then(|()| answer.recv().ok()).flatten()
            }
        };
        found.filter(|(_, covered)| *covered == size).map(|(hashes, _)| hashes)
    }

    fn move_to_thread(&mut self) {
        let (tx, rx) = mpsc::sync_channel(QUEUED_WRITES);
        let Mode::Inline(progress) = std::mem::replace(&mut self.mode, Mode::Thread(tx)) else { return };
        let spawned = std::thread::Builder::new().name("netdisk-hash".into()).spawn(move || progress.serve(rx));
        if spawned.is_err() {
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        if let Mode::Inline(p) = &mut self.mode {
            p.hasher = None;
            return;
        }
        // The thread is gone, and the hash with it.
        let (salt, file) = (self.salt.clone(), self.file.clone());
        self.mode = Mode::Inline(Progress { hasher: None, salt, ahead: BTreeMap::new(), file });
    }
}

impl Progress {
    fn covered(&self) -> Option<u64> {
        self.hasher.as_ref().map(|(_, covered)| *covered)
    }

    fn digest(&self) -> Option<(ContentHashes, u64)> {
        self.hasher.as_ref().map(|(h, covered)| (h.clone().finish(), *covered))
    }

    fn serve(mut self, rx: Receiver<Message>) {
        for message in rx {
            match message {
                Message::Written(offset, data) => self.written(offset, &data),
                Message::Truncated(size) => self.truncated(size),
                Message::Digest(reply) => {
                    let _ = reply.send(self.digest());
                }
            }
        }
    }

    /// A write at the hashed end extends the hash (and absorbs ranges written ahead), a write ahead of it
    /// waits, a write into hashed bytes gives up.
    fn written(&mut self, offset: u64, data: &[u8]) {
        let Some((hasher, covered)) = self.hasher.as_mut() else { return };
        let end = offset + data.len() as u64;
        if offset < *covered || (offset > *covered && self.ahead.len() >= MAX_AHEAD) {
            self.stop();
            return;
        }
        if offset > *covered {
            let slot = self.ahead.entry(offset).or_insert(end);
            *slot = (*slot).max(end);
            return;
        }
        hasher.update(data);
        *covered = end;
        while let Some((&start, &stop)) = self.ahead.first_key_value() {
            if start > *covered {
                break;
            }
            self.ahead.pop_first();
            if stop > *covered {
                let mut buf = vec![0u8; (stop - *covered) as usize];
                if self.file.read_exact_at(&mut buf, *covered).is_err() {
                    self.stop();
                    return;
                }
                hasher.update(&buf);
                *covered = stop;
            }
        }
    }

    /// Truncating at the hashed end keeps the hash; to zero starts it afresh; anything else gives up.
    fn truncated(&mut self, size: u64) {
        if self.covered().is_some_and(|covered| covered == size) && self.ahead.is_empty() {
            return;
        }
        self.ahead.clear();
        self.hasher = if size == 0 { Some((ContentHasher::new(&self.salt), 0)) } else { None };
    }

    fn stop(&mut self) {
        self.hasher = None;
        self.ahead.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `data` at `offset` to the file and tells `running`.
    fn write(file: &File, running: &mut RunningHash, offset: u64, data: &[u8]) {
        file.write_all_at(data, offset).unwrap();
        running.written(offset, data);
    }

    #[test]
    fn big_files_are_hashed_on_a_thread_in_any_nearly_sequential_order() {
        let file = tempfile::tempfile().unwrap();
        let salt: Arc<[u8]> = Arc::from(&b"salt"[..]);
        let mut running = RunningHash::new(file.try_clone().unwrap(), salt);
        let hashes = |data: &[u8]| Some(netdisk_protocol::content::content_hashes(b"salt", data));
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<(u64, &[u8])> =
            data.chunks(128 * 1024).enumerate().map(|(i, p)| (i as u64 * 128 * 1024, p)).collect();
        // Pairs swapped past the inline limit: the thread holds the later one until the gap is filled.
        for pair in pieces.chunks(2) {
            for &(offset, piece) in pair.iter().rev() {
                write(&file, &mut running, offset, piece);
            }
        }
        assert!(matches!(running.mode, Mode::Thread(_)));
        assert_eq!(running.digest(data.len() as u64), hashes(&data));
        assert_eq!(running.digest(data.len() as u64 - 1), None, "a digest is for the whole size only");

        // A write into hashed bytes gives up; truncating to zero starts afresh.
        write(&file, &mut running, 10, b"x");
        assert_eq!(running.digest(data.len() as u64), None);
        file.set_len(0).unwrap();
        running.truncated(0);
        write(&file, &mut running, 0, b"again");
        assert_eq!(running.digest(5), hashes(b"again"));
    }
}
