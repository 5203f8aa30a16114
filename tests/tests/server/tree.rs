//! The tree: rename of files and whole directories, rmdir, hard links, symlinks, special files, attributes, statfs.

use netdisk_e2e::netdisk_protocol::{
    md5_hex, DeleteFile, ErrorCode, Link, Mkdir, Mknod, NodeKind, Owner, ReadLink, Rmdir, SetAttr, SetTime, StatFs,
    Symlink, Timespec, UploadFile, UploadFileRes, MAX_NAME,
};
use netdisk_e2e::{expect_code, random_bytes, ServerOpts};

use crate::{alice, assert_same_bytes, server_with_alice};

/// A change of a directory's entries answers with that directory's attributes as they are right after it, so
/// that the mount need not ask again (and what it keeps is what a `Stat` would say).
#[test]
fn changes_answer_with_their_directory() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let owner = Owner::default();
    let before = c.stat("/").expect("stat /");

    let made = c.call(&Mkdir { path: "/d".into(), mode: 0o755, owner }).expect("mkdir");
    let root = made.dir.expect("mkdir answers with the parent");
    assert_eq!(root, c.stat("/").expect("stat /"), "mkdir: the parent as Stat sees it");
    assert_eq!(root.nlink, before.nlink + 1, "a new subdirectory adds a link to its parent");

    let data = b"a small file sent whole";
    let req = UploadFile {
        path: "/d/f".into(),
        size: data.len() as u64,
        md5: md5_hex(data),
        sha256: Some(netdisk_e2e::sha256_hex(data)),
        mode: 0o644,
        mtime: None,
        owner,
    };
    let UploadFileRes::Instant { dir, .. } = c.call_with_payload(&req, data).expect("upload").0 else {
        panic!("a file sent whole is placed at once");
    };
    let d = dir.expect("an upload placed at once answers with its directory");
    assert_eq!(d, c.stat("/d").expect("stat /d"), "upload: the directory as Stat sees it");
    assert!(d.mtime > made.attr.mtime, "a new name changes the mtime");

    // The same content again, at a second name: instant, by md5 (the user holds it).
    let again = UploadFile { path: "/d/g".into(), ..req };
    let UploadFileRes::Instant { dir, .. } = c.call(&again).expect("instant upload") else {
        panic!("content the user holds is placed at once");
    };
    assert_eq!(dir.expect("an instant upload answers with its directory"), c.stat("/d").expect("stat /d"));

    let gone = c.call(&DeleteFile { path: "/d/f".into() }).expect("unlink");
    assert_eq!(gone.dir.expect("unlink answers with the directory"), c.stat("/d").expect("stat /d"));
    c.call(&DeleteFile { path: "/d/g".into() }).expect("unlink");
    let removed = c.call(&Rmdir { path: "/d".into() }).expect("rmdir");
    let root = removed.dir.expect("rmdir answers with the parent");
    assert_eq!(root, c.stat("/").expect("stat /"), "rmdir: the parent as Stat sees it");
    assert_eq!(root.nlink, before.nlink, "the link is gone with the subdirectory");
}

