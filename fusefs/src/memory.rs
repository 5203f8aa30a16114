//! An in-memory netdisk server, for the fs layer's unit tests: the real protocol (frames, checked answers) over
//! in-process pipes, a tree of paths in a map, content kept whole. It also plays "another client" (changes made
//! behind the mount's back) and can hold an answer until a test lets it go, to stage races. It is not the server's
//! engine: no durability, quotas, proofs or concurrency control; each request is applied whole, one at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use netdisk_protocol::frame::{encode_message, FrameHead};
use netdisk_protocol::login;
use netdisk_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::client::{Dialed, Dialer, Stream};

const CHUNK_SIZE: u32 = 64 * 1024;
/// The password of its user.
pub const PASSWORD: &str = "pw";

struct Node {
    attr: Attr,
    content: Vec<u8>,
}

struct Pending {
    request: UploadFile,
    chunks: BTreeMap<u32, Vec<u8>>,
}

#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
    next_ino: u64,
    uploads: HashMap<u64, Pending>,
    next_upload: u64,
    /// Every request served, by kind.
    served: Vec<Kind>,
}

/// An answer held back until the test releases it (see [`Memory::hold`]).
#[derive(Clone)]
pub struct Gate {
    arrived: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

impl Gate {
    /// Waits until the held request has been answered (its answer computed, not sent yet).
    pub async fn arrived(&self) {
        self.arrived.acquire().await.expect("gate").forget();
    }

