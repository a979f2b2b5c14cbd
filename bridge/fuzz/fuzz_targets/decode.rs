//! Every payload format: the first byte picks the declared format, the rest is the payload.
#![no_main]
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use sluice::decode::{decode, Context, Format, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let formats = [
        Format::Auto,
        Format::Json,
        Format::Cbor,
        Format::Senml,
        Format::SenmlJson,
        Format::SenmlCbor,
    ];
    let limits = Limits::default();
    let cx = Context {
        format: formats[pick as usize % formats.len()],
        metric: if pick & 0x80 == 0 { Some("m") } else { None },
        received_at: Utc.timestamp_millis_opt(1_790_000_000_000).unwrap(),
        limits: &limits,
    };
    if let Ok(readings) = decode(payload, &cx) {
        for r in readings {
            assert!(r.value.is_none_or(f64::is_finite));
            assert!(r.metric.len() <= limits.max_name_bytes);
        }
    }
});
