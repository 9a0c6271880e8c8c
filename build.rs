fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc keeps the build independent of whatever protoc the machine has (or lacks).
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto/zds.proto");
    prost_build::compile_protos(&["proto/zds.proto"], &["proto/"])?;
    // The Istio CA client; ztunnel is only ever the client of this service.
    println!("cargo:rerun-if-changed=proto/istio_ca.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/istio_ca.proto"], &["proto/"])?;
    Ok(())
}
