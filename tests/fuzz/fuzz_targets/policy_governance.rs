//! libFuzzer entry point: see `taskrouter_fuzz::targets::policy_governance`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    taskrouter_fuzz::targets::policy_governance(data);
});
