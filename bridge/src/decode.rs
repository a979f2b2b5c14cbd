//! Payload decoding: the bytes of one MQTT publish become readings. Single readings (a JSON
//! object or CBOR map with `value`, `ts`, `unit`, `seq`) and SenML packs (RFC 8428, JSON
//! or CBOR with integer labels). Pure: no I/O; every refusal is a named `DecodeError`.

use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;

use crate::record::Reading;

/// How a payload is encoded; `Auto` looks at the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Auto,
    Json,
    Cbor,
    /// SenML, JSON or CBOR told apart by the first byte.
    Senml,
    #[serde(rename = "senml+json")]
    SenmlJson,
    #[serde(rename = "senml+cbor")]
    SenmlCbor,
}

impl Format {
    /// The format an MQTT 5 content type names, if Sluice knows it.
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next()?.trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Some(Format::Json),
            "application/cbor" => Some(Format::Cbor),
            "application/senml+json" => Some(Format::SenmlJson),
            "application/senml+cbor" => Some(Format::SenmlCbor),
            _ => None,
        }
    }

    /// The content type that names this format, for the formats one names.
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            Format::Json => Some("application/json"),
            Format::Cbor => Some("application/cbor"),
            Format::SenmlJson => Some("application/senml+json"),
            Format::SenmlCbor => Some("application/senml+cbor"),
            Format::Auto | Format::Senml => None,
        }
    }
}

/// Protection against payloads that would hurt everyone else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_records_per_pack: usize,
    /// Largest Kafka record one publish may become: what a payload expands to (SenML base
    /// fields copied into every record, text escaped as JSON), not what it was.
    pub max_record_bytes: usize,
    /// Longest device id or metric name, in bytes.
    pub max_name_bytes: usize,
    /// How far a reading's time may lie before / after the receive time.
    pub max_age_s: i64,
    pub max_future_s: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_payload_bytes: 65536,
            max_records_per_pack: 1000,
            // Under librdkafka's default message.max.bytes (1,000,000).
            max_record_bytes: 900_000,
            max_name_bytes: 256,
            max_age_s: 315_576_000,
            max_future_s: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty")]
    Empty,
    #[error("payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("payload is neither JSON nor CBOR")]
    UnknownFormat,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    #[error("invalid SenML: {0}")]
    Senml(String),
    #[error("a number is not finite")]
    NotFinite,
    #[error("`ts` {0} is not a valid timestamp")]
    BadTimestamp(String),
    #[error("time {0} is outside the accepted window around the receive time")]
    TimeOutOfWindow(DateTime<Utc>),
    #[error("no metric: the topic has no {{metric}} segment and the payload no `metric` key")]
    NoMetric,
    #[error("name of {0} bytes is longer than the limit")]
    NameTooLong(usize),
    #[error("pack of {0} records exceeds the limit")]
    PackTooLarge(usize),
    #[error("the readings would make a Kafka record of more than {0} bytes")]
    RecordTooLarge(usize),
    #[error("text contains a NUL character, which the database cannot store")]
    NulInText,
    #[error("the payload format indicator says UTF-8 and the payload is not")]
    NotUtf8,
}

impl DecodeError {
    /// Short stable label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(_) => "payload_too_large",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Cbor(_) => "invalid_cbor",
            DecodeError::Senml(_) => "invalid_senml",
            DecodeError::NotFinite => "not_finite",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::TimeOutOfWindow(_) => "time_out_of_window",
            DecodeError::NoMetric => "no_metric",
            DecodeError::NameTooLong(_) => "name_too_long",
            DecodeError::PackTooLarge(_) => "pack_too_large",
            DecodeError::RecordTooLarge(_) => "record_too_large",
            DecodeError::NulInText => "nul_in_text",
            DecodeError::NotUtf8 => "payload_not_utf8",
        }
    }
}

/// What decoding needs besides the bytes.
pub struct Context<'a> {
    pub format: Format,
    /// From the topic, when the mapping names a `{metric}` segment.
    pub metric: Option<&'a str>,
    /// Stands in for a missing time; SenML relative times count from it.
    pub received_at: DateTime<Utc>,
    pub limits: &'a Limits,
}

