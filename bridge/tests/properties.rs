//! Property tests: what devices encode decodes to the same readings; no input makes a
//! decoder, the frame splitter or the topic matcher panic.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use sluice::decode::{decode, Context, Format, Limits};
use sluice::mapping::TopicTemplate;
use sluice::wire::next_frame;

fn now() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_790_000_000_000).unwrap()
}

fn run(
    payload: &[u8],
    format: Format,
    metric: Option<&str>,
) -> Result<Vec<sluice::record::Reading>, sluice::decode::DecodeError> {
    decode(
        payload,
        &Context {
            format,
            metric,
            received_at: now(),
            limits: &Limits::default(),
        },
    )
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e12f64..1e12,
        (-1_000_000i64..1_000_000).prop_map(|i| i as f64)
    ]
}

proptest! {
    #[test]
    fn single_readings_round_trip_in_json_and_cbor(
        value in finite(),
        offset_ms in -86_400_000i64..3_600_000,
        unit in proptest::option::of("[A-Za-z%/]{1,6}"),
        seq in proptest::option::of(any::<i64>()),
        cbor in any::<bool>(),
    ) {
        let ts = now().timestamp_millis() + offset_ms;
        let mut map = serde_json::json!({"value": value, "ts": ts});
        if let Some(u) = &unit { map["unit"] = u.clone().into(); }
        if let Some(s) = seq { map["seq"] = s.into(); }
        let payload = if cbor {
            let mut out = Vec::new();
            ciborium::into_writer(&map, &mut out).unwrap();
            out
        } else {
            serde_json::to_vec(&map).unwrap()
        };
        let r = run(&payload, Format::Auto, Some("m")).unwrap();
        prop_assert_eq!(r.len(), 1);
        prop_assert_eq!(r[0].value, Some(value));
        prop_assert_eq!(r[0].time.timestamp_millis(), ts);
        prop_assert_eq!(&r[0].unit, &unit);
        prop_assert_eq!(r[0].seq, seq);
    }

    #[test]
    fn senml_packs_round_trip_in_json_and_cbor(
        base in "[a-z]{0,8}:?",
        records in proptest::collection::vec(("[a-z]{1,8}", finite(), -86_400i64..3_600), 1..20),
        cbor in any::<bool>(),
    ) {
        let bt = 1_790_000_000i64;
        let payload = if cbor {
            use ciborium::Value;
            let int = |i: i64| Value::Integer(i.into());
            let items: Vec<Value> = records.iter().enumerate().map(|(i, (n, v, t))| {
                let mut m = vec![(int(0), Value::Text(n.clone())), (int(2), Value::Float(*v)), (int(6), int(*t))];
                if i == 0 {
                    m.push((int(-2), Value::Text(base.clone())));
                    m.push((int(-3), int(bt)));
                }
                Value::Map(m)
            }).collect();
            let mut out = Vec::new();
            ciborium::into_writer(&Value::Array(items), &mut out).unwrap();
            out
        } else {
            let items: Vec<serde_json::Value> = records.iter().enumerate().map(|(i, (n, v, t))| {
                let mut m = serde_json::json!({"n": n, "v": v, "t": t});
                if i == 0 { m["bn"] = base.clone().into(); m["bt"] = bt.into(); }
                m
            }).collect();
            serde_json::to_vec(&items).unwrap()
        };
        let r = run(&payload, Format::Auto, None).unwrap();
        prop_assert_eq!(r.len(), records.len());
        for (got, (n, v, t)) in r.iter().zip(&records) {
            prop_assert_eq!(&got.metric, &format!("{base}{n}"));
            prop_assert_eq!(got.value, Some(*v));
            prop_assert_eq!(got.time.timestamp(), bt + t);
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), f in 0usize..6) {
        let format = [Format::Auto, Format::Json, Format::Cbor, Format::Senml, Format::SenmlJson, Format::SenmlCbor][f];
        let _ = run(&bytes, format, Some("m"));
        let _ = run(&bytes, format, None);
    }

    #[test]
    fn frame_splitter_never_panics_and_only_takes_whole_frames(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let mut taken = 0;
        while let Ok(Some(frame)) = next_frame(&mut buf, 1024) {
            taken += frame.bytes.len();
            let _ = sluice::wire::read_publish(&frame, sluice::wire::Level::V311);
            let _ = sluice::wire::read_publish(&frame, sluice::wire::Level::V5);
            let _ = sluice::wire::read_connect(&frame);
        }
        prop_assert_eq!(taken + buf.len(), bytes.len());
    }

    #[test]
    fn topic_matcher_captures_what_it_was_built_from(
        device in "[A-Za-z0-9_-]{1,12}",
        metric in "[A-Za-z0-9_.:-]{1,12}",
        rest in proptest::collection::vec("[a-z0-9]{0,4}", 0..4),
    ) {
        let t = TopicTemplate::parse("site/{device_id}/{metric}/#", "{device_id}").unwrap();
        let mut topic = format!("site/{device}/{metric}");
        for r in &rest { topic.push('/'); topic.push_str(r); }
        let c = t.captures(&topic).unwrap();
        prop_assert_eq!(c.get("device_id"), Some(device.as_str()));
        prop_assert_eq!(c.get("metric"), Some(metric.as_str()));
        prop_assert_eq!(t.render_key(&c), device);
    }

    #[test]
    fn topic_matcher_never_panics(filter in "[a-z{}+#/_]{0,24}", topic in "[a-z/+#$]{0,24}") {
        if let Ok(t) = TopicTemplate::parse(&filter, "{device_id}") {
            let _ = t.captures(&topic);
        }
    }
}
