fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc keeps the build independent of whatever protoc the machine has (or lacks).
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto/zds.proto");
    prost_build::compile_protos(&["proto/zds.proto"], &["proto/"])?;
    Ok(())
}