    /// Lets the held answer go.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// The server; clone it to keep a handle while the mount's pool dials it.
#[derive(Clone)]
pub struct Memory {
    tree: Arc<Mutex<Tree>>,
    /// The password of its one user ("pw", any name).
    password: Arc<login::KnownPassword>,
    holds: Arc<Mutex<HashMap<Kind, Gate>>>,
}

fn now() -> Timespec {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

fn refuse<T>(code: ErrorCode, message: &str) -> Result<T, WireError> {
    Err(WireError { code, message: message.to_string() })
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    pub fn new() -> Memory {
        let mut tree = Tree { next_ino: 2, next_upload: 1, ..Tree::default() };
        let root = Attr { nlink: 2, ..Tree::attr(1, NodeKind::Dir, 0o755, &[]) };
        tree.nodes.insert("/".into(), Node { attr: root, content: Vec::new() });
        Memory {
            tree: Arc::new(Mutex::new(tree)),
            password: Arc::new(login::KnownPassword::new(PASSWORD)),
            holds: Arc::default(),
        }
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().expect("tree lock")
    }

    /// A dialer for `Remote::with_dialer`: each dial is a new connection served by this server.
    pub fn dialer(&self) -> Box<dyn Dialer> {
        Box::new(self.clone())
    }

    /// The next request of `kind` is answered as of when it arrives, but the answer is sent only once the
    /// returned gate is released.
    pub fn hold(&self, kind: Kind) -> Gate {
        let gate = Gate { arrived: Arc::new(Semaphore::new(0)), release: Arc::new(Semaphore::new(0)) };
        self.holds.lock().expect("holds lock").insert(kind, gate.clone());
        gate
    }

    /// How many requests of `kind` were served.
    pub fn served(&self, kind: Kind) -> usize {
        self.tree().served.iter().filter(|&&k| k == kind).count()
    }

    // ---- another client ----

    /// Content at `path`, if a regular file is there.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        let tree = self.tree();
        tree.nodes.get(path).filter(|n| n.attr.kind == NodeKind::File).map(|n| n.content.clone())
    }

    pub fn exists(&self, path: &str) -> bool {
        self.tree().nodes.contains_key(path)
    }

    /// Writes a whole file, as another client's upload would.
    pub fn put(&self, path: &str, content: &[u8]) {
        let request = UploadFile {
            path: path.into(),
            size: content.len() as u64,
            md5: md5_hex(content),
            sha256: None,
            mode: 0o644,
            mtime: None,
            owner: Owner::default(),
        };
        self.tree().place(&request, content.to_vec()).expect("put");
    }

    pub fn mkdir(&self, path: &str) {
        self.tree().mkdir(&Mkdir { path: path.into(), mode: 0o755, owner: Owner::default() }).expect("mkdir");
    }

    pub fn remove(&self, path: &str) {
        let mut tree = self.tree();
        let kind = tree.nodes.get(path).expect("remove: no such path").attr.kind;
        if kind == NodeKind::Dir {
            tree.rmdir(path).expect("rmdir");
        } else {
            tree.unlink(path).expect("unlink");
        }
    }

    // ---- serving ----

    async fn serve(self, mut stream: Box<dyn Stream>) -> std::io::Result<()> {
        // The exchange of this connection's login, between its Hello and its Login.
        let mut exchange = None;
        loop {
            let mut head = [0u8; HEAD_LEN];
            if stream.read_exact(&mut head).await.is_err() {
                return Ok(()); // the pool closed the connection
            }
            let head = FrameHead::decode_request(&head).map_err(std::io::Error::other)?;
            let mut header = vec![0u8; head.header_len as usize];
            stream.read_exact(&mut header).await?;
            let mut payload = vec![0u8; head.payload_len as usize];
            stream.read_exact(&mut payload).await?;
            let request = AnyRequest::decode(head.kind, &header).map_err(std::io::Error::other)?;
            let (answer, bytes) = match request {
                AnyRequest::Hello(r) => {
                    let (res, message) = self.password.hello(&r);
                    exchange = Some((message, self.tree().nodes["/"].attr.clone()));
                    (Ok(AnyResponse::Hello(res)), Vec::new())
                }
                AnyRequest::Login(r) => (self.login(exchange.take(), &r), Vec::new()),
                request => self.answer(request, payload),
            };
            let hold = self.holds.lock().expect("holds lock").remove(&head.kind);
            if let Some(gate) = hold {
                gate.arrived.add_permits(1);
                gate.release.acquire().await.expect("gate").forget();
            }
            let frame = match answer {
                Ok(res) => res.encode(head.request_id, bytes.len() as u32),
                Err(e) => encode_message(Kind::Error, head.request_id, &e, 0),
            };
            stream.write_all(&frame).await?;
            stream.write_all(&bytes).await?;
        }
    }

    fn login(&self, exchange: Option<(String, Attr)>, r: &Login) -> Result<AnyResponse, WireError> {
        let Some((message, root)) = exchange else { return refuse(ErrorCode::Invalid, "say Hello first") };
        let Some(server_signature) = self.password.login(&message, r) else {
            return refuse(ErrorCode::AuthFailed, "wrong user name or password");
        };
        Ok(AnyResponse::Login(LoginRes { root, chunk_size: CHUNK_SIZE, proof_salt: "00".repeat(32), server_signature }))
    }

    fn answer(&self, request: AnyRequest, payload: Vec<u8>) -> (Result<AnyResponse, WireError>, Vec<u8>) {
        let mut tree = self.tree();
        tree.served.push(request.kind());
        let mut bytes = Vec::new();
        let answer = match request {
            AnyRequest::Stat(r) => tree.stat(&r.path).map(|attr| AnyResponse::Stat(StatRes { attr })),
            AnyRequest::GetDir(r) => tree.list(&r).map(AnyResponse::GetDir),
            AnyRequest::Mkdir(r) => tree.mkdir(&r).map(AnyResponse::Mkdir),
            AnyRequest::Rmdir(r) => tree.rmdir(&r.path).map(|dir| AnyResponse::Rmdir(RmdirRes { dir })),
            AnyRequest::DeleteFile(r) => tree.unlink(&r.path).map(|dir| AnyResponse::DeleteFile(DeleteFileRes { dir })),
            AnyRequest::Rename(r) => tree.rename(&r).map(|()| AnyResponse::Rename(RenameRes {})),
            AnyRequest::SetAttr(r) => tree.set_attr(&r).map(|attr| AnyResponse::SetAttr(SetAttrRes { attr })),
            AnyRequest::UploadFile(r) => tree.upload(r, payload).map(AnyResponse::UploadFile),
            AnyRequest::QueryChunk(r) => tree.query(&r).map(AnyResponse::QueryChunk),
            AnyRequest::UploadChunk(r) => tree.chunk(&r, payload).map(AnyResponse::UploadChunk),
            AnyRequest::Download(r) => tree.download(&r).map(|(res, b)| {
                bytes = b;
                AnyResponse::Download(res)
            }),
            AnyRequest::StatFs(_) => Ok(AnyResponse::StatFs(StatFsRes {
                block_size: 4096,
                blocks: 1 << 20,
                blocks_free: 1 << 19,
                blocks_available: 1 << 19,
                files: 1 << 20,
                files_free: 1 << 19,
                name_max: MAX_NAME as u32,
            })),
            other => refuse(ErrorCode::Invalid, &format!("{:?} is not served in memory", other.kind())),
        };
        (answer, bytes)
    }
}

impl Dialer for Memory {
    fn dial(&self) -> Dialed<'_> {
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            tokio::spawn(self.clone().serve(Box::new(server)));
            Ok(Box::new(client) as Box<dyn Stream>)
        })
    }

    fn address(&self) -> String {
        "memory".into()
    }
}

impl Tree {
    fn attr(ino: u64, kind: NodeKind, mode: u32, content: &[u8]) -> Attr {
        let t = now();
        Attr {
            ino,
            kind,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: content.len() as u64,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            md5: (kind == NodeKind::File).then(|| md5_hex(content)),
        }
    }

