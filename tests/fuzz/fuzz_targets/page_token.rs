//! libFuzzer entry point: see `taskrouter_fuzz::targets::page_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    taskrouter_fuzz::targets::page_token(data);
});
