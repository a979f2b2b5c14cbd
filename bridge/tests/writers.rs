//! Writers that cover for each other: two writers of one group share the partitions, the
//! survivor takes a SIGKILLed writer's partitions over within its lease, a writer that
//! joins gets its share, and one that stops hands its share over at once. A writer started
//! before its topic exists takes the partitions once they appear (tansu cannot add
//! partitions to a topic: CreatePartitions is unsupported; the writer finds partitions the
//! same way in both cases, by asking Kafka every beat). Every reading is in the database
//! exactly once, and the offsets account for every record.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{db, free_port, http_get, metric_in, offsets_stored, set, wait_for, Gateway};
use tokio::net::{TcpListener, TcpStream};

const LEASE_MS: u64 = 1000;
const DEVICES: usize = 8;

/// One writer process of the test's group, with a metrics port of its own.
struct Writer {
    child: usize,
    port: u16,
}

impl Writer {
    fn start(gateway: &mut Gateway) -> Writer {
        Writer::start_with(gateway, &[])
    }

    fn start_with(gateway: &mut Gateway, envs: &[(&str, &str)]) -> Writer {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut envs = envs.to_vec();
        envs.push(("SLUICE__HTTP__LISTEN", &listen));
        let child = gateway.spawn(&["--role", "writer"], &envs);
        Writer { child, port }
    }

    /// `/health/ready`: its status and body.
    fn ready(&self) -> (u16, String) {
        http_get(self.port, "/health/ready")
    }

    /// `sluice_writer_partitions`; None until the writer exports it.
    fn partitions(&self) -> Option<f64> {
        let (status, page) = http_get(self.port, "/metrics");
        let name = "sluice_writer_partitions";
        (status == 200 && page.contains(name)).then(|| metric_in(&page, name))
    }
}

/// Waits until each writer holds the number of partitions given; returns how long it took.
fn wait_shares(shares: &[(&Writer, f64)], what: &str) -> Duration {
    let start = Instant::now();
    wait_for(Duration::from_secs(30), what, || {
        shares.iter().all(|(w, n)| w.partitions() == Some(*n))
    });
    start.elapsed()
}

/// Ten QoS 1 readings from each device, at times after `round`'s, all acknowledged, then
/// waits until every round so far is in the database (rounds count from 0).
async fn write_round(gateway: &Gateway, db: &tokio_postgres::Client, round: i64) {
    for d in 0..DEVICES {
        let lines: String = (0..10)
            .map(|i| {
                let ts = 1_700_000_000_000i64 + round * 1000 + i;
                format!("{{\"value\": {i}, \"ts\": {ts}}}\n")
            })
            .collect();
        let topic = format!("sensors/{}-w{d}/temp", gateway.id);
        assert!(gateway.publish_lines(&topic, &lines), "round {round} acked");
    }
    let rows = (round + 1) * 10 * DEVICES as i64;
    wait_count(db, &devices(gateway), rows).await;
}

/// The prefix of the test's device ids.
fn devices(gateway: &Gateway) -> String {
    format!("{}-w", gateway.id)
}

async fn count(db: &tokio_postgres::Client, prefix: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM readings WHERE starts_with(device_id, $1)",
        &[&prefix],
    )
    .await
    .expect("count")
    .get(0)
}

async fn wait_count(db: &tokio_postgres::Client, prefix: &str, n: i64) {
    let start = Instant::now();
    while count(db, prefix).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} rows of {prefix} not written: {}",
            count(db, prefix).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test's gateway: four partitions to share, writers dealt them as `coordination` says.
fn four_partitions(lease_ms: u64, coordination: &'static str) -> Gateway {
    Gateway::configure(Some(Box::new(move |c| {
        set(c, &["kafka", "partitions"], 4);
        set(c, &["writer", "lease_ms"], lease_ms as i64);
        set(c, &["writer", "coordination"], coordination);
    })))
}

