//! Compiles the vendored googleapis protos in `proto/` into prost messages and tonic stubs.
//!
//! `protox` parses the protos in pure Rust, so no `protoc` is needed on the machine. Server stubs
//! are generated only for the `testing` feature (the mock server), keeping backends that link the
//! client alone free of server code.

const PROTOS: &[&str] = &[
    "google/cloud/tasks/v2/cloudtasks.proto",
    "google/cloud/tasks/v2/queue.proto",
    "google/cloud/tasks/v2/task.proto",
    "google/cloud/tasks/v2/target.proto",
    "google/cloud/tasks/v2/cmek_config.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TESTING");
    println!(
        "cargo:rustc-env=CLOUD_TASKS_RUSTC_VERSION={}",
        rustc_version().unwrap_or_else(|| "unknown".to_owned())
    );
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let server_stubs = std::env::var_os("CARGO_FEATURE_TESTING").is_some();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(server_stubs)
        // No `connect` constructors over tonic's channel: the crate brings its own connection.
        .build_transport(false)
        // The mock server implements only the RPCs tests use; the rest answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .include_file("google_apis.rs")
        .compile_fds(descriptors)?;
    Ok(())
}

/// The compiler's version, for the `x-goog-api-client` header Google's clients send.
fn rustc_version() -> Option<String> {
    let rustc = std::env::var_os("RUSTC")?;
    let output = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.split_whitespace().nth(1).map(str::to_owned)
}
