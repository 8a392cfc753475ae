//! The committed test vectors are exactly what the generator makes, and the generator agrees
//! with itself when the vectors are read back through the public API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors")
}

#[test]
fn committed_vectors_match_the_generator() {
    let generated = sotto_protocol::vectors::generate();
    assert_eq!(generated.len(), 10);
    let mut stale = Vec::new();
    for (name, contents) in &generated {
        let committed = std::fs::read_to_string(vector_dir().join(name)).unwrap_or_default();
        if &committed != contents {
            stale.push(*name);
        }
    }
    assert!(
        stale.is_empty(),
        "test-vectors/{stale:?} differ from the generator; run \
         `cargo run -p sotto-protocol --example gen-vectors` and review the diff"
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(sotto_protocol::vectors::generate(), sotto_protocol::vectors::generate());
}
