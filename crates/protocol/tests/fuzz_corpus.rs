//! Replays every fuzz corpus input (fuzz/corpus/<target>/) through the same entry points the
//! fuzz targets use, so whatever the fuzzer found stays covered by `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;

use sotto_protocol::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus for {target}");
}

#[test]
fn bundle_corpus() {
    replay("bundle", fuzzing::bundle);
}

#[test]
fn envelope_corpus() {
    replay("envelope", fuzzing::envelope);
}

#[test]
fn header_corpus() {
    replay("header", fuzzing::header);
}

#[test]
fn session_state_corpus() {
    replay("session_state", fuzzing::session_state);
}

#[test]
fn record_corpus() {
    replay("record", fuzzing::record);
}

#[test]
fn conversation_corpus() {
    replay("conversation", fuzzing::conversation);
}
