//! libFuzzer entry point: see `taskrouter_fuzz::targets::git_output`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    taskrouter_fuzz::targets::git_output(data);
});
