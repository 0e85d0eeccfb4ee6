//! libFuzzer entry point: see `taskrouter_fuzz::targets::policy_evaluate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    taskrouter_fuzz::targets::policy_evaluate(data);
});
