//! libFuzzer entry point: see `taskrouter_fuzz::targets::session_state_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    taskrouter_fuzz::targets::session_state_decode(data);
});
