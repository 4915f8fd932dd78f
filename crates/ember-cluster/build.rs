//! Compiles the control-plane protocol with a pure-Rust protobuf compiler, so that building
//! Ember needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ember/cluster/v1/control.proto", "ember/cluster/v1/master.proto"];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
