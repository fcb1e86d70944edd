//! Storage-engine benchmarks: append throughput with 1 KiB records in `async` and
//! `sync` flush mode at batch sizes 1, 16 and 256, and sequential read throughput.
//! Run with `cargo bench -p dduomq-broker`; figures are records/s and bytes/s.
//! The store lives in `$DDUOMQ_BENCH_DIR` (default: a temp dir under /var/tmp, a real disk).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dduomq_broker::store::{DiskFullPolicy, FlushMode, Message, Store, StoreConfig};

const RECORD_BODY: usize = 1024;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("DDUOMQ_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    tempfile::tempdir_in(base).expect("bench dir")
}

fn config(dir: &std::path::Path, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        broker_id: 0,
        segment_size_bytes: 256 << 20,
        max_record_size_bytes: 4 << 20,
        flush,
        flush_interval: Duration::from_millis(200),
        max_group_bytes: 16 << 20,
        consume_queue_entries_per_file: 300_000,
        index_slots: 1 << 16,
        index_entries: 1 << 18,
        retention: Duration::from_secs(72 * 3600),
        disk_usage_limit: 1.0,
        disk_full_policy: DiskFullPolicy::Refuse,
        retention_check_interval: Duration::from_secs(3600),
    }
}

fn batch(n: usize, body: &Bytes) -> Vec<Message> {
    (0..n)
        .map(|i| Message {
            topic: "bench".into(),
            queue_id: (i % 4) as u32,
            body: body.clone(),
            ..Message::default()
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let body = Bytes::from(vec![0x5Au8; RECORD_BODY]);
    let mut group = c.benchmark_group("append_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for flush in [FlushMode::Async, FlushMode::Sync] {
        let dir = bench_dir();
        let store = Store::open(config(dir.path(), flush)).unwrap();
        for size in [1usize, 16, 256] {
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{flush:?}").to_lowercase(), size),
                &size,
                |b, &size| b.iter(|| store.append_blocking(batch(size, &body)).unwrap()),
            );
        }
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let body = Bytes::from(vec![0x5Au8; RECORD_BODY]);
    let dir = bench_dir();
    let store = Store::open(config(dir.path(), FlushMode::Async)).unwrap();
    const N: u64 = 200_000;
    for _ in 0..N / 1000 {
        store.append_blocking(batch(1000, &body)).unwrap();
    }
    let mut group = c.benchmark_group("sequential_read_1KiB");
    group.sample_size(10).throughput(Throughput::Elements(N));
    group.bench_function("4_queues_batches_of_256", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut total = 0u64;
                for q in 0..4 {
                    let mut offset = 0;
                    loop {
                        let r = store.read("bench", q, offset, 256, 1 << 20).unwrap();
                        if r.records.is_empty() {
                            break;
                        }
                        total += r.records.len() as u64;
                        offset = r.next_offset;
                    }
                }
                assert_eq!(total, N);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