pub fn decode(payload: &[u8], cx: &Context<'_>) -> Result<Vec<Reading>, DecodeError> {
    if payload.len() > cx.limits.max_payload_bytes {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let first = *payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(DecodeError::Empty)?;
    let format = match (cx.format, first) {
        (Format::Auto, b'{') => Format::Json,
        (Format::Auto, b'[') | (Format::Senml, b'[') => Format::SenmlJson,
        (Format::Auto, 0xa0..=0xbf) => Format::Cbor,
        (Format::Auto, 0x80..=0x9f) | (Format::Senml, 0x80..=0x9f) => Format::SenmlCbor,
        (Format::Auto | Format::Senml, _) => return Err(DecodeError::UnknownFormat),
        (known, _) => known,
    };
    let readings = match format {
        Format::Json => vec![single(
            serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?,
            cx,
        )?],
        Format::Cbor => vec![single(
            ciborium::from_reader(payload).map_err(|e| DecodeError::Cbor(e.to_string()))?,
            cx,
        )?],
        Format::SenmlJson => senml(senml_json(payload, cx.limits)?, cx)?,
        _ => senml(senml_cbor(payload, cx.limits)?, cx)?,
    };
    if let [one] = &readings[..] {
        check_expansion(one.json_len(), cx.limits)?;
    }
    for r in &readings {
        check_name(&r.metric, cx.limits)?;
        // PostgreSQL text cannot hold U+0000: such a row would fail its batch forever.
        for text in [&r.unit, &r.value_text].into_iter().flatten() {
            if text.contains('\0') {
                return Err(DecodeError::NulInText);
            }
        }
        let (earliest, latest) = (
            cx.received_at - Duration::seconds(cx.limits.max_age_s),
            cx.received_at + Duration::seconds(cx.limits.max_future_s),
        );
        if r.time < earliest || r.time > latest {
            return Err(DecodeError::TimeOutOfWindow(r.time));
        }
    }
    Ok(readings)
}

fn check_expansion(bytes: usize, limits: &Limits) -> Result<(), DecodeError> {
    if bytes > limits.max_record_bytes {
        return Err(DecodeError::RecordTooLarge(limits.max_record_bytes));
    }
    Ok(())
}

/// A device id or metric: within the length limit and storable as text.
pub fn check_name(name: &str, limits: &Limits) -> Result<(), DecodeError> {
    if name.len() > limits.max_name_bytes {
        return Err(DecodeError::NameTooLong(name.len()));
    }
    if name.contains('\0') {
        return Err(DecodeError::NulInText);
    }
    Ok(())
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

fn single(p: SinglePayload, cx: &Context<'_>) -> Result<Reading, DecodeError> {
    if !p.value.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    let time = match p.ts {
        None => cx.received_at,
        Some(Timestamp::Millis(ms)) => Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| DecodeError::BadTimestamp(ms.to_string()))?,
        Some(Timestamp::Text(s)) => DateTime::parse_from_rfc3339(&s)
            .map_err(|_| DecodeError::BadTimestamp(format!("{s:?}")))?
            .with_timezone(&Utc),
    };
    let metric = cx
        .metric
        .map(str::to_owned)
        .or(p.metric)
        .ok_or(DecodeError::NoMetric)?;
    Ok(Reading {
        metric,
        time,
        value: Some(p.value),
        unit: p.unit,
        seq: p.seq,
        ..Reading::default()
    })
}

/// One SenML record with every label it may carry (RFC 8428, section 4).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SenmlRecord {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    bs: Option<f64>,
    bver: Option<i64>,
    n: Option<String>,
    u: Option<String>,
    v: Option<f64>,
    vs: Option<String>,
    vb: Option<bool>,
    /// Base64url text in JSON, a byte string in CBOR.
    #[serde(skip)]
    vd: Option<Vec<u8>>,
    #[serde(rename = "vd")]
    vd_text: Option<String>,
    s: Option<f64>,
    t: Option<f64>,
    ut: Option<f64>,
}

fn senml_json(payload: &[u8], limits: &Limits) -> Result<Vec<SenmlRecord>, DecodeError> {
    let records: Vec<SenmlRecord> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    check_pack(records.len(), limits)?;
    records
        .into_iter()
        .map(|mut r| {
            if let Some(text) = r.vd_text.take() {
                // RFC 8428 says base64url without padding; accept padded too.
                let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let bytes = engine
                    .decode(text.trim_end_matches('='))
                    .map_err(|e| DecodeError::Senml(format!("vd is not base64url: {e}")))?;
                r.vd = Some(bytes);
            }
            Ok(r)
        })
        .collect()
}

fn check_pack(n: usize, limits: &Limits) -> Result<(), DecodeError> {
    if n > limits.max_records_per_pack {
        return Err(DecodeError::PackTooLarge(n));
    }
    Ok(())
}

