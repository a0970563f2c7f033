//! sfsync-kafka against a real Kafka-protocol broker: tansu 0.6 on 127.0.0.1 with SQLite storage
//! in a temporary directory, one broker per test (`test_support::Broker`; scripts/test installs
//! tansu and sets `SFSYNC_TEST_TANSU`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sfsync_kafka::test_support::Broker;
use sfsync_kafka::{
    Admin, Consumer, KafkaError, Message, Producer, ProducerOptions, Record, TopicSpec,
};

const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `{"key":..,"seq":..}` plus padding to about `size` bytes.
fn payload(key: &str, seq: usize, size: usize) -> Vec<u8> {
    let head = format!("{{\"key\":\"{key}\",\"seq\":{seq},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

fn seq_of(m: &Message) -> usize {
    let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
    v["seq"].as_u64().unwrap() as usize
}

/// Per key, the sequence numbers in the order a reader of each partition sees them.
fn per_key(messages: &[Message]) -> BTreeMap<String, Vec<usize>> {
    let mut by_partition: BTreeMap<i32, Vec<&Message>> = BTreeMap::new();
    for m in messages {
        by_partition.entry(m.partition).or_default().push(m);
    }
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (_, mut ms) in by_partition {
        ms.sort_by_key(|m| m.offset);
        for m in ms {
            keys.entry(m.key_str()).or_default().push(seq_of(m));
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topics_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let admin = Admin::new(&broker.config()).unwrap();
    let topics = [
        TopicSpec::new("sfsync.Account", 3, 1),
        TopicSpec::new("sfsync.Contact", 1, 1),
    ];

    let created = admin.ensure_topics(&topics).await.unwrap();
    assert_eq!(created, ["sfsync.Account", "sfsync.Contact"]);
    assert_eq!(admin.partitions("sfsync.Account").await.unwrap(), 3);
    assert_eq!(admin.partitions("sfsync.Contact").await.unwrap(), 1);

    // Again, and with one new topic: only that one is created.
    let mut more = topics.to_vec();
    more.push(TopicSpec::new("sfsync.Case", 2, 1));
    assert_eq!(admin.ensure_topics(&more).await.unwrap(), ["sfsync.Case"]);
    assert_eq!(
        admin.ensure_topics(&more).await.unwrap(),
        Vec::<String>::new()
    );

    // An existing topic with fewer partitions than wanted is refused, naming it.
    let err = admin
        .ensure_topics(&[TopicSpec::new("sfsync.Contact", 4, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KafkaError::TopicTooSmall {
                found: 1,
                wanted: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'sfsync.Contact'"), "{err}");

    // Invalid specs are refused before any request, each with its key.
    let err = admin
        .ensure_topics(&[TopicSpec::new("bad name", 0, 1)])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("topics[0].name") && text.contains("topics[0].partitions"),
        "{text}"
    );

    assert_eq!(admin.brokers().await.unwrap(), [broker.bootstrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_keeps_per_key_order_over_three_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = broker.config();
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("orders", 3, 1)])
        .await
        .unwrap();
    let producer = Producer::new(&config, ProducerOptions::default()).unwrap();

    // 10,000 records: 200 keys x 50 sequence numbers, in 5 batches of 2,000 (each batch holds
    // the next 10 sequence numbers of every key, interleaved across keys).
    let keys: Vec<String> = (0..200).map(|k| format!("001{k:015}")).collect();
    let mut sent = 0;
    for batch in 0..5 {
        let mut records = Vec::new();
        for seq in batch * 10..batch * 10 + 10 {
            for key in &keys {
                records.push(
                    Record::new("orders", key.clone(), payload(key, seq, 200))
                        .header("sfsync-seq", seq.to_string()),
                );
            }
        }
        let n = records.len();
        let reports = producer.send_batch(records).await.unwrap();
        assert_eq!(reports.len(), n);
        assert!(reports
            .iter()
            .all(|r| (0..3).contains(&r.partition) && r.offset >= 0));
        sent += n;
    }
    assert_eq!(sent, 10_000);

    let messages = Consumer::read_all(&config, "orders", READ_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(messages.len(), 10_000);
    let partitions: std::collections::BTreeSet<i32> =
        messages.iter().map(|m| m.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over all partitions");
    let seqs = per_key(&messages);
    assert_eq!(seqs.len(), 200);
    for (key, s) in &seqs {
        assert_eq!(*s, (0..50).collect::<Vec<_>>(), "order of key {key}");
    }
    // Headers and keys arrive as sent.
    let m = &messages[0];
    assert_eq!(
        m.headers,
        [("sfsync-seq".to_string(), seq_of(m).to_string().into_bytes())]
    );
    assert!(m.timestamp_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_queue_makes_send_batch_wait_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut config = broker.config();
    // librdkafka's queue holds only 50 records: most of the batch meets QueueFull.
    config
        .extra
        .insert("queue.buffering.max.messages".into(), "50".into());
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("small-queue", 2, 1)])
        .await
        .unwrap();
    let producer = Producer::new(&config, ProducerOptions::default()).unwrap();
    let records: Vec<Record> = (0..2_000)
        .map(|i| Record::new("small-queue", format!("k{}", i % 7), payload("k", i, 100)))
        .collect();
    let reports = producer.send_batch(records).await.unwrap();
    assert_eq!(reports.len(), 2_000);
    let messages = Consumer::read_all(&config, "small-queue", READ_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(messages.len(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_to_a_missing_topic_fails_within_the_timeout_naming_topic_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let options = ProducerOptions {
        delivery_timeout_ms: 3_000,
        ..ProducerOptions::default()
    };
    let producer = Producer::new(&broker.config(), options).unwrap();
    // tansu does not create topics on use: the record cannot be delivered.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        producer.send_batch(vec![Record::new("no-such-topic", "001A", "{}")]),
    )
    .await
    .expect("send_batch returned within its delivery timeout and grace")
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("topic 'no-such-topic'") && text.contains("key '001A'"),
        "{text}"
    );
    assert!(
        matches!(
            err,
            KafkaError::Delivery {
                failed: 1,
                delivered: 0,
                total: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A record librdkafka refuses to queue fails the batch as a user error naming its key, and no
/// later record of the batch is written (so no key's record overtakes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_fails_the_batch_and_stops_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = broker.config();
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("sizes", 1, 1)])
        .await
        .unwrap();
    let producer = Producer::new(&config, ProducerOptions::default()).unwrap();
    let err = producer
        .send_batch(vec![
            Record::new("sizes", "001A", payload("001A", 0, 100)),
            Record::new("sizes", "001B", payload("001B", 1, 2_000_000)),
            Record::new("sizes", "001A", payload("001A", 2, 100)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KafkaError::Delivery {
                code: sfsync_kafka::RDKafkaErrorCode::MessageSizeTooLarge,
                failed: 2,
                delivered: 1,
                total: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("key '001B'"), "{err}");
    assert_eq!(err.class(), sfsync_core::ErrorClass::User);
    // The producer goes on working (with a new client).
    producer
        .send_batch(vec![Record::new("sizes", "001C", payload("001C", 3, 100))])
        .await
        .unwrap();
    let read = Consumer::read_all(&config, "sizes", READ_TIMEOUT)
        .await
        .unwrap();
    let seqs: Vec<usize> = read.iter().map(seq_of).collect();
    assert_eq!(seqs, [0, 3]);
}

/// The broker is SIGKILLed twice while batches are being sent, and restarted each time on the
/// same port and data: once for 3 s (shorter than the delivery timeout: librdkafka's retries carry
/// the batch in flight over the restart, `send_batch` succeeds), once until a `send_batch` has
/// failed with its timeout (the caller then resends the batch whole, as a sink does). Every
/// `send_batch` returns (never hangs); afterwards every record is present and each key's records
/// are in order, with duplicates only from resent batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_send_then_restarted_loses_nothing_and_keeps_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let config = broker.config();
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("restart", 3, 1)])
        .await
        .unwrap();
    let options = ProducerOptions {
        delivery_timeout_ms: 8_000,
        ..ProducerOptions::default()
    };
    let producer = Arc::new(Producer::new(&config, options).unwrap());
    // The hang bound: send_batch promises to return within its delivery timeout plus a few
    // seconds; 30 s more covers a loaded machine. Exceeding it is a hang, not slowness.
    let bound = producer.delivery_timeout() + Duration::from_secs(35);

    const KEYS: usize = 50;
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 4; // sequence numbers per key per batch
    let keys: Vec<String> = (0..KEYS).map(|k| format!("003{k:015}")).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));

    let sender = {
        let producer = producer.clone();
        let (acked, errors) = (acked.clone(), errors.clone());
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut attempts: Vec<(usize, Result<(), String>)> = Vec::new();
            for batch in 0..BATCHES {
                let records: Vec<Record> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
                    .flat_map(|seq| {
                        keys.iter()
                            .map(move |k| Record::new("restart", k.clone(), payload(k, seq, 1000)))
                    })
                    .collect();
                loop {
                    let outcome = tokio::time::timeout(bound, producer.send_batch(records.clone()))
                        .await
                        .unwrap_or_else(|_| {
                            panic!("send_batch of batch {batch} hung past {bound:?}")
                        });
                    match outcome {
                        Ok(reports) => {
                            assert_eq!(reports.len(), records.len());
                            attempts.push((batch, Ok(())));
                            break;
                        }
                        Err(e) => {
                            attempts.push((batch, Err(e.to_string())));
                            let n = errors.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(n < 20, "too many failed attempts; last: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                acked.store(batch + 1, Ordering::SeqCst);
            }
            attempts
        })
    };
    let wait_acked = |n: usize| {
        let acked = acked.clone();
        async move {
            while acked.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    // Kill 1, short: the sender is inside the next send_batch (no pause between batches).
    wait_acked(5).await;
    broker.stop();
    let first_kill_at = acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();

    // Kill 2, long: the broker stays down until a send_batch has failed.
    wait_acked(20).await;
    broker.stop();
    let second_kill_at = acked.load(Ordering::SeqCst);
    tokio::time::timeout(bound, async {
        while errors.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a send_batch failed while the broker was down");
    broker.restart();

    let attempts = match sender.await {
        Ok(a) => a,
        Err(e) => panic!("sender failed: {e}; broker log:\n{}", broker.log()),
    };
    assert!(
        first_kill_at < 20 && second_kill_at < BATCHES,
        "kills landed mid-stream"
    );
    let failed_batches: Vec<usize> = attempts
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(b, _)| *b)
        .collect();
    for (b, r) in &attempts {
        if let Err(e) = r {
            println!("batch {b} failed (resent): {e}");
        }
    }
    assert!(
        failed_batches.iter().all(|b| *b >= second_kill_at),
        "only the long outage fails batches: {failed_batches:?}"
    );

    let messages = Consumer::read_all(&config, "restart", READ_TIMEOUT)
        .await
        .unwrap();
    let seqs = per_key(&messages);
    assert_eq!(seqs.len(), KEYS);
    let mut duplicates = 0;
    for (key, s) in &seqs {
        // Nothing lost, and the first occurrences are in order.
        let mut first: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &x in s {
            if seen.insert(x) {
                first.push(x);
            }
        }
        assert_eq!(
            first,
            (0..BATCHES * PER_BATCH).collect::<Vec<_>>(),
            "key {key}: every record present, in order"
        );
        // Order holds in the whole stream too: going back is only ever a restart from the
        // first record of a batch that was resent after an error, and from there the stream
        // continues in order.
        for w in s.windows(2) {
            if w[1] != w[0] + 1 {
                let batch = w[1] / PER_BATCH;
                assert!(
                    w[1] <= w[0]
                        && w[1].is_multiple_of(PER_BATCH)
                        && failed_batches.contains(&batch),
                    "key {key}: {} follows {} (failed batches {failed_batches:?}); stream {s:?}",
                    w[1],
                    w[0]
                );
            }
        }
        duplicates += s.len() - first.len();
    }
    // librdkafka's own retries across a restart are deduplicated by the broker (tansu keeps
    // producer ids and sequence numbers in SQLite): duplicates come only from resent batches,
    // at most one copy of each record per failed attempt.
    let resent_records = failed_batches.len() * KEYS * PER_BATCH;
    assert!(
        duplicates <= resent_records,
        "{duplicates} duplicates, more than the {resent_records} records resent"
    );
    println!(
        "broker killed after {first_kill_at} and {second_kill_at} batches; {} batch attempts \
         failed and were resent; {} records read, {duplicates} duplicates",
        failed_batches.len(),
        messages.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_resumes_at_its_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = broker.config();
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("changes", 2, 1)])
        .await
        .unwrap();
    let producer = Producer::new(&config, ProducerOptions::default()).unwrap();
    let records: Vec<Record> = (0..100)
        .map(|i| Record::new("changes", format!("k{}", i % 10), payload("k", i, 100)))
        .collect();
    producer.send_batch(records).await.unwrap();

    // First member: process 40 messages, commit them, leave.
    let mut processed: HashMap<(i32, i64), usize> = HashMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    {
        let consumer = Consumer::new(&config, "sink-a").unwrap();
        consumer.subscribe(&["changes"]).unwrap();
        while processed.len() < 40 {
            let m = consumer
                .poll(Duration::from_secs(60))
                .await
                .unwrap()
                .expect("a message within 60 s");
            processed.insert((m.partition, m.offset), seq_of(&m));
            next.insert(m.partition, m.offset + 1);
        }
        let commits: Vec<(String, i32, i64)> = next
            .iter()
            .map(|(p, o)| ("changes".to_string(), *p, *o))
            .collect();
        consumer.commit(&commits).await.unwrap();
        let committed = consumer.committed().await.unwrap();
        for (p, o) in &next {
            assert!(
                committed.contains(&("changes".to_string(), *p, Some(*o))),
                "committed {committed:?} holds partition {p} at {o}"
            );
        }
    }

    // Second member of the same group: starts where the first committed, reads the other 60.
    let consumer = Consumer::new(&config, "sink-a").unwrap();
    consumer.subscribe(&["changes"]).unwrap();
    let mut rest: HashMap<(i32, i64), usize> = HashMap::new();
    while rest.len() < 60 {
        let m = consumer
            .poll(Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a message within 60 s");
        let committed_next = next.get(&m.partition).copied().unwrap_or(0);
        assert!(
            m.offset >= committed_next,
            "partition {} offset {} was committed already (next {committed_next})",
            m.partition,
            m.offset
        );
        rest.insert((m.partition, m.offset), seq_of(&m));
        if rest.len().is_multiple_of(20) {
            consumer.commit_message(&m).await.unwrap();
        }
    }
    let mut all: Vec<usize> = processed.values().chain(rest.values()).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..100).collect::<Vec<_>>(),
        "each message read once across both"
    );
    assert_eq!(consumer.assignment().unwrap().len(), 2);

    // A different group starts from the beginning.
    let other = Consumer::new(&config, "sink-b").unwrap();
    other.subscribe(&["changes"]).unwrap();
    let m = other.poll(Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(m.offset, 0);
}

#[test]
fn invalid_configs_are_refused_before_connecting() {
    let mut config = sfsync_kafka::KafkaConfig::plaintext("");
    config
        .extra
        .insert("enable.idempotence".into(), "false".into());
    let err = Producer::new(
        &config,
        ProducerOptions {
            delivery_timeout_ms: 0,
            ..ProducerOptions::default()
        },
    )
    .err()
    .unwrap();
    let text = err.to_string();
    for key in [
        "bootstrap_servers",
        "extra.\"enable.idempotence\"",
        "delivery_timeout_ms",
    ] {
        assert!(text.contains(key), "{key} in {text}");
    }
    assert_eq!(err.class(), sfsync_core::ErrorClass::User);
}

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM: CA cert, server cert, key).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sfsync-kafka test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = server
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Terminates TLS on `listener` and forwards the plaintext to `upstream` (tansu 0.6 has no TLS
/// listener of its own), until the test ends.
async fn tls_proxy(
    listener: tokio::net::TcpListener,
    cert_pem: String,
    key_pem: String,
    upstream: String,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // A client that does not trust the CA aborts the handshake: nothing to forward.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            }
        });
    }
}

/// `security_protocol = "ssl"` with `ca_file` through the vendored OpenSSL: the client verifies
/// the broker's certificate (and refuses one its CA file does not vouch for).
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = test_pki();
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    let broker = Broker::start_advertising(dir.path(), tls_port);
    let proxy = tokio::spawn(tls_proxy(listener, cert_pem, key_pem, broker.bootstrap()));

    let mut config = sfsync_kafka::KafkaConfig::plaintext(format!("127.0.0.1:{tls_port}"));
    config.security_protocol = sfsync_kafka::SecurityProtocol::Ssl;
    config.ca_file = Some(dir.path().join("ca.pem"));
    Admin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::new("tls", 2, 1)])
        .await
        .unwrap();
    let producer = Producer::new(&config, ProducerOptions::default()).unwrap();
    let records: Vec<Record> = (0..100)
        .map(|i| Record::new("tls", format!("k{}", i % 5), payload("k", i, 500)))
        .collect();
    producer.send_batch(records).await.unwrap();
    let read = Consumer::read_all(&config, "tls", READ_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read.len(), 100);

    // Without the CA file the system trust store is used, which does not know our CA.
    config.ca_file = None;
    let untrusting = Producer::new(
        &config,
        ProducerOptions {
            delivery_timeout_ms: 3_000,
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    let err = untrusting
        .send_batch(vec![Record::new("tls", "k0", "{}")])
        .await
        .unwrap_err();
    assert!(matches!(err, KafkaError::Delivery { .. }), "{err}");
    proxy.abort();
}
