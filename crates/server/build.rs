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
    // Release builds embed the files found at compile time: a web client built (or rebuilt with
    // a new file) after the relay must make the relay build again, or it would go on serving
    // what it found, even the "not built" page. Cargo watches a folder's whole contents.
    println!("cargo:rerun-if-changed={}", dist.display());
}
