//! The web client is embedded from `web/dist` (rust-embed). In debug builds rust-embed reads the
//! files at run time from the folder it found at compile time, and it only finds a folder that
//! exists: so the folder is created here, empty if need be, and a web client built later is
//! served without rebuilding the relay.

fn main() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    if let Err(error) = std::fs::create_dir_all(&dist) {
        println!("cargo:warning=cannot create {}: {error}", dist.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