/// Exactly once: `n` readings of the test's devices, each once, and the offsets account
/// for every record (one record per reading).
async fn stored_once(db: &tokio_postgres::Client, gateway: &Gateway, n: i64) {
    // Time for a second copy to show, were one written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(db, &devices(gateway)).await, n, "every reading once");
    let next = offsets_stored(db, gateway).await;
    assert_eq!(next, n, "offsets cover the {n} records exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_share_partitions_and_take_over_from_each_other() {
    let mut gateway = four_partitions(LEASE_MS, "lease");
    // The first writer starts before the ingress has created the readings topic.
    let a = Writer::start(&mut gateway);
    wait_for(
        Duration::from_secs(30),
        "the writer to find no partitions",
        || {
            gateway
                .logs()
                .contains("the readings topics have no partitions yet")
        },
    );
    assert_eq!(a.partitions(), None, "no share before the topic exists");
    gateway.spawn(&["--role", "ingress"], &[]);
    gateway.wait_ready();
    wait_shares(&[(&a, 4.0)], "the writer to take the topic's partitions");
    let b = Writer::start(&mut gateway);
    wait_shares(
        &[(&a, 2.0), (&b, 2.0)],
        "two writers with two partitions each",
    );
    let db = db().await;

    write_round(&gateway, &db, 0).await;

    // A writer dies without a word: the other takes its partitions once its lease is out.
    gateway.signal(b.child, "KILL");
    let took = wait_shares(&[(&a, 4.0)], "the survivor to take all four partitions");
    eprintln!("takeover after SIGKILL: {took:?} (lease {LEASE_MS} ms)");
    assert!(
        took >= Duration::from_millis(LEASE_MS / 2),
        "not before the dead writer's lease ran out: {took:?}"
    );
    write_round(&gateway, &db, 1).await;

    // A writer that joins gets its share; one that stops hands it back at once.
    let c = Writer::start(&mut gateway);
    wait_shares(&[(&a, 2.0), (&c, 2.0)], "the new writer to get its share");
    write_round(&gateway, &db, 2).await;
    gateway.signal(c.child, "TERM");
    let took = wait_shares(&[(&a, 4.0)], "the stopped writer's share to move");
    eprintln!("takeover after SIGTERM: {took:?}");
    let status = gateway.wait_exit(c.child);
    assert!(status.success(), "the stopped writer exits 0: {status}");

    stored_once(&db, &gateway, 240).await;
    let group = format!("writer-{}", gateway.id);
    // The stopped writer gave its lease up; the killed one's has run out.
    let alive: i64 = db
        .query_one(
            "SELECT count(*) FROM sluice_writers WHERE group_id = $1 \
             AND renewed_at >= now() - lease",
            &[&group],
        )
        .await
        .expect("members")
        .get(0);
    assert_eq!(alive, 1, "only the first writer holds a lease");
}

/// `writer.coordination = "kafka"`: Kafka's group protocol deals the partitions instead of
/// the lease. tansu 0.6 rebalances when a member joins or leaves (not when one is killed,
/// which is why the lease is the default), so that is what this shows: a joining writer
/// gets its share, a stopped one hands it back, and every reading is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_protocol_deals_the_partitions_when_asked() {
    let mut gateway = four_partitions(6000, "kafka");
    gateway.spawn(&["--role", "ingress"], &[]);
    let a = Writer::start(&mut gateway);
    gateway.wait_ready();
    wait_shares(&[(&a, 4.0)], "the first writer to be dealt every partition");
    let db = db().await;
    write_round(&gateway, &db, 0).await;

    let b = Writer::start(&mut gateway);
    let took = wait_shares(&[(&a, 2.0), (&b, 2.0)], "Kafka to deal two partitions each");
    eprintln!("rebalance after a join: {took:?}");
    write_round(&gateway, &db, 1).await;

    gateway.signal(b.child, "TERM");
    let took = wait_shares(&[(&a, 4.0)], "the stopped writer's share to move");
    eprintln!("rebalance after SIGTERM: {took:?}");
    assert!(
        gateway.wait_exit(b.child).success(),
        "the stopped writer exits 0"
    );
    write_round(&gateway, &db, 2).await;

    stored_once(&db, &gateway, 240).await;
    let group = format!("writer-{}", gateway.id);
    let leases: i64 = db
        .query_one(
            "SELECT count(*) FROM sluice_writers WHERE group_id = $1",
            &[&group],
        )
        .await
        .expect("members")
        .get(0);
    assert_eq!(leases, 0, "no lease is taken when Kafka deals");
}

/// A TCP relay to PostgreSQL that the test can cut as a network partition would: while cut
/// it passes no byte either way and holds every connection, old and new, open and
/// unanswered, so the writer's renewals hang rather than fail; once restored it closes
/// what it held, and new connections go through again.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Relay {
    async fn to(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let cut = flag.clone();
                tokio::spawn(async move {
                    if !cut.load(Ordering::SeqCst) {
                        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            _ = until(&cut, true) => {}
                        }
                        until(&cut, false).await;
                        return;
                    }
                    until(&cut, false).await;
                });
            }
        });
        Relay { port, cut }
    }
}

async fn until(flag: &AtomicBool, value: bool) {
    while flag.load(Ordering::SeqCst) != value {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A writer cut off from the database gives its share up before its lease runs out and
/// says why on `/health/ready`; the other writer takes the share over and writes what
/// arrives meanwhile; once the database is back the first writer gets its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_loses_the_database_hands_its_share_over() {
    let mut gateway = four_partitions(LEASE_MS, "lease");
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let parsed: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
    let pg_port = parsed.get_ports().first().copied().unwrap_or(5432);
    let relay = Relay::to(pg_port).await;
    let relayed = url.replacen(&format!(":{pg_port}/"), &format!(":{}/", relay.port), 1);
    assert_ne!(relayed, url, "DATABASE_URL names its port");

    gateway.spawn(&["--role", "ingress"], &[]);
    let a = Writer::start_with(&mut gateway, &[("DATABASE_URL", &relayed)]);
    let b = Writer::start(&mut gateway);
    gateway.wait_ready();
    wait_shares(
        &[(&a, 2.0), (&b, 2.0)],
        "two writers with two partitions each",
    );
    let db = db().await;
    write_round(&gateway, &db, 0).await;

    relay.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    wait_shares(
        &[(&a, 0.0), (&b, 4.0)],
        "the cut-off writer's share to move",
    );
    let moved = cut_at.elapsed();
    eprintln!("share moved {moved:?} after the cut (lease {LEASE_MS} ms)");
    wait_for(
        Duration::from_secs(10),
        "the cut-off writer to be unready",
        || {
            let (status, body) = a.ready();
            status == 503 && body.contains("database (writer lease) unreachable")
        },
    );
    assert_eq!(b.ready().0, 200, "the other writer stays ready");
    write_round(&gateway, &db, 1).await;

    relay.cut.store(false, Ordering::SeqCst);
    wait_shares(
        &[(&a, 2.0), (&b, 2.0)],
        "the returning writer to get its share back",
    );
    wait_for(
        Duration::from_secs(10),
        "the returning writer to be ready",
        || a.ready().0 == 200,
    );
    write_round(&gateway, &db, 2).await;
    stored_once(&db, &gateway, 240).await;
}