#[test]
fn rename_moves_whole_subtrees() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut c = alice(&server);
    let f1 = random_bytes(40, 150_000);
    let f2 = random_bytes(41, 1000);
    let f3 = random_bytes(42, 70_000);
    c.mkdir("/d", 0o755).expect("mkdir");
    c.mkdir("/d/sub", 0o750).expect("mkdir");
    c.mkdir("/d/sub/subsub", 0o700).expect("mkdir");
    c.mkdir("/d/empty", 0o755).expect("mkdir");
    c.upload("/d/f1", &f1, 0o644).expect("upload");
    c.upload("/d/sub/f2", &f2, 0o644).expect("upload");
    let f3_ino = c.upload("/d/sub/subsub/f3", &f3, 0o600).expect("upload").attr.ino;
    let d_ino = c.stat("/d").expect("stat").ino;

    c.rename("/d", "/e", false).expect("rename a directory");
    assert_eq!(c.names("/").expect("list"), vec!["e".to_string()]);
    assert_eq!(c.stat("/e").expect("stat").ino, d_ino, "rename keeps the node");
    assert_eq!(c.names("/e").expect("list"), vec!["empty", "f1", "sub"]);
    assert_eq!(c.names("/e/sub").expect("list"), vec!["f2", "subsub"]);
    assert_eq!(c.names("/e/sub/subsub").expect("list"), vec!["f3"]);
    assert_eq!(c.stat("/e/sub/subsub/f3").expect("stat").ino, f3_ino);
    assert_eq!(c.stat("/e/sub").expect("stat").mode & 0o7777, 0o750);
    assert_same_bytes(&c.read_file("/e/f1").expect("download"), &f1, "/e/f1");
    assert_same_bytes(&c.read_file("/e/sub/f2").expect("download"), &f2, "/e/sub/f2");
    assert_same_bytes(&c.read_file("/e/sub/subsub/f3").expect("download"), &f3, "/e/sub/subsub/f3");
    for old in ["/d", "/d/f1", "/d/sub", "/d/sub/f2", "/d/sub/subsub/f3", "/d/empty"] {
        expect_code(c.stat(old), ErrorCode::NotFound, old);
    }
    expect_code(c.download("/d/f1", 0, 10), ErrorCode::NotFound, "download at the old path");

    // Into a deeper place, and a file across directories.
    c.mkdir("/x", 0o755).expect("mkdir");
    c.rename("/e/sub", "/x/moved", false).expect("rename into another directory");
    assert_same_bytes(&c.read_file("/x/moved/subsub/f3").expect("download"), &f3, "after the second move");
    c.rename("/x/moved/f2", "/f2-at-root", false).expect("rename a file");
    assert_same_bytes(&c.read_file("/f2-at-root").expect("download"), &f2, "moved file");
    assert_eq!(c.names("/x/moved").expect("list"), vec!["subsub"]);

    // Into its own subtree: refused, nothing moves.
    expect_code(c.rename("/e", "/e/empty/inner", false), ErrorCode::Invalid, "rename into its own subdirectory");
    expect_code(c.rename("/x", "/x/moved/subsub/deeper", false), ErrorCode::Invalid, "rename into a deep subdir");
    assert_eq!(c.names("/").expect("list"), vec!["e", "f2-at-root", "x"]);
    // A missing source.
    expect_code(c.rename("/nothing", "/n2", false), ErrorCode::NotFound, "rename of a missing path");
    // Into a missing directory.
    expect_code(c.rename("/f2-at-root", "/nodir/f", false), ErrorCode::NotFound, "rename into a missing dir");
    // Onto itself (POSIX: success, nothing happens); whatever the answer, the file must survive.
    let _ = c.rename("/f2-at-root", "/f2-at-root", false);
    assert_same_bytes(&c.read_file("/f2-at-root").expect("download"), &f2, "renamed onto itself");
    server.assert_fsck_clean();
}

