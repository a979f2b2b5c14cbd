//! The topic matcher: a filter and a topic, split at the first NUL byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::mapping::TopicTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (filter, topic) = text.split_once('\0').unwrap_or((text, text));
    if let Ok(t) = TopicTemplate::parse(filter, "{device_id}") {
        if let Some(c) = t.captures(topic) {
            let device = c.get("device_id").expect("a match names the device");
            assert!(!device.is_empty() && !device.contains('/'));
            let _ = t.render_key(&c);
        }
    }
});
