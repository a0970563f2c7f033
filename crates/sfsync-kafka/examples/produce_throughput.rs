//! Produce and read-back throughput against a local tansu broker (SQLite storage), printed as
//! figures; no assertions. Needs tansu like the tests (`SFSYNC_TEST_TANSU` or `tansu` on PATH).
//!
//! ```text
//! cargo run -p sfsync-kafka --example produce_throughput -- [records] [value_bytes] [batch]
//! ```
//! Defaults: 50,000 records of 1,000 bytes in batches of 5,000, over 3 partitions, with 500
//! distinct keys (as record Ids would be).

use std::time::{Duration, Instant};

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

use sfsync_kafka::test_support::Broker;
use sfsync_kafka::{Admin, Compression, Consumer, Producer, ProducerOptions, Record, TopicSpec};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let total = args.first().copied().unwrap_or(50_000);
    let size = args.get(1).copied().unwrap_or(1_000);
    let batch = args.get(2).copied().unwrap_or(5_000);

    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = broker.config();
    println!(
        "librdkafka {}, tansu at {} (sqlite storage), {total} records of {size} bytes, batches of {batch}",
        sfsync_kafka::librdkafka_version(),
        broker.bootstrap()
    );

    for compression in [Compression::None, Compression::Zstd] {
        let topic = format!("bench-{compression:?}").to_lowercase();
        Admin::new(&config)
            .unwrap()
            .ensure_topics(&[TopicSpec::new(&topic, 3, 1)])
            .await
            .unwrap();
        let producer = Producer::new(
            &config,
            ProducerOptions {
                compression,
                ..ProducerOptions::default()
            },
        )
        .unwrap();
        // JSON-like values with some variety, as curated changes would be.
        let value = |i: usize| {
            let head = format!(
                "{{\"Id\":\"001{:015}\",\"seq\":{i},\"Name\":\"Account {i}\",\"pad\":\"",
                i % 500
            );
            let mut v = head.into_bytes();
            let mut x = i as u64 | 1;
            while v.len() + 2 < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(b'a' + (x % 26) as u8);
            }
            v.extend_from_slice(b"\"}");
            v
        };

        let broker_pid = broker.pid().unwrap().to_string();
        let (client_cpu, broker_cpu) = (cpu_secs("self"), cpu_secs(&broker_pid));
        let started = Instant::now();
        let mut sent = 0;
        while sent < total {
            let n = batch.min(total - sent);
            let records: Vec<Record> = (sent..sent + n)
                .map(|i| Record::new(topic.clone(), format!("001{:015}", i % 500), value(i)))
                .collect();
            producer.send_batch(records).await.unwrap();
            sent += n;
        }
        let produce = started.elapsed();
        let client_cpu = cpu_secs("self") - client_cpu;
        let broker_cpu = cpu_secs(&broker_pid) - broker_cpu;

        let started = Instant::now();
        let read = Consumer::read_all(&config, &topic, Duration::from_secs(600))
            .await
            .unwrap();
        let consume = started.elapsed();
        assert_eq!(read.len(), total);

        let mb = (total * size) as f64 / 1e6;
        println!(
            "compression {compression:?}: produce {:.0} records/s ({:.1} MB/s, {:.2} s); \
             CPU while producing: client {client_cpu:.1} s, broker {broker_cpu:.1} s; \
             read back {:.0} records/s ({:.2} s)",
            total as f64 / produce.as_secs_f64(),
            mb / produce.as_secs_f64(),
            produce.as_secs_f64(),
            total as f64 / consume.as_secs_f64(),
            consume.as_secs_f64()
        );
    }
}