#[test]
fn rename_replace_rules() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let p = random_bytes(43, 5000);
    let q = random_bytes(44, 7000);
    c.upload("/p", &p, 0o644).expect("upload");
    c.upload("/q", &q, 0o644).expect("upload");
    let p_ino = c.stat("/p").expect("stat").ino;

    // noreplace and an existing target: Exists, both untouched.
    expect_code(c.rename("/p", "/q", true), ErrorCode::Exists, "rename noreplace onto an existing file");
    assert_same_bytes(&c.read_file("/p").expect("download"), &p, "/p untouched");
    assert_same_bytes(&c.read_file("/q").expect("download"), &q, "/q untouched");
    // noreplace to a free name works.
    c.rename("/p", "/p2", true).expect("rename noreplace to a free name");
    c.rename("/p2", "/p", true).expect("and back");

    // Without noreplace: the target is replaced atomically.
    c.rename("/p", "/q", false).expect("rename over an existing file");
    assert_eq!(c.names("/").expect("list"), vec!["q"]);
    assert_same_bytes(&c.read_file("/q").expect("download"), &p, "/q holds p's content");
    assert_eq!(c.stat("/q").expect("stat").ino, p_ino, "the moved node keeps its ino");
    expect_code(c.stat("/p"), ErrorCode::NotFound, "the old name is gone");

    // Directories: noreplace onto an existing directory, and rmdir of a non-empty one.
    c.mkdir("/d1", 0o755).expect("mkdir");
    c.mkdir("/d2", 0o755).expect("mkdir");
    c.upload("/d1/f", b"in d1", 0o644).expect("upload");
    expect_code(c.rename("/d1", "/d2", true), ErrorCode::Exists, "rename noreplace onto an existing dir");
    expect_code(c.rmdir("/d1"), ErrorCode::NotEmpty, "rmdir of a non-empty directory");
    assert_eq!(c.read_file("/d1/f").expect("download"), b"in d1");
    expect_code(c.rmdir("/q"), ErrorCode::NotDir, "rmdir of a file");
    expect_code(c.delete_file("/d1"), ErrorCode::IsDir, "unlink of a directory");
    expect_code(c.mkdir("/d1", 0o755), ErrorCode::Exists, "mkdir of an existing directory");
    expect_code(c.mkdir("/q", 0o755), ErrorCode::Exists, "mkdir over an existing file");
    expect_code(c.rmdir("/nothing"), ErrorCode::NotFound, "rmdir of a missing directory");
    expect_code(c.mkdir("/q/sub", 0o755), ErrorCode::NotDir, "mkdir under a file");

    // POSIX rename between kinds: a directory over an empty directory replaces it; over a non-empty one,
    // NotEmpty; a directory over a file, NotDir; a file over a directory, IsDir.
    c.rename("/d1", "/d2", false).expect("rename a directory over an empty directory");
    assert_eq!(c.read_file("/d2/f").expect("download"), b"in d1");
    c.mkdir("/d3", 0o755).expect("mkdir");
    expect_code(c.rename("/d3", "/d2", false), ErrorCode::NotEmpty, "rename over a non-empty directory");
    expect_code(c.rename("/d3", "/q", false), ErrorCode::NotDir, "rename a directory over a file");
    expect_code(c.rename("/q", "/d3", false), ErrorCode::IsDir, "rename a file over a directory");

    // rmdir of an emptied directory works.
    c.delete_file("/d2/f").expect("delete");
    c.rmdir("/d2").expect("rmdir of an empty directory");
    c.rmdir("/d3").expect("rmdir");
    assert_eq!(c.names("/").expect("list"), vec!["q"]);
    assert!(c.rmdir("/").is_err(), "rmdir of the root must fail");
    assert_eq!(c.stat("/").expect("the root survives").kind, NodeKind::Dir);
    server.assert_fsck_clean();
}

