//! What a client checks in every answer before using it: the server may be fake or hostile, so each field it sends
//! (hash formats, names, sizes, times, counts) is held against the rules here and against the request it answers.
//! An answer that breaks one is a [`BadAnswer`]: that call fails, and the connection it came on is closed.
//! Architecture Invariant: every response type has its rules here, in one place (the `requests!` macro makes each
//! request's [`Request::check_answer`](crate::Request::check_answer) call them, so a new request cannot skip them);
//! nothing here does I/O, and a check never panics, whatever it is given.

use std::collections::HashSet;
use std::fmt;

use crate::content::{is_md5_hex, is_sha256_hex};
use crate::error::WireError;
use crate::kind::Kind;
use crate::message::*;
use crate::path::check_name;
use crate::{MAX_CHUNK_SIZE, MAX_DIR_PAGE, MAX_FILE_SIZE, MAX_NAME, MAX_PATH, MIN_CHUNK_SIZE};

/// Longest symlink target a mount can hand on: `readlink(2)` and FUSE carry at most `PATH_MAX - 1` bytes.
pub const MAX_LINK_TARGET: usize = 4095;
/// Longest error message taken from a server: a message names at most a path, a number or two and a reason.
pub const MAX_ERROR_MESSAGE: usize = 2 * MAX_PATH + 1024;
/// Characters of a server-sent string that a log or an error message shows (see [`shown`]).
const SHOWN_CHARS: usize = 160;

/// An answer that breaks the protocol. The call that got it fails, and the connection it came on is closed
/// (a peer that lies once is not asked again).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad answer to {request:?}: {field}: {problem}")]
pub struct BadAnswer {
    /// The request it answered.
    pub request: Kind,
    /// Which field broke a rule, such as `attr.md5` or `entries[3].name`.
    pub field: String,
    /// What is wrong with it; any server-sent string in it is cut and escaped ([`shown`]).
    pub problem: String,
}

/// A broken rule, before it is known which request the answer was for.
#[derive(Debug)]
pub(crate) struct Flaw {
    field: String,
    problem: String,
}

impl Flaw {
    /// The same flaw in a field of the field `outer`.
    fn within(self, outer: &str) -> Flaw {
        let field = if self.field.is_empty() { outer.to_string() } else { format!("{outer}.{}", self.field) };
        Flaw { field, problem: self.problem }
    }

    pub(crate) fn answering(self, request: Kind) -> BadAnswer {
        BadAnswer { request, field: self.field, problem: self.problem }
    }
}

type Checked = Result<(), Flaw>;

fn flaw(field: &str, problem: impl fmt::Display) -> Flaw {
    Flaw { field: field.to_string(), problem: problem.to_string() }
}

/// Fails with `problem` in `field` unless `ok`.
fn rule(ok: bool, field: &str, problem: impl FnOnce() -> String) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(flaw(field, problem()))
    }
}

/// The rules of one request's answer (`payload_len`: the bytes that came with it). Implemented for every request;
/// [`Request::check_answer`](crate::Request::check_answer) calls it.
pub(crate) trait Rules {
    type Answer;
    fn check(&self, res: &Self::Answer, payload_len: usize) -> Checked;
}

/// Checks an error answer: only its message is free text, and it is bounded (and always shown cut and escaped).
pub fn check_error(request: Kind, e: &WireError) -> Result<(), BadAnswer> {
    rule(e.message.len() <= MAX_ERROR_MESSAGE, "message", || {
        format!("{} bytes, more than {MAX_ERROR_MESSAGE}", e.message.len())
    })
    .map_err(|f| f.answering(request))
}

/// Checks the answer to a `ProveOwnership` against the `UploadFile` whose challenge it answered (only that request
/// says the size, which fixes the chunk count). The answer was checked on its own already, by
/// [`Request::check_answer`](crate::Request::check_answer).
pub fn check_proven(asked: &UploadFile, res: &UploadFileRes) -> Result<(), BadAnswer> {
    upload_answer(asked, res, true).map_err(|f| f.answering(Kind::ProveOwnership))
}

// ---- the pieces answers are made of ----

