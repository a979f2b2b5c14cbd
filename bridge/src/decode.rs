//! Payload decoding: the bytes of one MQTT publish become readings. JSON and CBOR maps
//! with `value` (required number), `ts` (epoch ms or RFC 3339), `unit` and `seq`; the format
//! is detected from the first byte. Pure: no I/O, every failure is a named `DecodeError`.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::record::Reading;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty")]
    Empty,
    #[error("payload is neither a JSON nor a CBOR map")]
    UnknownFormat,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    #[error("`value` is not a finite number")]
    NotFinite,
    #[error("`ts` {0} is not a valid timestamp")]
    BadTimestamp(String),
    #[error("no metric: the topic has no {{metric}} segment and the payload no `metric` key")]
    NoMetric,
}

impl DecodeError {
    /// Short stable label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Cbor(_) => "invalid_cbor",
            DecodeError::NotFinite => "not_finite",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::NoMetric => "no_metric",
        }
    }
}

/// `ts` as devices send it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Millis(i64),
    Text(String),
}

/// A single-reading payload, the same shape in JSON and CBOR.
#[derive(Debug, Deserialize)]
struct SinglePayload {
    #[serde(deserialize_with = "number")]
    value: f64,
    ts: Option<Timestamp>,
    unit: Option<String>,
    seq: Option<i64>,
    metric: Option<String>,
}

/// Any numeric encoding as f64: compact CBOR encoders send 7 as an integer, not a float.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }
    d.deserialize_any(Number)
}

/// Decodes one payload. `metric` comes from the topic when the mapping names it;
/// `received_at` stands in for a missing `ts`.
pub fn decode(
    payload: &[u8],
    metric: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    let first = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(DecodeError::Empty)?;
    let single: SinglePayload = match first {
        b'{' => serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?,
        // CBOR major type 5 (map), any length encoding.
        0xa0..=0xbf => {
            ciborium::from_reader(payload).map_err(|e| DecodeError::Cbor(e.to_string()))?
        }
        _ => return Err(DecodeError::UnknownFormat),
    };
    if !single.value.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    let time = match single.ts {
        None => received_at,
        Some(Timestamp::Millis(ms)) => Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| DecodeError::BadTimestamp(ms.to_string()))?,
        Some(Timestamp::Text(s)) => DateTime::parse_from_rfc3339(&s)
            .map_err(|_| DecodeError::BadTimestamp(format!("{s:?}")))?
            .with_timezone(&Utc),
    };
    let metric = metric
        .map(str::to_owned)
        .or(single.metric)
        .ok_or(DecodeError::NoMetric)?;
    Ok(vec![Reading {
        metric,
        time,
        value: single.value,
        unit: single.unit,
        seq: single.seq,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
    }

    fn cbor(value: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn json_with_every_field() {
        let r = decode(
            br#"{"value": 21.5, "ts": 1700000001000, "unit": "Cel", "seq": 3}"#,
            Some("temp"),
            now(),
        )
        .unwrap();
        assert_eq!(
            r,
            vec![Reading {
                metric: "temp".into(),
                time: Utc.timestamp_millis_opt(1_700_000_001_000).unwrap(),
                value: 21.5,
                unit: Some("Cel".into()),
                seq: Some(3),
            }]
        );
    }

    #[test]
    fn missing_ts_uses_receive_time_and_rfc3339_is_accepted() {
        let r = decode(br#"{"value": 1}"#, Some("m"), now()).unwrap();
        assert_eq!(r[0].time, now());
        let r = decode(
            br#"{"value": 1, "ts": "2026-01-02T03:04:05.5+01:00"}"#,
            Some("m"),
            now(),
        )
        .unwrap();
        assert_eq!(r[0].time.to_rfc3339(), "2026-01-02T02:04:05.500+00:00");
    }

    #[test]
    fn cbor_map_decodes_like_json() {
        use ciborium::Value;
        let payload = cbor(&Value::Map(vec![
            (Value::Text("value".into()), Value::Float(2.25)),
            (Value::Text("unit".into()), Value::Text("%".into())),
            (
                Value::Text("ts".into()),
                Value::Integer(1_700_000_002_000i64.into()),
            ),
            (Value::Text("seq".into()), Value::Integer(9.into())),
        ]));
        let r = decode(&payload, Some("hum"), now()).unwrap();
        assert_eq!(r[0].value, 2.25);
        assert_eq!(r[0].seq, Some(9));
        assert_eq!(r[0].time.timestamp_millis(), 1_700_000_002_000);
        assert_eq!(r[0].unit.as_deref(), Some("%"));
        // Compact encoders send whole numbers as CBOR integers.
        let payload = cbor(&Value::Map(vec![(
            Value::Text("value".into()),
            Value::Integer((-7).into()),
        )]));
        assert_eq!(decode(&payload, Some("m"), now()).unwrap()[0].value, -7.0);
    }

    #[test]
    fn bad_payloads_are_named() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b"hello", "unknown_format"),
            (b"{\"value\": ", "invalid_json"),
            (b"{\"unit\": \"C\"}", "invalid_json"),
            (&[0xa1, 0x65], "invalid_cbor"),
            (b"{\"value\": 1, \"ts\": \"yesterday\"}", "bad_timestamp"),
        ];
        for (payload, reason) in cases {
            let err = decode(payload, Some("m"), now()).unwrap_err();
            assert_eq!(err.reason(), reason, "{payload:?}: {err}");
        }
        assert_eq!(
            decode(b"{\"value\": 1}", None, now()).unwrap_err(),
            DecodeError::NoMetric
        );
    }

    #[test]
    fn cbor_non_finite_value_is_refused() {
        use ciborium::Value;
        let payload = cbor(&Value::Map(vec![(
            Value::Text("value".into()),
            Value::Float(f64::NAN),
        )]));
        assert_eq!(
            decode(&payload, Some("m"), now()).unwrap_err(),
            DecodeError::NotFinite
        );
    }
}
