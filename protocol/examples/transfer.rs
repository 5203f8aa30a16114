//! Uploads and downloads one file with the blocking client and prints MB/s.
//! Usage: NETDISK_PASSWORD=... transfer ADDR USER SIZE_MIB   (bench/server-transfer.sh sets everything up)

use std::net::TcpStream;
use std::time::Instant;

use netdisk_protocol::client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: transfer ADDR USER SIZE_MIB (password in NETDISK_PASSWORD)".into());
    }
    let password = std::env::var("NETDISK_PASSWORD")?;
    let size_mib: usize = args[3].parse()?;
    let mut data = vec![0u8; size_mib << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut client = Client::new(TcpStream::connect(&args[1])?);
    client.login(&args[2], &password)?;
    let mib = data.len() as f64 / (1 << 20) as f64;

    let started = Instant::now();
    let first = client.upload("/transfer.bin", &data, 0o644)?;
    let upload = started.elapsed().as_secs_f64();
    assert!(!first.instant);

    // Download in the largest ranges, comparing each with what was sent (no 1 GiB buffer to fault in).
    let started = Instant::now();
    let mut offset = 0usize;
    while offset < data.len() {
        let (_, bytes) = client.download("/transfer.bin", offset as u64, netdisk_protocol::MAX_PAYLOAD)?;
        assert!(
            !bytes.is_empty() && bytes[..] == data[offset..offset + bytes.len()],
            "downloaded bytes differ at {offset}"
        );
        offset += bytes.len();
    }
    let download = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let again = client.upload("/transfer-copy.bin", &data, 0o644)?;
    let instant = started.elapsed().as_secs_f64();
    assert!(again.instant && again.chunks_sent == 0);

    println!("size            {mib:.0} MiB");
    println!(
        "upload          {:.1} MiB/s  ({upload:.2} s, {} chunks, md5+sha256 verified by the server)",
        mib / upload,
        first.chunks_sent
    );
    println!("download        {:.1} MiB/s  ({download:.2} s)", mib / download);
    println!("instant upload  {instant:.3} s (no chunk sent; the client's md5 of the file is most of it)");
    Ok(())
}
