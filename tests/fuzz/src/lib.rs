//! Fuzz target bodies for taskrouter; the binaries in `fuzz_targets/` hand them libFuzzer's
//! input. The module is also compiled into the stable e2e test `fuzz_corpus.rs`.

pub mod targets;
