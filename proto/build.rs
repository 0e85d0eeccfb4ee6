//! Compiles `proto/taskrouter/v1/*.proto` with protox (no system `protoc`) and writes the
//! encoded file descriptor set next to the generated code for server reflection.

use prost::Message as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/taskrouter/v1/common.proto",
        "proto/taskrouter/v1/router.proto",
        "proto/taskrouter/v1/executor.proto",
        "proto/taskrouter/v1/agent.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("taskrouter_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
