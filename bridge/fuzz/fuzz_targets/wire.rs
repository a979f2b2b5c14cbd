//! The device socket: frames, then CONNECT and PUBLISH in both protocol versions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::wire::{next_frame, read_connect, read_publish, Level};

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    let mut taken = 0;
    while let Ok(Some(frame)) = next_frame(&mut buf, 1 << 16) {
        taken += frame.bytes.len();
        let _ = read_connect(&frame);
        let _ = read_publish(&frame, Level::V311);
        let _ = read_publish(&frame, Level::V5);
    }
    assert!(taken + buf.len() == data.len());
});
