//! Writes the shared test vectors to `test-vectors/` at the workspace root.
//!
//! ```text
//! cargo run -p sotto-protocol --example gen-vectors
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors");
    std::fs::create_dir_all(&dir)?;
    for (name, contents) in sotto_protocol::vectors::generate() {
        std::fs::write(dir.join(name), contents)?;
        #[allow(clippy::print_stdout)]
        {
            println!("wrote test-vectors/{name}");
        }
    }
    Ok(())
}