#[test]
fn hard_links_symlinks_and_special_files() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let data = random_bytes(45, 12_345);
    let h1 = c.upload("/h1", &data, 0o644).expect("upload").attr;
    assert_eq!(h1.nlink, 1);

    // Hard link: one node, two names.
    let linked = c.call(&Link { existing: "/h1".into(), new: "/h2".into() }).expect("link").attr;
    assert_eq!(linked.ino, h1.ino, "a hard link is the same node");
    assert_eq!(linked.nlink, 2);
    for path in ["/h1", "/h2"] {
        let a = c.stat(path).expect("stat");
        assert_eq!((a.ino, a.nlink, a.size), (h1.ino, 2, data.len() as u64), "{path}");
        assert_same_bytes(&c.read_file(path).expect("download"), &data, path);
    }
    let listed = c.list_dir("/").expect("list");
    assert!(listed.iter().all(|e| e.attr.nlink == 2 && e.attr.ino == h1.ino), "{listed:?}");
    expect_code(c.call(&Link { existing: "/h1".into(), new: "/h2".into() }), ErrorCode::Exists, "link to a used name");
    expect_code(
        c.call(&Link { existing: "/none".into(), new: "/h3".into() }),
        ErrorCode::NotFound,
        "link a missing path",
    );
    c.mkdir("/dir", 0o755).expect("mkdir");
    expect_code(
        c.call(&Link { existing: "/dir".into(), new: "/dir2".into() }),
        ErrorCode::NotPermitted,
        "link to a dir",
    );
    // Attribute changes show through both names.
    c.call(&SetAttr { path: "/h2".into(), mode: Some(0o600), ..Default::default() }).expect("chmod");
    assert_eq!(c.stat("/h1").expect("stat").mode & 0o7777, 0o600);
    // Deleting one name keeps the content under the other.
    c.delete_file("/h1").expect("delete one name");
    let a = c.stat("/h2").expect("stat");
    assert_eq!((a.ino, a.nlink), (h1.ino, 1));
    assert_same_bytes(&c.read_file("/h2").expect("download"), &data, "the remaining name");
    expect_code(c.stat("/h1"), ErrorCode::NotFound, "the deleted name");

    // Symlinks: any target text, kept as is.
    for (path, target) in [("/s1", "/h2"), ("/s2", "../relative/x"), ("/s3", "dangling")] {
        let attr = c
            .call(&Symlink { path: path.into(), target: target.into(), owner: Owner::default() })
            .expect("symlink")
            .attr;
        assert_eq!(attr.kind, NodeKind::Symlink);
        assert_eq!(c.call(&ReadLink { path: path.into() }).expect("readlink").target, target);
    }
    let kinds: Vec<(String, NodeKind)> =
        c.list_dir("/").expect("list").into_iter().map(|e| (e.name, e.attr.kind)).collect();
    assert!(kinds.contains(&("s1".to_string(), NodeKind::Symlink)), "{kinds:?}");
    expect_code(c.call(&ReadLink { path: "/h2".into() }), ErrorCode::Invalid, "readlink of a file");
    expect_code(c.call(&ReadLink { path: "/none".into() }), ErrorCode::NotFound, "readlink of a missing path");
    expect_code(
        c.call(&Symlink { path: "/s1".into(), target: "x".into(), owner: Owner::default() }),
        ErrorCode::Exists,
        "symlink over an existing name",
    );
    c.delete_file("/s2").expect("unlink a symlink");
    expect_code(c.call(&ReadLink { path: "/s2".into() }), ErrorCode::NotFound, "deleted symlink");

    // Special files: metadata only, with their rdev.
    let makedev = |major: u64, minor: u64| (major << 8) | minor;
    let nodes = [
        ("/fifo", NodeKind::Fifo, 0o644, 0),
        ("/sock", NodeKind::Socket, 0o755, 0),
        ("/null", NodeKind::CharDevice, 0o666, makedev(1, 3)),
        ("/disk", NodeKind::BlockDevice, 0o660, makedev(8, 1)),
    ];
    for (path, kind, mode, rdev) in nodes {
        let owner = Owner { uid: 1000, gid: 100 };
        let attr = c.call(&Mknod { path: path.into(), kind, mode, rdev, owner }).expect("mknod").attr;
        assert_eq!((attr.kind, attr.mode & 0o7777, attr.rdev), (kind, mode, rdev), "{path}");
        assert_eq!((attr.uid, attr.gid), (1000, 100), "{path}: owner");
        let a = c.stat(path).expect("stat");
        assert_eq!((a.kind, a.mode & 0o7777, a.rdev, a.nlink), (kind, mode, rdev, 1), "{path}: stat");
        assert_eq!(a.md5, None, "{path}: only regular files have an md5");
    }
    expect_code(
        c.call(&Mknod { path: "/fifo".into(), kind: NodeKind::Fifo, mode: 0o644, rdev: 0, owner: Owner::default() }),
        ErrorCode::Exists,
        "mknod over an existing name",
    );
    c.delete_file("/fifo").expect("unlink a fifo");
    expect_code(c.stat("/fifo"), ErrorCode::NotFound, "deleted fifo");
    assert_eq!(c.names("/").expect("list"), vec!["dir", "disk", "h2", "null", "s1", "s3", "sock"]);
    server.assert_fsck_clean();
}

