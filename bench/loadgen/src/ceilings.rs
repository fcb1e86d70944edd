//! What the machine allows, measured in the same run as the systems: sequential
//! write with fdatasync, 4 KiB write+fdatasync latency, page-cache write, and
//! loopback TCP throughput.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

const MIB: usize = 1 << 20;

fn sequential_write(dir: &Path, mib: usize, sync: bool) -> Result<f64> {
    let path = dir.join("ceiling.dat");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let chunk = vec![0xA5u8; MIB];
    let start = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    if sync {
        f.sync_data()?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((mib * MIB) as f64 / secs / 1e6)
}

/// Median of `n` 4 KiB writes each followed by fdatasync, in µs.
fn small_sync_write(dir: &Path, n: usize) -> Result<f64> {
    let path = dir.join("ceiling-4k.dat");
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5Au8; 4096];
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f.write_all_at(&block, (i * 4096) as u64)?;
        f.sync_data()?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    times.sort_by(f64::total_cmp);
    Ok(times[n / 2])
}

fn loopback_tcp(duration: Duration) -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; MIB];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![1u8; MIB];
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&chunk)?;
    }
    drop(s);
    let total = reader.join().expect("reader")?;
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

pub fn measure(dir: &Path) -> Result<serde_json::Value> {
    std::fs::create_dir_all(dir)?;
    Ok(json!({
        "seq_write_fdatasync_mb_s": sequential_write(dir, 512, true)?,
        "page_cache_write_mb_s": sequential_write(dir, 1024, false)?,
        "write_4k_fdatasync_us": small_sync_write(dir, 500)?,
        "loopback_tcp_mb_s": loopback_tcp(Duration::from_secs(3))?,
    }))
}
