//! Compiles the `shoal.v1` protos into Rust at build time.
//!
//! `protox` parses the `.proto` files in pure Rust, so no `protoc` is needed on the build machine; its file
//! descriptor set feeds `tonic-prost-build`, which writes the prost messages and the tonic clients and servers to
//! `OUT_DIR/shoal.v1.rs`.

/// Every proto file of the crate, relative to the crate root.
const PROTOS: &[&str] = &[
    "proto/shoal/v1/discovery.proto",
    "proto/shoal/v1/identity.proto",
    "proto/shoal/v1/admin.proto",
];

/// The import root: imports are written `import "shoal/v1/….proto";`.
const INCLUDE: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `compile_fds` does not emit these itself (only the protoc path does). The directory covers files added later.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={INCLUDE}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let fds = protox::compile(PROTOS, [INCLUDE])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Keeps `BackendPolicy` (and the payload enums holding it) small: most policies have none.
        .boxed(".shoal.v1.BackendPolicy.health_check")
        .compile_fds(fds)?;
    Ok(())
}
