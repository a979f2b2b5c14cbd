//! Nasty inputs kept as regressions: each file in `tests/nasty/` is named
//! `<expected reason>--<what it is>` and must be refused with exactly that reason, quickly
//! and without a panic.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use sluice::decode::{decode, Context, Format, Limits};

#[test]
fn every_nasty_input_is_refused_with_its_reason() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nasty");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/nasty") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        let (reason, _) = name.split_once("--").expect("<reason>--<what>");
        let payload = std::fs::read(&path).expect("readable");
        let limits = Limits::default();
        let cx = Context {
            format: Format::Auto,
            metric: Some("m"),
            received_at: Utc.timestamp_millis_opt(1_790_000_000_000).unwrap(),
            limits: &limits,
        };
        let started = Instant::now();
        let got = decode(&payload, &cx);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{name} took {:?}",
            started.elapsed()
        );
        match got {
            Err(e) => assert_eq!(e.reason(), reason, "{name}: {e}"),
            Ok(r) => panic!("{name} was accepted: {r:?}"),
        }
        seen += 1;
    }
    assert!(seen >= 10, "the corpus is there ({seen} files)");
}
