//! Exactly once across a writer crash at the worst moment: after its COPY, before its
//! commit. The rows and the offsets are one transaction, so neither survives the crash,
//! and the restarted writer writes every reading once. On both storage paths.

mod common;

use common::{connect, free_port, offsets_stored, rows, storages, wait_rows, Gateway, Storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_between_copy_and_commit_loses_and_duplicates_nothing() {
    for path in storages("writer_killed_between_copy_and_commit") {
        killed_between_copy_and_commit(&path).await;
    }
}

async fn killed_between_copy_and_commit(path: &Storage) {
    let mut gateway = Gateway::configure(None);
    let own = path.database("crash");
    let on_path = path.env(&own);
    gateway.spawn(&["--role", "ingress"], &[]);
    let http = format!("127.0.0.1:{}", free_port());
    let mut envs = on_path.to_vec();
    envs.extend_from_slice(&[
        ("SLUICE_CRASH_BEFORE_COMMIT", "1"),
        ("SLUICE__HTTP__LISTEN", &http),
    ]);
    gateway.spawn(&["--role", "writer"], &envs);
    gateway.wait_ready();
    let db = connect(&own.url).await;
    let dev = format!("{}-crash", gateway.id);

    // Twenty QoS 1 readings, one message per line, each acknowledged (so in Kafka).
    let lines: String = (0..20)
        .map(|i| format!("{{\"value\": {i}, \"ts\": {}}}\n", 1_700_000_000_000i64 + i))
        .collect();
    assert!(
        gateway.publish_lines(&format!("sensors/{dev}/temp"), &lines),
        "all 20 acknowledged"
    );

    let status = gateway.wait_exit(1);
    assert!(
        !status.success(),
        "the writer aborted before its first commit: {status}"
    );
    assert!(gateway
        .logs()
        .contains("aborting after COPY, before commit"));
    assert!(
        rows(&db, &dev).await.is_empty(),
        "the copied rows died with the transaction"
    );

    let http = format!("127.0.0.1:{}", free_port());
    let mut envs = on_path.to_vec();
    envs.push(("SLUICE__HTTP__LISTEN", &http));
    gateway.spawn(&["--role", "writer"], &envs);
    let got = wait_rows(&db, &dev, 20).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let got_again = rows(&db, &dev).await;
    assert_eq!(got_again.len(), 20, "each reading once: {got:?}");
    let values: Vec<Option<f64>> = got_again.iter().map(|r| r.value).collect();
    assert_eq!(values, (0..20).map(|i| Some(i as f64)).collect::<Vec<_>>());
    let next = offsets_stored(&db, &gateway).await;
    assert_eq!(next, 20, "offsets cover the 20 records exactly");
}
