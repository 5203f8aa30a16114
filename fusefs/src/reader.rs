//! Reading content the server holds: 1 MiB blocks downloaded once however many readers want them at the same time,
//! kept in the block cache under the content's md5 (so a cached block is never stale), and read ahead for
//! sequential readers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use netdisk_protocol::Download;
use tokio::sync::OnceCell;

use crate::cache::{Cache, BLOCK};
use crate::client::Remote;
use crate::error::{errno, Result};

/// Blocks fetched ahead of a sequential reader.
const READAHEAD_BLOCKS: u64 = 8;

type BlockCell = Arc<OnceCell<Arc<Vec<u8>>>>;

pub struct BlockReader {
    remote: Arc<Remote>,
    cache: Cache,
    /// Blocks being downloaded, by (md5, index): a second reader waits for the first one's download.
    inflight: Mutex<HashMap<(String, u64), BlockCell>>,
}

/// What is being read: the content `md5` of `size` bytes, found at `path`.
pub struct Content<'a> {
    pub path: &'a str,
    pub md5: &'a str,
    pub size: u64,
}

impl BlockReader {
    pub fn new(remote: Arc<Remote>, cache: Cache) -> BlockReader {
        BlockReader { remote, cache, inflight: Mutex::new(HashMap::new()) }
    }

    /// Bytes of the block cache in use.
    pub fn cached(&self) -> u64 {
        self.cache.used()
    }

    /// Up to `len` bytes of `content` from `offset`; a `sequential` reader also gets the next blocks fetched ahead.
    /// `ESTALE` when the file at the path holds other content now.
    pub async fn read(
        self: &Arc<Self>,
        content: Content<'_>,
        offset: u64,
        len: u32,
        sequential: bool,
    ) -> Result<Vec<u8>> {
        let end = content.size.min(offset + len as u64);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        for index in first..=last {
            let start = if index == first { (offset % BLOCK) as usize } else { 0 };
            let stop = if index == last { ((end - 1) % BLOCK + 1) as usize } else { BLOCK as usize };
            // A cached block is read only where the kernel asked, not whole.
            if let Some(bytes) = self.cache.read(content.md5, index, start, stop) {
                out.extend_from_slice(&bytes);
                continue;
            }
            let block = self.block(content.path, content.md5, index).await?;
            out.extend_from_slice(&block[start.min(block.len())..stop.min(block.len())]);
        }
        if sequential {
            let blocks = content.size.div_ceil(BLOCK);
            for index in (last + 1)..(last + 1 + READAHEAD_BLOCKS).min(blocks) {
                if self.cache.contains(content.md5, index) {
                    continue;
                }
                let (reader, path, md5) = (self.clone(), content.path.to_string(), content.md5.to_string());
                tokio::spawn(async move {
                    let _ = reader.block(&path, &md5, index).await;
                });
            }
        }
        Ok(out)
    }

    /// One block of content `md5`, downloaded (and cached) once however many readers want it at the same time.
    /// Readahead calls it too; a block cached meanwhile is not downloaded again.
    async fn block(&self, path: &str, md5: &str, index: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.cache.read(md5, index, 0, BLOCK as usize) {
            return Ok(Arc::new(data));
        }
        let key = (md5.to_string(), index);
        let cell = self.inflight.lock().expect("inflight lock").entry(key.clone()).or_default().clone();
        let result = cell
            .get_or_try_init(|| async {
                let req = Download { path: path.to_string(), offset: index * BLOCK, len: BLOCK as u32 };
                let (res, bytes) = self.remote.call_with_payload(&req, &[]).await?;
                if res.md5 != md5 {
                    // The file was replaced on the server since it was opened.
                    return errno(libc::ESTALE);
                }
                self.cache.put(md5, index, &bytes);
                Ok(Arc::new(bytes))
            })
            .await
            .cloned();
        self.inflight.lock().expect("inflight lock").remove(&key);
        result
    }
}
