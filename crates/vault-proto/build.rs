//! Compiles proto/vault/v1 with a vendored protoc (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not `env!`: a build script compiled for one checkout is
    // reused by another one sharing the target dir.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "vault/v1/peer.proto",
        "vault/v1/admin.proto",
        "vault/v1/frontend.proto",
        "vault/v1/witness.proto",
        "google/rpc/status.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // google/protobuf/any.proto comes with the vendored protoc.
    let includes = [root, protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        // Every generated service decodes requests with our codec: an
        // undecodable message is the caller's INVALID_ARGUMENT (with an
        // error detail), not the INTERNAL of tonic's default codec.
        .codec_path("crate::codec::Codec")
        .compile_with_config(config, &files, &includes)?;
    Ok(())
}
