//! Truncating a closed file on the server (`SetAttr { size }`, issue 10, hole 5): a grow costs one pass over the
//! kept bytes (the zeros past the old end are never written: the new blob is sparse there), is bounded by the
//! largest file and by the disk (never the reserve), and a grow whose client hung up stops and never lands.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use netdisk_e2e::netdisk_protocol::io::write_frame;
use netdisk_e2e::netdisk_protocol::{md5_hex, ErrorCode, Kind, SetAttr, MAX_FILE_SIZE};
use netdisk_e2e::tmpfs::Tmpfs;
use netdisk_e2e::{expect_code, random_bytes, store, wait_until, ServerOpts};

use crate::{alice, assert_same_bytes, server_with_alice, ALICE, ALICE_PW};

const MIB: u64 = 1 << 20;

fn truncate(size: u64) -> SetAttr {
    SetAttr { path: "/f".into(), size: Some(size), ..Default::default() }
}

/// md5 of `data` followed by zeros up to `size` bytes.
fn md5_zero_filled(data: &[u8], size: u64) -> String {
    let mut h = Md5::new();
    h.update(data);
    let zeros = vec![0u8; MIB as usize];
    let mut left = size - data.len() as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_big_grow_is_sparse_and_reads_back() {
    let server = server_with_alice(ServerOpts::default().chunk_size(MIB as u32));
    let mut a = alice(&server);
    let data = random_bytes(7, 300_000);
    a.upload("/f", &data, 0o644).expect("upload");
    let size = (1 << 30) + 12_345;
    let started = Instant::now();
    let attr = a.call(&truncate(size)).expect("grow by 1 GiB").attr;
    eprintln!("grow of {} bytes to {size}: {:.2} s", data.len(), started.elapsed().as_secs_f64());
    let want_md5 = md5_zero_filled(&data, size);
    assert_eq!((attr.size, attr.md5.as_deref()), (size, Some(want_md5.as_str())));
    let stat = a.stat("/f").expect("stat");
    assert_eq!((stat.size, stat.md5.as_deref()), (size, Some(want_md5.as_str())));

    // Ranges: the kept bytes, across the old end, in the middle and at the end of the zeros.
    let (_, head) = a.download("/f", 0, data.len() as u32).expect("download the kept bytes");
    assert_same_bytes(&head, &data, "the kept bytes");
    let (_, across) = a.download("/f", data.len() as u64 - 10, 30).expect("download across the old end");
    let mut want = data[data.len() - 10..].to_vec();
    want.resize(30, 0);
    assert_same_bytes(&across, &want, "across the old end");
    let (_, middle) = a.download("/f", size / 2, 1 << 16).expect("download the middle");
    assert_same_bytes(&middle, &[0u8; 1 << 16], "the middle");
    let (_, tail) = a.download("/f", size - 1000, 4096).expect("download the end");
    assert_same_bytes(&tail, &[0u8; 1000], "the end");

    // The zeros take no disk: the blob holds the kept bytes (rounded to blocks), not 1 GiB.
    let pfiles = store::pfiles_of(server.data_dir(), &want_md5);
    assert_eq!(pfiles.len(), 1, "{pfiles:?}");
    let blob = store::blob_path(server.data_dir(), pfiles[0].id);
    let meta = std::fs::metadata(&blob).expect("the blob");
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < data.len() as u64 + MIB, "the blob takes {} bytes of disk", meta.blocks() * 512);
    server.assert_fsck_clean();
}

#[test]
fn a_resize_past_the_disk_or_the_largest_file_changes_nothing() {
    let tmpfs = Tmpfs::mount("64m");
    let server = server_with_alice(ServerOpts::default().data_dir(tmpfs.path().join("data")).reserve_mib(4));
    let mut a = alice(&server);
    let data = random_bytes(8, MIB as usize);
    a.upload("/f", &data, 0o644).expect("upload");
    let unchanged = |a: &mut netdisk_e2e::netdisk_protocol::client::Client<_>, want: &[u8], what: &str| {
        let attr = a.stat("/f").expect("stat");
        assert_eq!((attr.size, attr.md5.as_deref()), (want.len() as u64, Some(md5_hex(want).as_str())), "{what}");
        assert_eq!(store::pfiles(server.data_dir()).len(), 1, "{what}: a resized copy was left");
        assert_eq!(store::blob_files(server.data_dir()).len(), 1, "{what}: a resized blob was left");
    };

    // Bigger than the disk: the file could never be filled.
    expect_code(a.call(&truncate(128 * MIB)), ErrorCode::NoSpace, "a grow past the disk");
    unchanged(&mut a, &data, "after a grow past the disk");
    expect_code(a.call(&truncate(MAX_FILE_SIZE + 1)), ErrorCode::FileTooBig, "a grow past the largest file");
    unchanged(&mut a, &data, "after a grow past the largest file");

    // A shrink copies the kept bytes, and that copy may not take the reserve: with 40 MiB stored, a copy of a
    // little less than what is free would leave less than the reserve (4 MiB) free.
    let big = random_bytes(9, 40 * MIB as usize);
    a.upload("/f", &big, 0o644).expect("upload 40 MiB");
    let free = tmpfs.available();
    let keep = free - 2 * MIB;
    assert!(keep < big.len() as u64, "{free} bytes free: the shrink would not copy less than the file");
    expect_code(a.call(&truncate(keep)), ErrorCode::NoSpace, "a shrink into the reserve");
    unchanged(&mut a, &big, "after a shrink into the reserve");
    assert!(tmpfs.available() + MIB / 2 >= free, "the refused shrink kept disk space");

    // One that leaves the reserve free goes through.
    let keep = free - 8 * MIB;
    let attr = a.call(&truncate(keep)).expect("a shrink that fits").attr;
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(&big[..keep as usize]).as_str()));
    server.assert_fsck_clean();
    drop(server);
    drop(tmpfs);
}

#[test]
fn a_grow_whose_client_hung_up_stops_and_never_lands() {
    let server = server_with_alice(ServerOpts::default());
    let mut a = alice(&server);
    let data = random_bytes(10, 100_000);
    a.upload("/f", &data, 0o644).expect("upload");
    // Tens of GiB of zeros to hash take minutes: the grow cannot finish before the hang-up below is seen.
    let free = available(server.data_dir());
    let size = (free / 2).min(32 << 30);
    assert!(size >= 8 << 30, "{free} bytes free: too little for a grow that takes long");

    let doomed = server.login(ALICE, ALICE_PW);
    let child = server.child_serving(doomed.stream()).expect("the connection's process");
    write_frame(&mut doomed.stream(), Kind::SetAttr, 99, &truncate(size), &[]).expect("send the grow");
    drop(doomed);
    assert!(
        wait_until(Duration::from_secs(30), || !child.exists()),
        "the connection process still works on a grow its client hung up on\n{}",
        server.log_tail()
    );
    let attr = a.stat("/f").expect("stat");
    assert_eq!((attr.size, attr.md5.as_deref()), (data.len() as u64, Some(md5_hex(&data).as_str())));
    assert_eq!(store::pfiles(server.data_dir()).len(), 1, "the abandoned copy was left");
    assert_eq!(store::blob_files(server.data_dir()).len(), 1, "the abandoned blob was left");
    server.assert_fsck_clean();
}

/// Bytes free on the file system holding `dir`.
fn available(dir: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs(3) with a valid C string and a pointer to a struct it fills.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs {}: {}", dir.display(), std::io::Error::last_os_error());
    // SAFETY: statvfs succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    st.f_frsize * st.f_bavail
}