/// SenML CBOR: an array of maps keyed by the integer labels of RFC 8428, section 6.
fn senml_cbor(payload: &[u8], limits: &Limits) -> Result<Vec<SenmlRecord>, DecodeError> {
    use ciborium::Value;
    let cbor_err = |what: &str| DecodeError::Senml(what.to_owned());
    let value: Value =
        ciborium::from_reader(payload).map_err(|e| DecodeError::Cbor(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(cbor_err("a pack is a CBOR array"));
    };
    check_pack(items.len(), limits)?;
    let text = |v: Value, label: &str| match v {
        Value::Text(s) => Ok(s),
        _ => Err(DecodeError::Senml(format!("label {label} must be text"))),
    };
    let num = |v: Value, label: &str| match v {
        Value::Float(f) => Ok(f),
        Value::Integer(i) => Ok(i128::from(i) as f64),
        _ => Err(DecodeError::Senml(format!(
            "label {label} must be a number"
        ))),
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Map(entries) = item else {
                return Err(cbor_err("a record is a CBOR map"));
            };
            let mut r = SenmlRecord::default();
            for (k, v) in entries {
                let label = match k {
                    Value::Integer(i) => i128::from(i),
                    Value::Text(t) => {
                        return Err(DecodeError::Senml(format!("text label {t:?} in CBOR")))
                    }
                    _ => return Err(cbor_err("labels are integers")),
                };
                match label {
                    -1 => r.bver = Some(num(v, "bver")? as i64),
                    -2 => r.bn = Some(text(v, "bn")?),
                    -3 => r.bt = Some(num(v, "bt")?),
                    -4 => r.bu = Some(text(v, "bu")?),
                    -5 => r.bv = Some(num(v, "bv")?),
                    -6 => r.bs = Some(num(v, "bs")?),
                    0 => r.n = Some(text(v, "n")?),
                    1 => r.u = Some(text(v, "u")?),
                    2 => r.v = Some(num(v, "v")?),
                    3 => r.vs = Some(text(v, "vs")?),
                    4 => match v {
                        Value::Bool(b) => r.vb = Some(b),
                        _ => return Err(cbor_err("label vb must be a boolean")),
                    },
                    5 => r.s = Some(num(v, "s")?),
                    6 => r.t = Some(num(v, "t")?),
                    7 => r.ut = Some(num(v, "ut")?),
                    8 => match v {
                        Value::Bytes(b) => r.vd = Some(b),
                        _ => return Err(cbor_err("label vd must be a byte string")),
                    },
                    other => return Err(DecodeError::Senml(format!("unknown label {other}"))),
                }
            }
            Ok(r)
        })
        .collect()
}

/// Resolves a pack (RFC 8428, section 4.6): base fields carry over to later records;
/// names are base name + name; times below 2^28 are relative to now.
fn senml(records: Vec<SenmlRecord>, cx: &Context<'_>) -> Result<Vec<Reading>, DecodeError> {
    if records.is_empty() {
        return Err(DecodeError::Senml("empty pack".into()));
    }
    let (mut bn, mut bt, mut bu, mut bv, mut bs) = (String::new(), 0.0, None, 0.0, 0.0);
    let mut out: Vec<Reading> = Vec::with_capacity(records.len());
    // What the readings will take as JSON, checked as they are made: base fields are
    // copied into every record, so a small pack can expand a thousandfold.
    let mut expanded = 0;
    for r in records {
        if r.bver.is_some_and(|v| v > 10) {
            return Err(DecodeError::Senml("unsupported SenML version".into()));
        }
        bn = r.bn.unwrap_or(bn);
        bt = r.bt.unwrap_or(bt);
        bu = r.bu.or(bu);
        bv = r.bv.unwrap_or(bv);
        bs = r.bs.unwrap_or(bs);
        let name = r.n.unwrap_or_default();
        check_expansion(expanded + bn.len() + name.len(), cx.limits)?;
        let metric = format!("{bn}{name}");
        if metric.is_empty() {
            return Err(DecodeError::Senml("a record has no name".into()));
        }
        let value = r.v.map(|v| bv + v);
        let sum = r.s.map(|s| bs + s);
        if value.is_none() && sum.is_none() && r.vs.is_none() && r.vb.is_none() && r.vd.is_none() {
            return Err(DecodeError::Senml(format!(
                "record {metric:?} has no value"
            )));
        }
        let t = bt + r.t.unwrap_or(0.0);
        for n in [t, value.unwrap_or(0.0), sum.unwrap_or(0.0)] {
            if !n.is_finite() {
                return Err(DecodeError::NotFinite);
            }
        }
        let time = if t.abs() < 268_435_456.0 {
            cx.received_at + seconds(t)?
        } else {
            DateTime::<Utc>::UNIX_EPOCH + seconds(t)?
        };
        out.push(Reading {
            metric,
            time,
            value,
            value_bool: r.vb,
            value_text: r.vs,
            value_data: r.vd,
            sum,
            unit: r.u.or_else(|| bu.clone()),
            seq: None,
        });
        expanded += out.last().map_or(0, Reading::json_len);
        check_expansion(expanded, cx.limits)?;
    }
    Ok(out)
}

