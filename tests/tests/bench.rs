//! The benchmark harness in quick mode: `netdisk-bench --quick` must run every workload on every target it can set
//! up, check what it wrote, print the table with every row, write its Markdown file, and clean up after itself.
//! Nothing here looks at a timing. Without sshfs installed the sshfs column is n/a and the test still passes
//! (`.ci/run` installs sshfs so that CI exercises it; this test never runs apt-get itself: `--no-install`).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The quick run takes ~10-20 s in the debug build; this bound only catches a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// One phrase of each workload's row label.
const ROWS: [&str; 16] = [
    "sequential write (cp in)",
    "sequential read, cold",
    "sequential read, warm",
    ": create",
    ": stat (ls -lR)",
    ": read",
    ": rm -rf",
    ": tar -x",
    "tree: cp -r inside the target",
    "tree: rm -rf of both copies",
    "cp in, content already held",
    "held-content cp in vs first cp in",
    "cp inside the target",
    "cp in at once (aggregate)",
    "client peak RSS",
    "largest server process peak RSS",
];

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn quick_mode_prints_every_row_and_cleans_up() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out_md = work.path().join("bench.md");
    let stdout_path = work.path().join("stdout");
    let stderr_path = work.path().join("stderr");

    let bench = env!("CARGO_BIN_EXE_netdisk-bench");
    let mut child = Command::new(bench)
        .args(["--quick", "--no-install", "--out"])
        .arg(&out_md)
        .arg("--scratch")
        .arg(&scratch)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("netdisk-bench starts (build the binaries first: cargo build --workspace --bins)");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for netdisk-bench") {
            break status;
        }
        if Instant::now() >= deadline {
            // SIGTERM lets the harness clean up (it checks for interruption in every wait); then kill.
            // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "netdisk-bench --quick did not finish within {RUN_TIMEOUT:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "netdisk-bench --quick failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // The table: a header with the three targets and both ratios, and one row per workload.
    assert!(
        stdout.lines().any(|l| l.starts_with("| workload")
            && ["local", "sshfs", "netdisk", "netdisk vs sshfs", "netdisk vs local"].iter().all(|c| l.contains(c))),
        "no table header in:\n{stdout}"
    );
    for row in ROWS {
        let line = stdout.lines().find(|l| l.starts_with("| ") && l.contains(row));
        let line = line.unwrap_or_else(|| panic!("no row with {row:?} in:\n{stdout}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 7, "row {row:?} has {} cells: {line}", cells.len());
        // local, sshfs and netdisk each hold a figure or n/a; netdisk always has one.
        for cell in &cells[2..5] {
            assert!(*cell == "n/a" || cell.starts_with(|c: char| c.is_ascii_digit()), "cell {cell:?} in: {line}");
        }
        assert_ne!(cells[4], "n/a", "netdisk has no figure in: {line}");
    }
    assert!(stdout.contains("all equal"), "no integrity line in:\n{stdout}");

    let md = std::fs::read_to_string(&out_md).expect("--out wrote the Markdown file");
    for part in ["# netdisk benchmarks", "- command:", "- CPU:", "- kernel:", "| workload", "Every repetition"] {
        assert!(md.contains(part), "{part:?} missing from the Markdown:\n{md}");
    }

    // Cleaned up: no process started for the run is left (each has the scratch path on its command line: sshd's
    // config, sshfs's mount point, netdisk's data directory and mount point), nothing is mounted under the scratch
    // directory, and the run's own directory is gone.
    let scratch_s = scratch.to_string_lossy().into_owned();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter_map(|pid| {
                        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                        cmdline.contains(&scratch_s).then(|| format!("{pid}: {cmdline}"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        netdisk_e2e::wait_until(Duration::from_secs(10), || leftovers().is_empty()),
        "left running: {:?}",
        leftovers()
    );
    assert!(mounts_under(&scratch).is_empty(), "still mounted: {:?}", mounts_under(&scratch));
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert!(left.is_empty(), "the scratch directory was not removed: {left:?}");
}
