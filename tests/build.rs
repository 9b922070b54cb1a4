//! Compiles the test gRPC service (`proto/echo.proto`) into Rust at build time.
//!
//! As in `proto/build.rs`, `protox` parses the file in pure Rust (no `protoc` needed) and its file
//! descriptor set feeds `tonic-prost-build`, which writes the messages, the client and the server to
//! `OUT_DIR/shoal.test.v1.rs`.

const PROTOS: &[&str] = &["proto/echo.proto"];
const INCLUDE: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={INCLUDE}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, [INCLUDE])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
