//! Failures keep their meaning on the wire (issue 10, hole 7): a size beyond the largest file is `FileTooBig`
//! (EFBIG on the mount), a full disk `NoSpace` (ENOSPC), a quota `QuotaExceeded` (EDQUOT), read-only storage
//! `ReadOnly` (EROFS); none of them reaches the client as a plain `Io` (EIO).

use std::path::{Path, PathBuf};
use std::process::Command;

use netdisk_e2e::mount::is_mounted;
use netdisk_e2e::netdisk_protocol::{md5_hex, ErrorCode, SetAttr, UploadFile, MAX_FILE_SIZE};
use netdisk_e2e::tmpfs::Tmpfs;
use netdisk_e2e::{expect_code, random_bytes, store, ServerOpts};

use crate::{alice, assert_same_bytes, server_with_alice};

const MIB: u64 = 1 << 20;

#[test]
fn sizes_beyond_the_largest_file_are_file_too_big() {
    let server = server_with_alice(ServerOpts::default());
    let mut a = alice(&server);
    a.upload_inline("/f", b"hello", 0o644).expect("upload");
    // pjdfstest truncate/12 and ftruncate/12 ask for 999999999999999999 bytes.
    for size in [MAX_FILE_SIZE + 1, 999_999_999_999_999_999, i64::MAX as u64, u64::MAX] {
        let grow = SetAttr { path: "/f".into(), size: Some(size), ..Default::default() };
        expect_code(a.call(&grow), ErrorCode::FileTooBig, &format!("truncate to {size}"));
        let upload = UploadFile {
            path: "/g".into(),
            size,
            md5: md5_hex(b"anything"),
            sha256: Some(netdisk_e2e::sha256_hex(b"anything")),
            mode: 0o644,
            mtime: None,
            owner: Default::default(),
        };
        expect_code(a.call(&upload), ErrorCode::FileTooBig, &format!("an upload of {size} bytes"));
    }
    let attr = a.stat("/f").expect("stat");
    assert_eq!((attr.size, attr.md5.as_deref()), (5, Some(md5_hex(b"hello").as_str())), "the file changed");
    assert_same_bytes(&a.read_file("/f").expect("download"), b"hello", "the file");
    expect_code(a.stat("/g"), ErrorCode::NotFound, "the refused upload");
    assert_eq!(store::upload_count(server.data_dir()), 0, "a refused upload left a record");
    server.assert_fsck_clean();
}

#[test]
fn a_full_disk_is_no_space_and_a_quota_is_quota_exceeded() {
    let tmpfs = Tmpfs::mount("32m");
    let server = server_with_alice(ServerOpts::default().data_dir(tmpfs.path().join("data")).reserve_mib(2));
    let mut a = alice(&server);
    let big = random_bytes(1, 40 * MIB as usize);
    expect_code(a.upload("/big", &big, 0o644), ErrorCode::NoSpace, "an upload bigger than the disk");
    a.upload("/small", &random_bytes(2, 100_000), 0o644).expect("a file that fits");
    let grow = SetAttr { path: "/small".into(), size: Some(64 * MIB), ..Default::default() };
    expect_code(a.call(&grow), ErrorCode::NoSpace, "a truncate bigger than the disk");

    let (ok, out) = server.admin(&["user", "quota", crate::ALICE, "150K"], None);
    assert!(ok, "user quota: {out}");
    let grow = SetAttr { path: "/small".into(), size: Some(300_000), ..Default::default() };
    expect_code(a.call(&grow), ErrorCode::QuotaExceeded, "a truncate over the quota");
    expect_code(a.upload_inline("/more", &random_bytes(3, 60_000), 0o644), ErrorCode::QuotaExceeded, "over quota");
    assert_eq!(a.stat("/small").expect("stat").size, 100_000);
    server.assert_fsck_clean();
    drop(server);
    drop(tmpfs);
}

/// A read-only file system mounted over a directory (`mount -t tmpfs -o ro`), unmounted on drop.
struct ReadOnlyOver(PathBuf);

impl ReadOnlyOver {
    fn mount(path: &Path) -> ReadOnlyOver {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1g,mode=0700", "netdisk-test"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success() && is_mounted(path),
            "mount -o ro on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        ReadOnlyOver(path.to_path_buf())
    }
}

impl Drop for ReadOnlyOver {
    fn drop(&mut self) {
        if is_mounted(&self.0) && !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn read_only_storage_is_read_only() {
    let server = server_with_alice(ServerOpts::default().chunk_size(64 * 1024).reserve_mib(1));
    let mut a = alice(&server);
    let kept = random_bytes(4, 5000);
    a.upload_inline("/kept", &kept, 0o644).expect("upload");
    // The blobs become read-only under the running server (the database stays writable: a server whose whole
    // data directory turned read-only cannot even log that).
    let blobs = server.data_dir().join("blobs");
    let ro = ReadOnlyOver::mount(&blobs);
    expect_code(a.upload_inline("/small", b"small file", 0o644), ErrorCode::ReadOnly, "a small file");
    expect_code(a.upload("/chunked", &random_bytes(5, 200_000), 0o644), ErrorCode::ReadOnly, "a chunked upload");
    let grow = SetAttr { path: "/kept".into(), size: Some(100_000), ..Default::default() };
    expect_code(a.call(&grow), ErrorCode::ReadOnly, "a truncate");
    drop(ro);
    // Nothing was half done: the same requests now succeed.
    a.upload_inline("/small", b"small file", 0o644).expect("a small file, writable again");
    a.call(&grow).expect("a truncate, writable again");
    assert_eq!(a.stat("/kept").expect("stat").size, 100_000);
    expect_code(a.stat("/chunked"), ErrorCode::NotFound, "the refused upload");
    server.assert_fsck_clean();
}