/// Seconds (SenML's unit of time) to a duration at microsecond precision, as stored.
fn seconds(t: f64) -> Result<Duration, DecodeError> {
    let micros = (t * 1e6).round();
    if micros.abs() > 1e17 {
        return Err(DecodeError::BadTimestamp(t.to_string()));
    }
    Ok(Duration::microseconds(micros as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
    }

    fn run(
        payload: &[u8],
        format: Format,
        metric: Option<&str>,
    ) -> Result<Vec<Reading>, DecodeError> {
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

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    fn int(i: i64) -> Value {
        Value::Integer(i.into())
    }

    #[test]
    fn json_with_every_field() {
        let r = run(
            br#"{"value": 21.5, "ts": 1700000001000, "unit": "Cel", "seq": 3}"#,
            Format::Auto,
            Some("temp"),
        )
        .unwrap();
        assert_eq!(
            r,
            vec![Reading {
                metric: "temp".into(),
                time: Utc.timestamp_millis_opt(1_700_000_001_000).unwrap(),
                value: Some(21.5),
                unit: Some("Cel".into()),
                seq: Some(3),
                ..Reading::default()
            }]
        );
    }

    #[test]
    fn missing_ts_uses_receive_time_and_rfc3339_is_accepted() {
        let r = run(br#"{"value": 1}"#, Format::Auto, Some("m")).unwrap();
        assert_eq!(r[0].time, now());
        let r = run(
            br#"{"value": 1, "ts": "2023-11-14T23:13:20.5+01:00"}"#,
            Format::Json,
            Some("m"),
        )
        .unwrap();
        assert_eq!(r[0].time.to_rfc3339(), "2023-11-14T22:13:20.500+00:00");
    }

    #[test]
    fn cbor_map_decodes_like_json() {
        let payload = cbor(&Value::Map(vec![
            (Value::Text("value".into()), Value::Float(2.25)),
            (Value::Text("unit".into()), Value::Text("%".into())),
            (Value::Text("ts".into()), int(1_700_000_002_000)),
            (Value::Text("seq".into()), int(9)),
        ]));
        let r = run(&payload, Format::Auto, Some("hum")).unwrap();
        assert_eq!(r[0].value, Some(2.25));
        assert_eq!(r[0].seq, Some(9));
        assert_eq!(r[0].time.timestamp_millis(), 1_700_000_002_000);
        assert_eq!(r[0].unit.as_deref(), Some("%"));
        // Compact encoders send whole numbers as CBOR integers.
        let payload = cbor(&Value::Map(vec![(Value::Text("value".into()), int(-7))]));
        assert_eq!(
            run(&payload, Format::Cbor, Some("m")).unwrap()[0].value,
            Some(-7.0)
        );
    }

    #[test]
    fn bad_payloads_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty"),
            (b"hello", "unknown_format"),
            (b"{\"value\": ", "invalid_json"),
            (b"{\"unit\": \"C\"}", "invalid_json"),
            (&[0xa1, 0x65], "invalid_cbor"),
            (b"{\"value\": 1, \"ts\": \"yesterday\"}", "bad_timestamp"),
            (b"{\"value\": 1, \"ts\": 1000}", "time_out_of_window"),
        ];
        for (payload, reason) in cases {
            let err = run(payload, Format::Auto, Some("m")).unwrap_err();
            assert_eq!(err.reason(), reason, "{payload:?}: {err}");
        }
        assert_eq!(
            run(b"{\"value\": 1}", Format::Auto, None).unwrap_err(),
            DecodeError::NoMetric
        );
    }

    #[test]
    fn cbor_non_finite_value_is_refused() {
        let payload = cbor(&Value::Map(vec![(
            Value::Text("value".into()),
            Value::Float(f64::NAN),
        )]));
        assert_eq!(
            run(&payload, Format::Auto, Some("m")).unwrap_err(),
            DecodeError::NotFinite
        );
    }

    #[test]
    fn senml_json_resolves_base_fields_and_relative_times() {
        // RFC 8428 section 5.1.2's shape: base name, base time, base unit, relative times.
        let pack = br#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.700000000e9,"bu":"Cel","v":23.1,"n":"temp"},
            {"n":"temp","t":10,"v":23.5},
            {"n":"door","vb":true,"t":10},
            {"n":"label","vs":"kitchen"},
            {"n":"raw","vd":"AAH-_w"},
            {"n":"energy","u":"J","s":42.5,"bs":100}
        ]"#;
        let r = run(pack, Format::Auto, None).unwrap();
        let base = "urn:dev:ow:10e2073a01080063:";
        assert_eq!(r.len(), 6);
        assert_eq!(r[0].metric, format!("{base}temp"));
        assert_eq!(r[0].time.timestamp(), 1_700_000_000);
        assert_eq!(
            (r[0].value, r[0].unit.as_deref()),
            (Some(23.1), Some("Cel"))
        );
        assert_eq!(r[1].time.timestamp(), 1_700_000_010);
        assert_eq!(r[2].value_bool, Some(true));
        assert_eq!(r[3].value_text.as_deref(), Some("kitchen"));
        assert_eq!(r[4].value_data, Some(vec![0, 1, 0xfe, 0xff]));
        assert_eq!((r[5].sum, r[5].unit.as_deref()), (Some(142.5), Some("J")));
    }

    #[test]
    fn senml_times_below_2_pow_28_are_relative_to_now() {
        let r = run(
            br#"[{"n":"a","v":1,"t":-5},{"n":"b","v":2}]"#,
            Format::SenmlJson,
            None,
        )
        .unwrap();
        assert_eq!(r[0].time, now() - Duration::seconds(5));
        assert_eq!(r[1].time, now());
    }

    #[test]
    fn senml_cbor_uses_integer_labels() {
        let pack = cbor(&Value::Array(vec![
            Value::Map(vec![
                (int(-2), Value::Text("dev:".into())),
                (int(-3), int(1_700_000_000)),
                (int(0), Value::Text("t".into())),
                (int(2), Value::Float(1.5)),
            ]),
            Value::Map(vec![
                (int(0), Value::Text("t".into())),
                (int(6), int(1)),
                (int(2), int(2)),
                (int(1), Value::Text("Cel".into())),
            ]),
            Value::Map(vec![
                (int(0), Value::Text("blob".into())),
                (int(8), Value::Bytes(vec![1, 2])),
            ]),
        ]));
        let r = run(&pack, Format::Senml, None).unwrap();
        assert_eq!(
            r.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
            ["dev:t", "dev:t", "dev:blob"]
        );
        assert_eq!(r[1].time.timestamp(), 1_700_000_001);
        assert_eq!((r[1].value, r[1].unit.as_deref()), (Some(2.0), Some("Cel")));
        assert_eq!(r[2].value_data, Some(vec![1, 2]));
    }

    #[test]
    fn senml_refusals_are_named() {
        let limits = Limits {
            max_records_per_pack: 2,
            max_name_bytes: 8,
            ..Limits::default()
        };
        let cx = |format| Context {
            format,
            metric: None,
            received_at: now(),
            limits: &limits,
        };
        let cases: [(&[u8], &str); 6] = [
            (br#"[]"#, "invalid_senml"),
            (br#"[{"n":"a"}]"#, "invalid_senml"),
            (br#"[{"v":1}]"#, "invalid_senml"),
            (
                br#"[{"n":"a","v":1},{"n":"b","v":1},{"n":"c","v":1}]"#,
                "pack_too_large",
            ),
            (br#"[{"n":"much-too-long","v":1}]"#, "name_too_long"),
            (br#"[{"n":"a","v":1,"zz":2}]"#, "invalid_json"),
        ];
        for (payload, reason) in cases {
            let err = decode(payload, &cx(Format::Auto)).unwrap_err();
            assert_eq!(
                err.reason(),
                reason,
                "{}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
        let text_label = cbor(&Value::Array(vec![Value::Map(vec![(
            Value::Text("n".into()),
            int(1),
        )])]));
        assert_eq!(
            decode(&text_label, &cx(Format::Auto)).unwrap_err().reason(),
            "invalid_senml"
        );
        assert_eq!(
            decode(br#"{"value":1}"#, &cx(Format::SenmlCbor))
                .unwrap_err()
                .reason(),
            "invalid_cbor"
        );
    }

    #[test]
    fn content_types_name_formats() {
        assert_eq!(
            Format::from_content_type("application/senml+cbor"),
            Some(Format::SenmlCbor)
        );
        assert_eq!(
            Format::from_content_type("Application/JSON; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(Format::from_content_type("text/plain"), None);
    }
}
