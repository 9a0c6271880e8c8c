fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc keeps the build independent of whatever protoc the machine has (or lacks).
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let wkt = protoc_bin_vendored::include_path()?
        .to_str()
        .ok_or("protoc include path is not UTF-8")?
        .to_owned();
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(&["proto/zds.proto"], &["proto/"])?;
    // xDS: messages plus the ADS client (and the server, which the component tests play).
    // google.protobuf.* map to prost-types.
    tonic_prost_build::configure()
        .build_transport(false)
        // One module tree mirroring the proto packages, so cross-package references resolve.
        .include_file("xds.rs")
        .compile_protos(
            &[
                "proto/workload.proto",
                "proto/authorization.proto",
                "proto/envoy/service/discovery/v3/discovery.proto",
            ],
            &["proto", wkt.as_str()],
        )?;
    // The Istio CA client; ztunnel is only ever the client of this service.
    println!("cargo:rerun-if-changed=proto/istio_ca.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/istio_ca.proto"], &["proto/"])?;
    Ok(())
}