    fn stat(&self, path: &str) -> Result<Attr, WireError> {
        self.nodes.get(path).map(|n| n.attr.clone()).ok_or_else(|| WireError {
            code: ErrorCode::NotFound,
            message: format!("{path}: no such file or directory"),
        })
    }

    fn dir(&self, path: &str) -> Result<Attr, WireError> {
        let attr = self.stat(path)?;
        if attr.kind != NodeKind::Dir {
            return refuse(ErrorCode::NotDir, path);
        }
        Ok(attr)
    }

    fn children(&self, dir: &str) -> Vec<(String, Attr)> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/') && p.len() > prefix.len())
            .map(|(p, n)| (p[prefix.len()..].to_string(), n.attr.clone()))
            .collect()
    }

    /// The parent directory of a change: its times move, and its link count with subdirectories.
    fn touch_parent(&mut self, path: &str, links: i32) -> Option<Attr> {
        let parent = self.nodes.get_mut(parent_of(path))?;
        let t = now();
        parent.attr.mtime = t;
        parent.attr.ctime = t;
        parent.attr.nlink = (parent.attr.nlink as i32 + links) as u32;
        Some(parent.attr.clone())
    }

    fn list(&self, r: &GetDir) -> Result<GetDirRes, WireError> {
        let dir = self.dir(&r.path)?;
        let limit = r.limit.clamp(1, MAX_DIR_PAGE) as usize;
        let mut entries: Vec<DirEntry> = self
            .children(&r.path)
            .into_iter()
            .filter(|(name, _)| r.after.as_ref().is_none_or(|after| name > after))
            .map(|(name, attr)| DirEntry { name, attr })
            .collect();
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(GetDirRes { dir, entries, more })
    }

    fn new_node(
        &mut self,
        path: &str,
        kind: NodeKind,
        mode: u32,
        owner: Owner,
        content: Vec<u8>,
    ) -> Result<Attr, WireError> {
        self.dir(parent_of(path))?;
        if self.nodes.contains_key(path) {
            return refuse(ErrorCode::Exists, path);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut attr = Tree::attr(ino, kind, mode & 0o7777, &content);
        (attr.uid, attr.gid) = (owner.uid, owner.gid);
        if kind == NodeKind::Dir {
            attr.nlink = 2;
        }
        self.nodes.insert(path.to_string(), Node { attr: attr.clone(), content });
        Ok(attr)
    }

    fn mkdir(&mut self, r: &Mkdir) -> Result<MkdirRes, WireError> {
        let attr = self.new_node(&r.path, NodeKind::Dir, r.mode, r.owner, Vec::new())?;
        Ok(MkdirRes { attr, dir: self.touch_parent(&r.path, 1) })
    }

    fn rmdir(&mut self, path: &str) -> Result<Option<Attr>, WireError> {
        self.dir(path)?;
        if !self.children(path).is_empty() {
            return refuse(ErrorCode::NotEmpty, path);
        }
        self.nodes.remove(path);
        Ok(self.touch_parent(path, -1))
    }

    fn unlink(&mut self, path: &str) -> Result<Option<Attr>, WireError> {
        if self.stat(path)?.kind == NodeKind::Dir {
            return refuse(ErrorCode::IsDir, path);
        }
        self.nodes.remove(path);
        Ok(self.touch_parent(path, 0))
    }

    fn rename(&mut self, r: &Rename) -> Result<(), WireError> {
        let moved = self.stat(&r.from)?;
        self.dir(parent_of(&r.to))?;
        if self.nodes.contains_key(&r.to) {
            if r.noreplace {
                return refuse(ErrorCode::Exists, &r.to);
            }
            if self.stat(&r.to)?.kind == NodeKind::Dir {
                self.rmdir(&r.to)?;
            } else {
                self.unlink(&r.to)?;
            }
        }
        let prefix = format!("{}/", r.from);
        let keys: Vec<String> =
            self.nodes.keys().filter(|k| **k == r.from || k.starts_with(&prefix)).cloned().collect();
        for key in keys {
            let node = self.nodes.remove(&key).expect("listed just now");
            self.nodes.insert(format!("{}{}", r.to, &key[r.from.len()..]), node);
        }
        let links = if moved.kind == NodeKind::Dir { 1 } else { 0 };
        self.touch_parent(&r.from, -links);
        self.touch_parent(&r.to, links);
        Ok(())
    }

    fn set_attr(&mut self, r: &SetAttr) -> Result<Attr, WireError> {
        let node =
            self.nodes.get_mut(&r.path).ok_or(WireError { code: ErrorCode::NotFound, message: r.path.clone() })?;
        let at = |t: SetTime| match t {
            SetTime::Now => now(),
            SetTime::At(t) => t,
        };
        if let Some(mode) = r.mode {
            node.attr.mode = mode & 0o7777;
        }
        node.attr.uid = r.uid.unwrap_or(node.attr.uid);
        node.attr.gid = r.gid.unwrap_or(node.attr.gid);
        if let Some(size) = r.size {
            node.content.resize(size as usize, 0);
            node.attr.size = size;
            node.attr.md5 = Some(md5_hex(&node.content));
            node.attr.mtime = now();
        }
        if let Some(t) = r.atime {
            node.attr.atime = at(t);
        }
        if let Some(t) = r.mtime {
            node.attr.mtime = at(t);
        }
        node.attr.ctime = now();
        Ok(node.attr.clone())
    }

    /// Content placed at a path: a new file, or new content for the file there (same node).
    fn place(&mut self, r: &UploadFile, content: Vec<u8>) -> Result<(Attr, Option<Attr>), WireError> {
        if md5_hex(&content) != r.md5 {
            return refuse(ErrorCode::Invalid, "the content does not match its md5");
        }
        match self.nodes.get_mut(&r.path) {
            Some(node) if node.attr.kind == NodeKind::File => {
                node.attr.size = content.len() as u64;
                node.attr.md5 = Some(r.md5.clone());
                node.attr.mtime = r.mtime.unwrap_or_else(now);
                node.attr.ctime = now();
                node.content = content;
                Ok((node.attr.clone(), None))
            }
            Some(_) => refuse(ErrorCode::IsDir, &r.path),
            None => {
                let mut attr = self.new_node(&r.path, NodeKind::File, r.mode, r.owner, content)?;
                if let Some(mtime) = r.mtime {
                    attr.mtime = mtime;
                    self.nodes.get_mut(&r.path).expect("just made").attr.mtime = mtime;
                }
                Ok((attr, self.touch_parent(&r.path, 0)))
            }
        }
    }

    fn held(&self, md5: &str) -> Option<Vec<u8>> {
        self.nodes.values().find(|n| n.attr.md5.as_deref() == Some(md5)).map(|n| n.content.clone())
    }

    fn upload(&mut self, r: UploadFile, payload: Vec<u8>) -> Result<UploadFileRes, WireError> {
        self.dir(parent_of(&r.path))?;
        let content = if !payload.is_empty() || r.size == 0 { Some(payload) } else { self.held(&r.md5) };
        if let Some(content) = content {
            let (attr, dir) = self.place(&r, content)?;
            return Ok(UploadFileRes::Instant { attr, dir });
        }
        let upload_id = self.next_upload;
        self.next_upload += 1;
        let chunk_count = r.size.div_ceil(CHUNK_SIZE as u64) as u32;
        self.uploads.insert(upload_id, Pending { request: r, chunks: BTreeMap::new() });
        Ok(UploadFileRes::Upload { upload_id, chunk_size: CHUNK_SIZE, chunk_count })
    }

    fn pending(&mut self, upload_id: u64) -> Result<&mut Pending, WireError> {
        self.uploads.get_mut(&upload_id).ok_or(WireError { code: ErrorCode::UnknownUpload, message: String::new() })
    }

    fn query(&mut self, r: &QueryChunk) -> Result<QueryChunkRes, WireError> {
        let pending = self.pending(r.upload_id)?;
        Ok(QueryChunkRes { needed: r.indexes.iter().copied().filter(|i| !pending.chunks.contains_key(i)).collect() })
    }

    fn chunk(&mut self, r: &UploadChunk, payload: Vec<u8>) -> Result<UploadChunkRes, WireError> {
        if chunk_crc(&payload) != r.crc32c {
            return refuse(ErrorCode::Invalid, "chunk checksum");
        }
        let pending = self.pending(r.upload_id)?;
        pending.chunks.insert(r.index, payload);
        let count = pending.request.size.div_ceil(CHUNK_SIZE as u64) as usize;
        if pending.chunks.len() < count {
            return Ok(UploadChunkRes { index: r.index, complete: None });
        }
        let pending = self.uploads.remove(&r.upload_id).expect("just seen");
        let content: Vec<u8> = pending.chunks.into_values().flatten().collect();
        let (attr, _) = self.place(&pending.request, content)?;
        Ok(UploadChunkRes { index: r.index, complete: Some(attr) })
    }

    fn download(&self, r: &Download) -> Result<(DownloadRes, Vec<u8>), WireError> {
        let node = self.nodes.get(&r.path).ok_or(WireError { code: ErrorCode::NotFound, message: r.path.clone() })?;
        if node.attr.kind != NodeKind::File {
            return refuse(ErrorCode::Invalid, &r.path);
        }
        let start = (r.offset as usize).min(node.content.len());
        let end = (start + r.len as usize).min(node.content.len());
        let res = DownloadRes { md5: md5_hex(&node.content), size: node.content.len() as u64, offset: r.offset };
        Ok((res, node.content[start..end].to_vec()))
    }
}