/// A string a peer sent, for a log line or an error message: at most [`SHOWN_CHARS`] characters, with control and
/// bidirectional-formatting characters and backslashes escaped (so it can neither forge a log line nor hide its
/// end), and its length in bytes when it was cut.
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars().take(SHOWN_CHARS) {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if self.0.chars().nth(SHOWN_CHARS).is_some() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn time(t: &Timespec, field: &str) -> Checked {
    // Every second count is kept: `SystemTime` on Linux and the FUSE wire both carry a signed 64-bit one, and the
    // server stores whatever time a client sets. Nanoseconds past a second are no time at all.
    rule(t.nsec < 1_000_000_000, field, || format!("{} nanoseconds", t.nsec))
}

/// The attributes of a node, whatever answer they come in.
fn attr(a: &Attr) -> Checked {
    rule(a.ino != 0, "ino", || "0 is no node".into())?;
    rule(a.mode <= 0o7777, "mode", || format!("{:o} has bits beyond 0o7777", a.mode))?;
    // Every node an answer describes was reached by a name (or is a root), so it has a link.
    rule(a.nlink >= 1, "nlink", || "0 for a node that has a name".into())?;
    rule(a.size <= MAX_FILE_SIZE, "size", || format!("{} bytes, more than {MAX_FILE_SIZE}", a.size))?;
    time(&a.atime, "atime")?;
    time(&a.mtime, "mtime")?;
    time(&a.ctime, "ctime")?;
    let device = matches!(a.kind, NodeKind::CharDevice | NodeKind::BlockDevice);
    rule(device || a.rdev == 0, "rdev", || format!("{} on a {:?}", a.rdev, a.kind))?;
    match (&a.md5, a.kind) {
        (Some(md5), NodeKind::File) => rule(is_md5_hex(md5), "md5", || format!("{} is not 32 hex digits", shown(md5))),
        (None, NodeKind::File) => Err(flaw("md5", "missing for a regular file")),
        (Some(md5), kind) => Err(flaw("md5", format!("{} on a {kind:?}", shown(md5)))),
        (None, _) => Ok(()),
    }
}

/// Attributes that must be of one kind of node.
fn attr_of_kind(a: &Attr, kind: NodeKind) -> Checked {
    attr(a)?;
    rule(a.kind == kind, "kind", || format!("{:?} where a {kind:?} was asked for", a.kind))
}

/// The attributes of a directory a change was made in (absent when the server could not read them).
fn parent_dir(dir: &Option<Attr>) -> Checked {
    match dir {
        Some(d) => attr_of_kind(d, NodeKind::Dir).map_err(|f| f.within("dir")),
        None => Ok(()),
    }
}

/// A nonce, salt or signature in the form every one of them takes on the wire: 64 lowercase hex digits.
fn hex64(value: &str, field: &str) -> Checked {
    rule(is_sha256_hex(value), field, || format!("{} is not 64 hex digits", shown(value)))
}

fn chunk_size(size: u32) -> Checked {
    rule((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size), "chunk_size", || {
        format!("{size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")
    })
}

/// The answer to an `UploadFile` (or to the `ProveOwnership` of its challenge, `proven`).
fn upload_answer(asked: &UploadFile, res: &UploadFileRes, proven: bool) -> Checked {
    match res {
        UploadFileRes::Instant { attr: a, dir } => {
            attr_of_kind(a, NodeKind::File).map_err(|f| f.within("attr"))?;
            rule(a.size == asked.size, "attr.size", || format!("{} bytes placed for {} sent", a.size, asked.size))?;
            rule(a.md5.as_deref() == Some(asked.md5.as_str()), "attr.md5", || {
                format!("content {} placed for {} named", shown(a.md5.as_deref().unwrap_or_default()), asked.md5)
            })?;
            parent_dir(dir)
        }
        UploadFileRes::Upload { chunk_size: size, chunk_count, .. } => {
            chunk_size(*size)?;
            let want = asked.size.div_ceil(u64::from(*size));
            rule(u64::from(*chunk_count) == want, "chunk_count", || {
                format!("{chunk_count} chunks of {size} bytes for a file of {} bytes ({want})", asked.size)
            })
        }
        UploadFileRes::Challenge { nonce, .. } => {
            rule(!proven, "challenge", || "a second challenge, in answer to a proof".into())?;
            // A copy named by md5 alone is placed from the user's own content or refused, never challenged: the
            // mount proves ownership only of content it hashed itself.
            rule(asked.sha256.is_some(), "challenge", || "a challenge for content named without its SHA-256".into())?;
            hex64(nonce, "nonce")
        }
    }
}

// ---- the rules of each answer ----

impl Rules for Hello {
    type Answer = HelloRes;
    fn check(&self, res: &HelloRes, _: usize) -> Checked {
        let salt_len = res.salt.len() / 2;
        let salt_ok = res.salt.len().is_multiple_of(2)
            && (crate::login::MIN_SALT..=crate::login::MAX_SALT).contains(&salt_len)
            && res.salt.bytes().all(|b| b.is_ascii_hexdigit());
        rule(salt_ok, "salt", || format!("{} is not 8 to 64 bytes in hex", shown(&res.salt)))?;
        // The client spends this much on the login: a server asking for more is refused, not obeyed.
        rule(res.kdf.is_reasonable(), "kdf", || format!("{:?} is beyond what a client spends", res.kdf))?;
        hex64(&res.server_nonce, "server_nonce")
    }
}

impl Rules for Login {
    type Answer = LoginRes;
    fn check(&self, res: &LoginRes, _: usize) -> Checked {
        attr_of_kind(&res.root, NodeKind::Dir).map_err(|f| f.within("root"))?;
        chunk_size(res.chunk_size)?;
        hex64(&res.proof_salt, "proof_salt")?;
        hex64(&res.server_signature, "server_signature")
    }
}

impl Rules for GetDir {
    type Answer = GetDirRes;
    fn check(&self, res: &GetDirRes, _: usize) -> Checked {
        attr_of_kind(&res.dir, NodeKind::Dir).map_err(|f| f.within("dir"))?;
        // The server pages by `limit`, taken within 1..=MAX_DIR_PAGE.
        let page = self.limit.clamp(1, MAX_DIR_PAGE) as usize;
        rule(res.entries.len() <= page, "entries", || format!("{} on a page of {page}", res.entries.len()))?;
        rule(!(res.more && res.entries.is_empty()), "more", || "set on an empty page".into())?;
        let mut previous = self.after.as_deref();
        for (i, entry) in res.entries.iter().enumerate() {
            let field = format!("entries[{i}]");
            check_name(&entry.name)
                .map_err(|e| flaw(&format!("{field}.name"), format!("{}: {e}", shown(&entry.name))))?;
            if let Some(before) = previous {
                rule(entry.name.as_str() > before, &format!("{field}.name"), || {
                    format!("{} is not after {} (names come sorted, once each)", shown(&entry.name), shown(before))
                })?;
            }
            attr(&entry.attr).map_err(|f| f.within(&format!("{field}.attr")))?;
            previous = Some(&entry.name);
        }
        Ok(())
    }
}

impl Rules for Stat {
    type Answer = StatRes;
    fn check(&self, res: &StatRes, _: usize) -> Checked {
        if self.path == "/" {
            return attr_of_kind(&res.attr, NodeKind::Dir).map_err(|f| f.within("attr"));
        }
        attr(&res.attr).map_err(|f| f.within("attr"))
    }
}

impl Rules for Mkdir {
    type Answer = MkdirRes;
    fn check(&self, res: &MkdirRes, _: usize) -> Checked {
        attr_of_kind(&res.attr, NodeKind::Dir).map_err(|f| f.within("attr"))?;
        parent_dir(&res.dir)
    }
}

impl Rules for Rmdir {
    type Answer = RmdirRes;
    fn check(&self, res: &RmdirRes, _: usize) -> Checked {
        parent_dir(&res.dir)
    }
}

impl Rules for DeleteFile {
    type Answer = DeleteFileRes;
    fn check(&self, res: &DeleteFileRes, _: usize) -> Checked {
        parent_dir(&res.dir)
    }
}

impl Rules for Rename {
    type Answer = RenameRes;
    fn check(&self, _: &RenameRes, _: usize) -> Checked {
        Ok(())
    }
}

impl Rules for SetAttr {
    type Answer = SetAttrRes;
    fn check(&self, res: &SetAttrRes, _: usize) -> Checked {
        attr(&res.attr).map_err(|f| f.within("attr"))
    }
}

impl Rules for Symlink {
    type Answer = SymlinkRes;
    fn check(&self, res: &SymlinkRes, _: usize) -> Checked {
        attr_of_kind(&res.attr, NodeKind::Symlink).map_err(|f| f.within("attr"))
    }
}

impl Rules for ReadLink {
    type Answer = ReadLinkRes;
    fn check(&self, res: &ReadLinkRes, _: usize) -> Checked {
        let t = &res.target;
        rule(!t.is_empty(), "target", || "empty".into())?;
        rule(!t.contains('\0'), "target", || format!("{} holds a NUL", shown(t)))?;
        rule(t.len() <= MAX_LINK_TARGET, "target", || format!("{} bytes, more than {MAX_LINK_TARGET}", t.len()))
    }
}

impl Rules for Link {
    type Answer = LinkRes;
    fn check(&self, res: &LinkRes, _: usize) -> Checked {
        attr(&res.attr).map_err(|f| f.within("attr"))?;
        rule(res.attr.kind != NodeKind::Dir, "attr.kind", || "a hard link to a directory".into())
    }
}

impl Rules for Mknod {
    type Answer = MknodRes;
    fn check(&self, res: &MknodRes, _: usize) -> Checked {
        attr_of_kind(&res.attr, self.kind).map_err(|f| f.within("attr"))
    }
}

impl Rules for UploadFile {
    type Answer = UploadFileRes;
    fn check(&self, res: &UploadFileRes, _: usize) -> Checked {
        upload_answer(self, res, false)
    }
}

impl Rules for ProveOwnership {
    type Answer = UploadFileRes;
    /// What can be checked without the `UploadFile` the challenge was for ([`check_proven`] checks the rest).
    fn check(&self, res: &UploadFileRes, _: usize) -> Checked {
        match res {
            UploadFileRes::Instant { attr: a, dir } => {
                attr_of_kind(a, NodeKind::File).map_err(|f| f.within("attr"))?;
                parent_dir(dir)
            }
            UploadFileRes::Upload { chunk_size: size, chunk_count, .. } => {
                chunk_size(*size)?;
                // Only content with bytes is challenged (an empty file is placed at once).
                rule(*chunk_count >= 1, "chunk_count", || "0 chunks for content that has bytes".into())
            }
            UploadFileRes::Challenge { .. } => Err(flaw("challenge", "a second challenge, in answer to a proof")),
        }
    }
}

impl Rules for QueryChunk {
    type Answer = QueryChunkRes;
    fn check(&self, res: &QueryChunkRes, _: usize) -> Checked {
        rule(res.needed.len() <= self.indexes.len(), "needed", || {
            format!("{} indexes for {} asked about", res.needed.len(), self.indexes.len())
        })?;
        let asked: HashSet<u32> = self.indexes.iter().copied().collect();
        let mut seen = HashSet::with_capacity(res.needed.len());
        for &index in &res.needed {
            rule(asked.contains(&index), "needed", || format!("chunk {index}, which was not asked about"))?;
            rule(seen.insert(index), "needed", || format!("chunk {index} twice"))?;
        }
        Ok(())
    }
}

impl Rules for UploadChunk {
    type Answer = UploadChunkRes;
    fn check(&self, res: &UploadChunkRes, _: usize) -> Checked {
        rule(res.index == self.index, "index", || format!("{} for chunk {} sent", res.index, self.index))?;
        match &res.complete {
            Some(a) => attr_of_kind(a, NodeKind::File).map_err(|f| f.within("complete")),
            None => Ok(()),
        }
    }
}

impl Rules for Download {
    type Answer = DownloadRes;
    fn check(&self, res: &DownloadRes, payload_len: usize) -> Checked {
        rule(is_md5_hex(&res.md5), "md5", || format!("{} is not 32 hex digits", shown(&res.md5)))?;
        rule(res.size <= MAX_FILE_SIZE, "size", || format!("{} bytes, more than {MAX_FILE_SIZE}", res.size))?;
        rule(res.offset == self.offset, "offset", || format!("{} for {} asked", res.offset, self.offset))?;
        let left = res.size.saturating_sub(res.offset);
        let most = left.min(u64::from(self.len));
        rule(payload_len as u64 <= most, "payload", || {
            format!("{payload_len} bytes for {} asked at {} of {} bytes", self.len, self.offset, res.size)
        })
    }
}

impl Rules for StatFs {
    type Answer = StatFsRes;
    fn check(&self, res: &StatFsRes, _: usize) -> Checked {
        rule(res.block_size != 0, "block_size", || "0".into())?;
        rule(res.blocks_free <= res.blocks, "blocks_free", || format!("{} of {}", res.blocks_free, res.blocks))?;
        rule(res.blocks_available <= res.blocks, "blocks_available", || {
            format!("{} of {}", res.blocks_available, res.blocks)
        })?;
        rule(res.files_free <= res.files, "files_free", || format!("{} of {}", res.files_free, res.files))?;
        rule((1..=MAX_NAME as u32).contains(&res.name_max), "name_max", || {
            format!("{} is outside 1..={MAX_NAME}", res.name_max)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, MAX_QUERY_INDEXES};
    use proptest::prelude::*;

    const MD5: &str = "0123456789abcdef0123456789abcdef";
    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn node(ino: u64, kind: NodeKind) -> Attr {
        let t = Timespec { sec: 1_700_000_000, nsec: 5 };
        Attr {
            ino,
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            nlink: if kind == NodeKind::Dir { 2 } else { 1 },
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            md5: (kind == NodeKind::File).then(|| MD5.to_string()),
        }
    }

    fn file(ino: u64) -> Attr {
        node(ino, NodeKind::File)
    }

    fn dir(ino: u64) -> Attr {
        node(ino, NodeKind::Dir)
    }

    fn stat(path: &str) -> Stat {
        Stat { path: path.into() }
    }

    /// The field an answer is refused for; panics if it passes.
    fn refused<R: Request>(req: &R, res: &R::Response, payload_len: usize) -> String {
        match req.check_answer(res, payload_len) {
            Err(bad) => {
                assert_eq!(bad.request, R::KIND);
                bad.field
            }
            Ok(()) => panic!("an answer to {:?} passed that must not", R::KIND),
        }
    }

    fn passes<R: Request>(req: &R, res: &R::Response, payload_len: usize) {
        if let Err(bad) = req.check_answer(res, payload_len) {
            panic!("a good answer was refused: {bad}");
        }
    }

    fn upload_request(size: u64) -> UploadFile {
        UploadFile {
            path: "/f".into(),
            size,
            md5: MD5.into(),
            sha256: Some(HEX64.into()),
            mode: 0o644,
            mtime: None,
            owner: Owner::default(),
        }
    }

    #[test]
    fn attributes_follow_the_rules() {
        let at = |f: fn(&mut Attr)| {
            let mut a = file(7);
            f(&mut a);
            StatRes { attr: a }
        };
        let cases: Vec<(StatRes, &str)> = vec![
            (at(|a| a.ino = 0), "attr.ino"),
            (at(|a| a.mode = 0o10644), "attr.mode"),
            (at(|a| a.mode = u32::MAX), "attr.mode"),
            (at(|a| a.nlink = 0), "attr.nlink"),
            (at(|a| a.size = MAX_FILE_SIZE + 1), "attr.size"),
            (at(|a| a.size = u64::MAX), "attr.size"),
            (at(|a| a.atime.nsec = 1_000_000_000), "attr.atime"),
            (at(|a| a.mtime.nsec = u32::MAX), "attr.mtime"),
            (at(|a| a.ctime.nsec = 2_000_000_000), "attr.ctime"),
            (at(|a| a.rdev = 0x0801), "attr.rdev"),
            (at(|a| a.md5 = None), "attr.md5"),
            (at(|a| a.md5 = Some("/tmp/owned".into())), "attr.md5"),
            (at(|a| a.md5 = Some("../../x".into())), "attr.md5"),
            (at(|a| a.md5 = Some(MD5.to_uppercase())), "attr.md5"),
            (at(|a| a.md5 = Some(format!("{MD5}0"))), "attr.md5"),
            (at(|a| a.md5 = Some(format!("../{}", &MD5[3..]))), "attr.md5"),
            (at(|a| a.md5 = Some(String::new())), "attr.md5"),
            (at(|a| (a.kind, a.nlink) = (NodeKind::Dir, 2)), "attr.md5"),
            (at(|a| (a.kind, a.md5) = (NodeKind::Fifo, None)).with_rdev(3), "attr.rdev"),
        ];
        for (res, field) in cases {
            assert_eq!(refused(&stat("/f"), &res, 0), field, "{res:?}");
        }
        // The edges that are fine: any second count, the last nanosecond, every permission bit, the largest file,
        // device numbers on devices.
        let fine: Vec<StatRes> = vec![
            at(|a| a.mtime = Timespec { sec: i64::MAX, nsec: 999_999_999 }),
            at(|a| a.atime = Timespec { sec: i64::MIN, nsec: 0 }),
            at(|a| a.ctime = Timespec { sec: -1, nsec: 999_999_999 }),
            at(|a| a.mode = 0o7777),
            at(|a| a.size = MAX_FILE_SIZE),
            at(|a| a.nlink = u32::MAX),
            at(|a| (a.kind, a.md5, a.rdev) = (NodeKind::CharDevice, None, 0x0103)),
            at(|a| (a.kind, a.md5, a.rdev) = (NodeKind::BlockDevice, None, u64::MAX)),
            at(|a| (a.kind, a.md5) = (NodeKind::Symlink, None)),
        ];
        for res in fine {
            passes(&stat("/f"), &res, 0);
        }
    }

    impl StatRes {
        fn with_rdev(mut self, rdev: u64) -> StatRes {
            self.attr.rdev = rdev;
            self
        }
    }

    #[test]
    fn answers_about_a_kind_of_node_must_be_that_kind() {
        assert_eq!(refused(&stat("/"), &StatRes { attr: file(1) }, 0), "attr.kind");
        passes(&stat("/"), &StatRes { attr: dir(1) }, 0);
        let mkdir = Mkdir { path: "/d".into(), mode: 0o755, owner: Owner::default() };
        assert_eq!(refused(&mkdir, &MkdirRes { attr: file(2), dir: None }, 0), "attr.kind");
        assert_eq!(refused(&mkdir, &MkdirRes { attr: dir(2), dir: Some(file(1)) }, 0), "dir.kind");
        assert_eq!(refused(&mkdir, &MkdirRes { attr: dir(2), dir: Some(Attr { ino: 0, ..dir(1) }) }, 0), "dir.ino");
        passes(&mkdir, &MkdirRes { attr: dir(2), dir: Some(dir(1)) }, 0);
        assert_eq!(refused(&Rmdir { path: "/d".into() }, &RmdirRes { dir: Some(file(1)) }, 0), "dir.kind");
        assert_eq!(refused(&DeleteFile { path: "/f".into() }, &DeleteFileRes { dir: Some(file(1)) }, 0), "dir.kind");
        passes(&DeleteFile { path: "/f".into() }, &DeleteFileRes { dir: None }, 0);
        let symlink = Symlink { path: "/l".into(), target: "x".into(), owner: Owner::default() };
        assert_eq!(refused(&symlink, &SymlinkRes { attr: file(3) }, 0), "attr.kind");
        passes(&symlink, &SymlinkRes { attr: node(3, NodeKind::Symlink) }, 0);
        let link = Link { existing: "/a".into(), new: "/b".into() };
        assert_eq!(refused(&link, &LinkRes { attr: dir(3) }, 0), "attr.kind");
        passes(&link, &LinkRes { attr: Attr { nlink: 2, ..file(3) } }, 0);
        let mknod = Mknod { path: "/p".into(), kind: NodeKind::Fifo, mode: 0o644, rdev: 0, owner: Owner::default() };
        assert_eq!(refused(&mknod, &MknodRes { attr: node(4, NodeKind::Socket) }, 0), "attr.kind");
        passes(&mknod, &MknodRes { attr: node(4, NodeKind::Fifo) }, 0);
        let setattr = SetAttr { path: "/f".into(), ..SetAttr::default() };
        assert_eq!(refused(&setattr, &SetAttrRes { attr: Attr { mode: 0o20000, ..file(5) } }, 0), "attr.mode");
    }

    fn listing(names: &[&str]) -> GetDirRes {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, name)| DirEntry { name: name.to_string(), attr: file(10 + i as u64) })
            .collect();
        GetDirRes { dir: dir(1), entries, more: false }
    }

    fn get_dir(after: Option<&str>, limit: u32) -> GetDir {
        GetDir { path: "/".into(), after: after.map(str::to_string), limit }
    }

    #[test]
    fn listed_names_are_single_sorted_names() {
        let page = get_dir(None, MAX_DIR_PAGE);
        let long = "x".repeat(MAX_NAME + 1);
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec![""], "entries[0].name"),
            (vec!["."], "entries[0].name"),
            (vec![".."], "entries[0].name"),
            (vec!["a", "a/b"], "entries[1].name"),
            (vec!["/etc"], "entries[0].name"),
            (vec!["a\0b"], "entries[0].name"),
            (vec![&long], "entries[0].name"),
            (vec!["b", "a"], "entries[1].name"),
            (vec!["a", "a"], "entries[1].name"),
        ];
        for (names, field) in cases {
            assert_eq!(refused(&page, &listing(&names), 0), field, "{names:?}");
        }
        let longest = "y".repeat(MAX_NAME);
        passes(&page, &listing(&["...", "B", "a", "a b", &longest, "\u{e9}t\u{e9}", "\u{4e2d}"]), 0);
        passes(&page, &listing(&[]), 0);

        // A page goes on after the name asked for.
        assert_eq!(refused(&get_dir(Some("m"), 10), &listing(&["a"]), 0), "entries[0].name");
        assert_eq!(refused(&get_dir(Some("m"), 10), &listing(&["m"]), 0), "entries[0].name");
        passes(&get_dir(Some("m"), 10), &listing(&["n", "o"]), 0);

        // No more than asked for, nor than a page holds; `more` needs entries.
        assert_eq!(refused(&get_dir(None, 2), &listing(&["a", "b", "c"]), 0), "entries");
        let many: Vec<String> = (0..=MAX_DIR_PAGE).map(|i| format!("n{i:04}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(refused(&get_dir(None, u32::MAX), &listing(&many), 0), "entries");
        passes(&get_dir(None, u32::MAX), &listing(&many[1..]), 0);
        passes(&get_dir(None, 0), &listing(&["a"]), 0);
        let endless = GetDirRes { more: true, ..listing(&[]) };
        assert_eq!(refused(&page, &endless, 0), "more");
        passes(&page, &GetDirRes { more: true, ..listing(&["a"]) }, 0);

        // The directory and every entry's attributes.
        assert_eq!(refused(&page, &GetDirRes { dir: file(1), ..listing(&[]) }, 0), "dir.kind");
        let mut bad = listing(&["a", "b"]);
        bad.entries[1].attr.md5 = Some("/tmp/owned".into());
        assert_eq!(refused(&page, &bad, 0), "entries[1].attr.md5");
    }

    #[test]
    fn link_targets_fit_readlink() {
        let req = ReadLink { path: "/l".into() };
        let target = |t: String| ReadLinkRes { target: t };
        for bad in [String::new(), "a\0b".into(), "x".repeat(MAX_LINK_TARGET + 1)] {
            assert_eq!(refused(&req, &target(bad), 0), "target");
        }
        for good in ["/etc/passwd".to_string(), "../x".into(), "x".repeat(MAX_LINK_TARGET)] {
            passes(&req, &target(good), 0);
        }
    }

    #[test]
    fn a_login_answer_has_a_salt_a_chunk_size_and_a_root_directory() {
        let req = Login { proof: HEX64.into() };
        let res = |salt: &str, chunk_size: u32, root: Attr| LoginRes {
            root,
            chunk_size,
            proof_salt: salt.into(),
            server_signature: HEX64.into(),
        };
        passes(&req, &res(HEX64, 4 << 20, dir(1)), 0);
        passes(&req, &res(HEX64, MIN_CHUNK_SIZE, dir(1)), 0);
        passes(&req, &res(HEX64, MAX_CHUNK_SIZE, dir(1)), 0);
        let cases = [
            (res(&HEX64.to_uppercase(), 4 << 20, dir(1)), "proof_salt"),
            (res(&HEX64[1..], 4 << 20, dir(1)), "proof_salt"),
            (res(&format!("{}g", &HEX64[1..]), 4 << 20, dir(1)), "proof_salt"),
            (res(HEX64, 0, dir(1)), "chunk_size"),
            (res(HEX64, MIN_CHUNK_SIZE - 1, dir(1)), "chunk_size"),
            (res(HEX64, MAX_CHUNK_SIZE + 1, dir(1)), "chunk_size"),
            (res(HEX64, 4 << 20, file(1)), "root.kind"),
            (res(HEX64, 4 << 20, Attr { ino: 0, ..dir(1) }), "root.ino"),
            (LoginRes { server_signature: "x".into(), ..res(HEX64, 4 << 20, dir(1)) }, "server_signature"),
        ];
        for (answer, field) in cases {
            assert_eq!(refused(&req, &answer, 0), field, "{answer:?}");
        }
    }

    #[test]
    fn a_hello_answer_asks_for_a_bounded_cost() {
        use crate::login::{Kdf, DEFAULT_KDF, MAX_KDF};
        let req = Hello { user: "ann".into(), client_nonce: HEX64.into() };
        let res = |salt: &str, kdf| HelloRes { salt: salt.into(), kdf, server_nonce: HEX64.into() };
        passes(&req, &res(&"ab".repeat(16), DEFAULT_KDF), 0);
        passes(&req, &res(&"ab".repeat(64), MAX_KDF), 0);
        let cases = [
            (res(&"ab".repeat(7), DEFAULT_KDF), "salt"),
            (res(&"ab".repeat(65), DEFAULT_KDF), "salt"),
            (res(&"zz".repeat(16), DEFAULT_KDF), "salt"),
            (res(&"ab".repeat(16), Kdf { m_cost: u32::MAX, ..DEFAULT_KDF }), "kdf"),
            (res(&"ab".repeat(16), Kdf { t_cost: 1000, ..DEFAULT_KDF }), "kdf"),
            (HelloRes { server_nonce: "short".into(), ..res(&"ab".repeat(16), DEFAULT_KDF) }, "server_nonce"),
        ];
        for (answer, field) in cases {
            assert_eq!(refused(&req, &answer, 0), field, "{answer:?}");
        }
    }

    #[test]
    fn upload_answers_fit_the_file_named() {
        let req = upload_request(100_000);
        let upload = |chunk_size, chunk_count| UploadFileRes::Upload { upload_id: 1, chunk_size, chunk_count };
        passes(&req, &upload(65536, 2), 0);
        passes(&req, &upload(4096, 25), 0);
        passes(&req, &upload(MAX_CHUNK_SIZE, 1), 0);
        for (answer, field) in [
            (upload(65536, 0), "chunk_count"),
            (upload(65536, 1), "chunk_count"),
            (upload(65536, 3), "chunk_count"),
            (upload(65536, u32::MAX), "chunk_count"),
            (upload(0, 0), "chunk_size"),
            (upload(1, 100_000), "chunk_size"),
            (upload(MAX_CHUNK_SIZE + 1, 1), "chunk_size"),
        ] {
            assert_eq!(refused(&req, &answer, 0), field, "{answer:?}");
        }
        // An empty file has no chunk.
        passes(&upload_request(0), &upload(65536, 0), 0);
        assert_eq!(refused(&upload_request(0), &upload(65536, 1), 0), "chunk_count");
        // The largest file with the smallest chunks has more chunks than a u32 counts: no answer fits it.
        assert_eq!(refused(&upload_request(MAX_FILE_SIZE), &upload(MIN_CHUNK_SIZE, u32::MAX), 0), "chunk_count");

        let challenge = |nonce: &str| UploadFileRes::Challenge { challenge_id: 9, nonce: nonce.into() };
        passes(&req, &challenge(HEX64), 0);
        for nonce in ["", "../../x", &HEX64[2..], &HEX64.to_uppercase(), &format!("{HEX64}\n")] {
            assert_eq!(refused(&req, &challenge(nonce), 0), "nonce", "{nonce:?}");
        }
        let by_md5 = UploadFile { sha256: None, ..req.clone() };
        assert_eq!(refused(&by_md5, &challenge(HEX64), 0), "challenge");

        let instant = |attr: Attr, dir: Option<Attr>| UploadFileRes::Instant { attr, dir };
        let placed = Attr { size: 100_000, ..file(5) };
        passes(&req, &instant(placed.clone(), Some(dir(1))), 0);
        passes(&by_md5, &instant(placed.clone(), None), 0);
        let cases = [
            (instant(Attr { size: 99_999, ..placed.clone() }, None), "attr.size"),
            (instant(Attr { md5: Some("f".repeat(32)), ..placed.clone() }, None), "attr.md5"),
            (instant(Attr { md5: Some("/tmp/owned".into()), ..placed.clone() }, None), "attr.md5"),
            (instant(Attr { kind: NodeKind::Dir, md5: None, ..placed.clone() }, None), "attr.kind"),
            (instant(placed.clone(), Some(file(1))), "dir.kind"),
        ];
        for (answer, field) in cases {
            assert_eq!(refused(&req, &answer, 0), field, "{answer:?}");
        }
    }

    #[test]
    fn a_proof_is_answered_with_an_upload_or_the_file_never_another_challenge() {
        let asked = upload_request(100_000);
        let prove = ProveOwnership { challenge_id: 9, proof: HEX64.into() };
        let challenge = UploadFileRes::Challenge { challenge_id: 10, nonce: HEX64.into() };
        assert_eq!(refused(&prove, &challenge, 0), "challenge");
        assert_eq!(check_proven(&asked, &challenge).unwrap_err().request, Kind::ProveOwnership);

        let upload = |chunk_count| UploadFileRes::Upload { upload_id: 1, chunk_size: 65536, chunk_count };
        passes(&prove, &upload(2), 0);
        assert!(check_proven(&asked, &upload(2)).is_ok());
        passes(&prove, &upload(3), 0);
        assert_eq!(check_proven(&asked, &upload(3)).unwrap_err().field, "chunk_count", "the request's size decides");
        assert_eq!(refused(&prove, &upload(0), 0), "chunk_count");
        let wrong = UploadFileRes::Instant { attr: Attr { size: 7, ..file(5) }, dir: None };
        passes(&prove, &wrong, 0);
        assert_eq!(check_proven(&asked, &wrong).unwrap_err().field, "attr.size");
    }

    #[test]
    fn needed_chunks_are_among_those_asked_about() {
        let req = QueryChunk { upload_id: 1, indexes: vec![0, 1, 2, 5] };
        let needed = |needed: Vec<u32>| QueryChunkRes { needed };
        passes(&req, &needed(vec![]), 0);
        passes(&req, &needed(vec![5, 0, 2]), 0);
        for bad in [vec![3], vec![0, 0], vec![u32::MAX], vec![0, 1, 2, 5, 5]] {
            assert_eq!(refused(&req, &needed(bad.clone()), 0), "needed", "{bad:?}");
        }
        let all: Vec<u32> = (0..MAX_QUERY_INDEXES as u32).collect();
        passes(&QueryChunk { upload_id: 1, indexes: all.clone() }, &needed(all.into_iter().rev().collect()), 0);
    }

    #[test]
    fn a_chunk_answer_is_for_the_chunk_sent() {
        let req = UploadChunk { upload_id: 1, index: 3, crc32c: 0 };
        passes(&req, &UploadChunkRes { index: 3, complete: None }, 0);
        passes(&req, &UploadChunkRes { index: 3, complete: Some(file(8)) }, 0);
        assert_eq!(refused(&req, &UploadChunkRes { index: 4, complete: None }, 0), "index");
        assert_eq!(refused(&req, &UploadChunkRes { index: 3, complete: Some(dir(8)) }, 0), "complete.kind");
    }

    #[test]
    fn downloaded_bytes_are_where_and_as_many_as_asked() {
        let req = Download { path: "/f".into(), offset: 1000, len: 100 };
        let res = |md5: &str, size, offset| DownloadRes { md5: md5.into(), size, offset };
        passes(&req, &res(MD5, 5000, 1000), 100);
        passes(&req, &res(MD5, 1050, 1000), 50);
        passes(&req, &res(MD5, 10, 1000), 0);
        let cases = [
            (res("/tmp/owned", 5000, 1000), 100, "md5"),
            (res("../../x", 5000, 1000), 100, "md5"),
            (res(MD5, 5000, 0), 100, "offset"),
            (res(MD5, 5000, 1000), 101, "payload"),
            (res(MD5, 1050, 1000), 51, "payload"),
            (res(MD5, 10, 1000), 1, "payload"),
            (res(MD5, MAX_FILE_SIZE + 1, 1000), 0, "size"),
        ];
        for (answer, payload, field) in cases {
            assert_eq!(refused(&req, &answer, payload), field, "{answer:?} with {payload} bytes");
        }
    }

    #[test]
    fn file_system_figures_add_up() {
        let good = StatFsRes {
            block_size: 4096,
            blocks: 100,
            blocks_free: 50,
            blocks_available: 40,
            files: 10,
            files_free: 5,
            name_max: 255,
        };
        passes(&StatFs {}, &good, 0);
        let cases = [
            (StatFsRes { block_size: 0, ..good.clone() }, "block_size"),
            (StatFsRes { blocks_free: 101, ..good.clone() }, "blocks_free"),
            (StatFsRes { blocks_available: 101, ..good.clone() }, "blocks_available"),
            (StatFsRes { files_free: 11, ..good.clone() }, "files_free"),
            (StatFsRes { name_max: 0, ..good.clone() }, "name_max"),
            (StatFsRes { name_max: 256, ..good.clone() }, "name_max"),
        ];
        for (answer, field) in cases {
            assert_eq!(refused(&StatFs {}, &answer, 0), field, "{answer:?}");
        }
    }

    #[test]
    fn error_messages_are_bounded_and_shown_escaped() {
        let e = |message: String| WireError::new(crate::ErrorCode::NotFound, message);
        assert!(check_error(Kind::Stat, &e(format!("{}: no such file or directory", "/a".repeat(2048)))).is_ok());
        let bad = check_error(Kind::Stat, &e("x".repeat(MAX_ERROR_MESSAGE + 1))).unwrap_err();
        assert_eq!((bad.request, bad.field.as_str()), (Kind::Stat, "message"));

        let forged = e("gone\n2026-01-01T00:00:00Z  INFO netdisk: all is well\u{1b}[2J\u{202e}".into());
        assert_eq!(
            forged.to_string(),
            "NotFound: gone\\n2026-01-01T00:00:00Z  INFO netdisk: all is well\\u{1b}[2J\\u{202e}"
        );
        let long = e("\u{e9}".repeat(1000)).to_string();
        assert!(long.ends_with("... (2000 bytes)") && long.chars().count() < 200, "{long}");
        assert_eq!(shown("a\\b \"c\" \u{4e2d}").to_string(), "a\\\\b \"c\" \u{4e2d}");
    }

    #[test]
    fn what_is_wrong_is_said_without_echoing_server_strings_raw() {
        let mut res = StatRes { attr: file(1) };
        res.attr.md5 = Some(format!("{}\n{}", "/tmp/owned", "y".repeat(10_000)));
        let bad = stat("/f").check_answer(&res, 0).unwrap_err();
        let text = bad.to_string();
        assert!(text.starts_with("bad answer to Stat: attr.md5: /tmp/owned\\ny"), "{text}");
        assert!(!text.contains('\n') && text.len() < 400, "{text}");
    }

    /// An attribute set made of any values, and whether the rules should take it (said independently of them).
    fn any_attr() -> impl Strategy<Value = Attr> {
        let kinds = prop_oneof![
            Just(NodeKind::File),
            Just(NodeKind::Dir),
            Just(NodeKind::Symlink),
            Just(NodeKind::Fifo),
            Just(NodeKind::Socket),
            Just(NodeKind::CharDevice),
            Just(NodeKind::BlockDevice),
        ];
        let md5 = prop_oneof![Just(None), Just(Some(MD5.to_string())), "[0-9a-fA-F./]{0,40}".prop_map(Some)];
        let small = prop_oneof![Just(0u64), Just(5), any::<u64>()];
        let nsec = prop_oneof![0..1_000_000_000u32, any::<u32>()];
        (
            prop_oneof![Just(0u64), any::<u64>()],
            kinds,
            prop_oneof![0..=0o7777u32, any::<u32>()],
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![0..=MAX_FILE_SIZE, any::<u64>()],
            (any::<i64>(), nsec.clone(), any::<i64>(), nsec.clone(), any::<i64>(), nsec),
            small,
            md5,
        )
            .prop_map(|(ino, kind, mode, nlink, size, (a, an, m, mn, c, cn), rdev, md5)| Attr {
                ino,
                kind,
                mode,
                uid: 0,
                gid: 0,
                nlink,
                size,
                atime: Timespec { sec: a, nsec: an },
                mtime: Timespec { sec: m, nsec: mn },
                ctime: Timespec { sec: c, nsec: cn },
                rdev,
                md5,
            })
    }

    fn sound(a: &Attr) -> bool {
        let device = matches!(a.kind, NodeKind::CharDevice | NodeKind::BlockDevice);
        let md5_ok = match &a.md5 {
            Some(m) => a.kind == NodeKind::File && m.len() == 32 && m.chars().all(|c| "0123456789abcdef".contains(c)),
            None => a.kind != NodeKind::File,
        };
        a.ino > 0
            && a.mode < 0o10000
            && a.nlink > 0
            && a.size <= MAX_FILE_SIZE
            && [a.atime, a.mtime, a.ctime].iter().all(|t| t.nsec < 1_000_000_000)
            && (device || a.rdev == 0)
            && md5_ok
    }

    proptest! {
        #[test]
        fn attributes_pass_exactly_when_sound(a in any_attr()) {
            let verdict = stat("/f").check_answer(&StatRes { attr: a.clone() }, 0);
            prop_assert_eq!(verdict.is_ok(), sound(&a), "{:?}: {:?}", a, verdict);
        }

        #[test]
        fn sorted_distinct_names_pass_and_any_other_order_does_not(
            names in proptest::collection::btree_set("[a-z\u{e9}\u{4e2d} .-]{1,12}", 2..40),
            swap in any::<prop::sample::Index>(),
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != "." && *n != "..").collect();
            prop_assume!(names.len() >= 2);
            passes(&get_dir(None, MAX_DIR_PAGE), &listing(&names), 0);
            let mut shuffled = names.clone();
            let i = swap.index(names.len() - 1);
            shuffled.swap(i, i + 1);
            prop_assert_eq!(refused(&get_dir(None, MAX_DIR_PAGE), &listing(&shuffled), 0), format!("entries[{}].name", i + 1));
            // The page after the last name holds nothing before it.
            prop_assert!(get_dir(Some(names[names.len() - 1]), MAX_DIR_PAGE).check_answer(&listing(&names), 0).is_err());
        }

        #[test]
        fn needed_passes_exactly_when_a_subset_once_each(
            asked in proptest::collection::vec(0u32..64, 0..32),
            needed in proptest::collection::vec(0u32..80, 0..40),
        ) {
            let req = QueryChunk { upload_id: 1, indexes: asked.clone() };
            let distinct = needed.iter().collect::<std::collections::HashSet<_>>().len() == needed.len();
            let sound = distinct && needed.len() <= asked.len() && needed.iter().all(|i| asked.contains(i));
            prop_assert_eq!(req.check_answer(&QueryChunkRes { needed }, 0).is_ok(), sound);
        }

        #[test]
        fn an_upload_passes_exactly_with_the_chunk_count_of_its_size(size in 0..=MAX_FILE_SIZE, chunk_size: u32, chunk_count: u32) {
            let res = UploadFileRes::Upload { upload_id: 1, chunk_size, chunk_count };
            let sound = (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
                && u128::from(chunk_count) * u128::from(chunk_size) >= u128::from(size)
                && (chunk_count == 0 || (u128::from(chunk_count) - 1) * u128::from(chunk_size) < u128::from(size));
            prop_assert_eq!(upload_request(size).check_answer(&res, 0).is_ok(), sound);
            // The count that fits always passes.
            let chunk_size = chunk_size.clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE);
            if let Ok(count) = u32::try_from(size.div_ceil(u64::from(chunk_size))) {
                let res = UploadFileRes::Upload { upload_id: 1, chunk_size, chunk_count: count };
                prop_assert!(upload_request(size).check_answer(&res, 0).is_ok());
            }
        }

        #[test]
        fn downloads_pass_exactly_within_what_was_asked(offset: u64, len: u32, size in 0..=MAX_FILE_SIZE, payload in 0usize..1 << 24) {
            let req = Download { path: "/f".into(), offset, len };
            let res = DownloadRes { md5: MD5.into(), size, offset };
            let sound = payload as u64 <= u64::from(len) && (payload == 0 || offset.checked_add(payload as u64).is_some_and(|end| end <= size));
            prop_assert_eq!(req.check_answer(&res, payload).is_ok(), sound);
        }

        #[test]
        fn shown_strings_are_bounded_and_hold_no_control_characters(s in ".{0,400}") {
            let out = shown(&s).to_string();
            prop_assert!(!out.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)), "{:?}", out);
            prop_assert!(out.chars().count() <= SHOWN_CHARS * 10 + 40);
            if s.chars().count() <= SHOWN_CHARS && !s.chars().any(|c| c.is_control() || c == '\\' || ('\u{200e}'..='\u{2069}').contains(&c)) {
                prop_assert_eq!(out, s);
            }
        }
    }
}
