//! Payload formats on the real stack: SenML packs in CBOR and JSON become many rows, with
//! non-numeric values in their own columns.

mod common;

use common::{db, set, wait_rows, Gateway};

fn mosquitto_pub(gateway: &Gateway, args: &[&str]) {
    let status = gateway
        .mosquitto_pub()
        .args(args)
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub {args:?} got its PUBACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senml_cbor_pack_of_ten_records_lands_as_ten_rows() {
    use ciborium::Value;
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-cbor", gateway.id);
    let int = |i: i64| Value::Integer(i.into());
    // RFC 8428 CBOR labels: bn -2, bt -3, bu -4, n 0, v 2, t 6.
    let mut records = vec![Value::Map(vec![
        (int(-2), Value::Text("boiler:".into())),
        (int(-3), int(1_700_000_000)),
        (int(-4), Value::Text("Cel".into())),
        (int(0), Value::Text("temp".into())),
        (int(2), Value::Float(60.0)),
    ])];
    for i in 1..10 {
        records.push(Value::Map(vec![
            (int(0), Value::Text("temp".into())),
            (int(6), int(i)),
            (int(2), Value::Float(60.0 + i as f64 / 2.0)),
        ]));
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&Value::Array(records), &mut bytes).expect("cbor");
    let file = gateway.dir.path().join("pack.cbor");
    std::fs::write(&file, &bytes).expect("pack file");
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("devices/{dev}/senml"),
            "-f",
            file.to_str().expect("utf-8 path"),
        ],
    );
    let rows = wait_rows(&db, &dev, 10).await;
    assert_eq!(rows.len(), 10, "{rows:?}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.device_id, dev);
        assert_eq!(r.metric, "boiler:temp");
        assert_eq!(r.time_ms, 1_700_000_000_000 + i as i64 * 1000);
        assert_eq!(r.value, Some(60.0 + i as f64 / 2.0));
        assert_eq!(r.unit.as_deref(), Some("Cel"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senml_json_with_base_name_and_relative_times() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let (a, b) = (format!("{}-a", gateway.id), format!("{}-b", gateway.id));
    let pack = r#"[
        {"bn": "room1:", "bt": 1700000000.25, "n": "temp", "u": "Cel", "v": 21.5},
        {"n": "temp", "t": 30, "v": 21.75},
        {"n": "door", "t": 30, "vb": true},
        {"n": "label", "vs": "kitchen"},
        {"n": "raw", "vd": "AAH-_w"},
        {"n": "energy", "u": "J", "s": 1234.5}
    ]"#;
    mosquitto_pub(&gateway, &["-t", &format!("devices/{a}/senml"), "-m", pack]);
    // A second device's pack, with no base time: its times are relative to receipt.
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("devices/{b}/senml"),
            "-m",
            r#"[{"n":"x","v":1,"t":-60},{"n":"x","v":2}]"#,
        ],
    );
    let rows = wait_rows(&db, &gateway.id, 8).await;
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.device_id.clone(), r.metric.clone(), r.time_ms))
        .collect();
    let t0 = 1_700_000_000_250;
    assert_eq!(
        got[..6],
        [
            (a.clone(), "room1:door".into(), t0 + 30_000),
            (a.clone(), "room1:energy".into(), t0),
            (a.clone(), "room1:label".into(), t0),
            (a.clone(), "room1:raw".into(), t0),
            (a.clone(), "room1:temp".into(), t0),
            (a.clone(), "room1:temp".into(), t0 + 30_000),
        ]
    );
    // Relative times: one minute apart, ending near now.
    assert_eq!((&got[6].0, &got[7].0), (&b, &b));
    assert_eq!(got[7].2 - got[6].2, 60_000);
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        (now_ms - got[7].2).abs() < 60_000,
        "relative to receipt: {}",
        got[7].2
    );

    let typed = db
        .query(
            "SELECT metric, value, value_bool, value_text, value_data, sum, unit FROM readings \
             WHERE device_id = $1 ORDER BY metric, time",
            &[&a],
        )
        .await
        .expect("query");
    type Typed = (
        String,
        Option<f64>,
        Option<bool>,
        Option<String>,
        Option<Vec<u8>>,
        Option<f64>,
        Option<String>,
    );
    let typed: Vec<Typed> = typed
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        typed,
        vec![
            (
                "room1:door".into(),
                None,
                Some(true),
                None,
                None,
                None,
                None
            ),
            (
                "room1:energy".into(),
                None,
                None,
                None,
                None,
                Some(1234.5),
                Some("J".into())
            ),
            (
                "room1:label".into(),
                None,
                None,
                Some("kitchen".into()),
                None,
                None,
                None
            ),
            (
                "room1:raw".into(),
                None,
                None,
                None,
                Some(vec![0, 1, 0xfe, 0xff]),
                None,
                None
            ),
            (
                "room1:temp".into(),
                Some(21.5),
                None,
                None,
                None,
                None,
                Some("Cel".into())
            ),
            (
                "room1:temp".into(),
                Some(21.75),
                None,
                None,
                None,
                None,
                None
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_named_reasons_and_the_service_keeps_serving() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "unmapped"], "dead-letter");
    })));
    let db = db().await;
    let dev = format!("{}-lim", gateway.id);
    let big = format!(r#"{{"value": 1, "pad": "{}"}}"#, "x".repeat(70_000));
    let long_metric = "m".repeat(300);
    let pack: String = format!(
        "[{}]",
        (0..1001)
            .map(|i| format!(r#"{{"n":"n{i}","v":1}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (topic, body) in [
        (format!("sensors/{dev}/temp"), big.as_str()),
        (format!("sensors/{dev}/{long_metric}"), r#"{"value": 1}"#),
        (format!("sensors/{dev}/temp"), r#"{"value": 1, "ts": 1000}"#),
        (format!("devices/{dev}/senml"), pack.as_str()),
        (format!("nowhere/{dev}"), r#"{"value": 1}"#),
    ] {
        mosquitto_pub(&gateway, &["-t", &topic, "-m", body]);
    }
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("sensors/{dev}/temp"),
            "-m",
            r#"{"value": 7}"#,
        ],
    );
    let rows = wait_rows(&db, &dev, 1).await;
    assert_eq!(rows.len(), 1, "only the good reading lands: {rows:?}");
    assert_eq!(rows[0].value, Some(7.0));
    for reason in [
        "payload_too_large",
        "name_too_long",
        "time_out_of_window",
        "pack_too_large",
        "unmapped",
    ] {
        let sample = format!(r#"sluice_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(gateway.metric(&sample), 1.0, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_nul_is_refused_before_it_can_stall_the_writer() {
    // PostgreSQL text cannot hold U+0000; let through, the row would fail its COPY batch
    // on every retry and stop the writer for everyone.
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-nul", gateway.id);
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("devices/{dev}/senml"),
            "-m",
            r#"[{"n":"a\u0000b","v":1}]"#,
        ],
    );
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("sensors/{dev}/temp"),
            "-m",
            r#"{"value": 2, "unit": "C\u0000"}"#,
        ],
    );
    mosquitto_pub(
        &gateway,
        &[
            "-t",
            &format!("sensors/{dev}/temp"),
            "-m",
            r#"{"value": 3}"#,
        ],
    );
    let rows = wait_rows(&db, &dev, 1).await;
    assert_eq!(
        rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        vec![Some(3.0)]
    );
    assert_eq!(
        gateway.metric(r#"sluice_rejected_total{reason="nul_in_text"}"#),
        2.0
    );
}