#[test]
fn setattr_changes_mode_owner_times_and_size() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut c = alice(&server);
    let data = random_bytes(46, 100_000);
    let orig = c.upload("/m", &data, 0o644).expect("upload").attr;
    // A second node with the same content (deduplicated on the server) must not change with /m.
    assert!(c.upload("/twin", &data, 0o644).expect("upload").instant);

    for mode in [0o4755, 0o2750, 0o1777, 0o7777, 0o0000, 0o644] {
        let attr = c.call(&SetAttr { path: "/m".into(), mode: Some(mode), ..Default::default() }).expect("chmod").attr;
        assert_eq!(attr.mode & 0o7777, mode, "chmod {mode:o}");
        assert_eq!(c.stat("/m").expect("stat").mode & 0o7777, mode, "stat after chmod {mode:o}");
    }
    let attr = c.call(&SetAttr { path: "/m".into(), uid: Some(1234), ..Default::default() }).expect("chown").attr;
    assert_eq!((attr.uid, attr.gid), (1234, orig.gid));
    let attr = c.call(&SetAttr { path: "/m".into(), gid: Some(5678), ..Default::default() }).expect("chgrp").attr;
    assert_eq!((attr.uid, attr.gid), (1234, 5678));

    let mtime = Timespec { sec: 1_234_567_890, nsec: 987_654_321 };
    let atime = Timespec { sec: 1_000_000_000, nsec: 1 };
    let attr = c
        .call(&SetAttr {
            path: "/m".into(),
            mtime: Some(SetTime::At(mtime)),
            atime: Some(SetTime::At(atime)),
            ..Default::default()
        })
        .expect("utimens")
        .attr;
    assert_eq!((attr.mtime, attr.atime), (mtime, atime));
    let a = c.stat("/m").expect("stat");
    assert_eq!((a.mtime, a.atime), (mtime, atime), "times with nanoseconds survive");
    // Now by the server's clock: recent, not the old value.
    let attr =
        c.call(&SetAttr { path: "/m".into(), mtime: Some(SetTime::Now), ..Default::default() }).expect("touch").attr;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((attr.mtime.sec - now).abs() < 120, "mtime Now is the server's now: {:?} vs {now}", attr.mtime);
    // Nothing else changed.
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o7777, attr.size), (1234, 5678, 0o644, data.len() as u64));

    // Truncate smaller: the first bytes, a new md5, same node.
    let attr = c.call(&SetAttr { path: "/m".into(), size: Some(1000), ..Default::default() }).expect("truncate").attr;
    assert_eq!((attr.ino, attr.size), (orig.ino, 1000));
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data[..1000]).as_str()));
    assert_same_bytes(&c.read_file("/m").expect("download"), &data[..1000], "truncated");
    // Extend: zero fill.
    let mut want = data[..1000].to_vec();
    want.resize(70_000, 0);
    let attr = c.call(&SetAttr { path: "/m".into(), size: Some(70_000), ..Default::default() }).expect("extend").attr;
    assert_eq!(attr.size, 70_000);
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(&want).as_str()));
    assert_same_bytes(&c.read_file("/m").expect("download"), &want, "extended with zeros");
    assert_eq!(c.stat("/m").expect("stat").md5.as_deref(), Some(md5_hex(&want).as_str()));
    // To zero.
    let attr = c.call(&SetAttr { path: "/m".into(), size: Some(0), ..Default::default() }).expect("truncate").attr;
    assert_eq!(attr.size, 0);
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(b"").as_str()));
    assert!(c.read_file("/m").expect("download").is_empty());
    // From empty to a hole.
    c.call(&SetAttr { path: "/m".into(), size: Some(5000), ..Default::default() }).expect("extend");
    assert_same_bytes(&c.read_file("/m").expect("download"), &[0u8; 5000], "a file of zeros");
    // The twin kept its content and attributes.
    let twin = c.stat("/twin").expect("stat");
    assert_eq!((twin.size, twin.mode & 0o7777), (data.len() as u64, 0o644));
    assert_same_bytes(&c.read_file("/twin").expect("download"), &data, "the deduplicated twin");

    // Directories take modes and times too; a size on a directory is refused.
    c.mkdir("/d", 0o755).expect("mkdir");
    let attr = c.call(&SetAttr { path: "/d".into(), mode: Some(0o1777), ..Default::default() }).expect("chmod").attr;
    assert_eq!(attr.mode & 0o7777, 0o1777);
    let r = c.call(&SetAttr { path: "/d".into(), size: Some(10), ..Default::default() });
    assert!(r.is_err(), "truncating a directory must fail, got {r:?}");
    expect_code(
        c.call(&SetAttr { path: "/none".into(), mode: Some(0o600), ..Default::default() }),
        ErrorCode::NotFound,
        "setattr of a missing path",
    );
    server.assert_fsck_clean();
}

#[test]
fn statfs_is_sane() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let s = c.call(&StatFs {}).expect("statfs");
    assert!(s.block_size > 0, "{s:?}");
    assert!(s.blocks > 0, "{s:?}");
    assert!(s.blocks_free <= s.blocks, "{s:?}");
    assert!(s.blocks_available <= s.blocks_free, "{s:?}");
    assert!(s.files_free <= s.files, "{s:?}");
    assert_eq!(s.name_max, MAX_NAME as u32);
}
