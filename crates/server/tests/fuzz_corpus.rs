//! Replays the server-events fuzz corpus (fuzz/corpus/server_events/) through the entry point
//! the fuzz target uses, then a few thousand deterministic mutations of it: the short version
//! of the fuzzing campaign that runs in every `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sotto_server::fuzzing;

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/server_events");
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(inputs.len() >= 9, "the seeds are there");
    inputs
}

#[test]
fn the_corpus_replays_without_a_panic() {
    for input in corpus() {
        fuzzing::event(&input);
    }
}

#[test]
fn mutations_of_the_corpus_never_panic() {
    let inputs = corpus();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for round in 0..20_000_u32 {
        let mut input = inputs[round as usize % inputs.len()].clone();
        for _ in 0..=(rng.next_u32() % 4) {
            let position = rng.next_u32() as usize % input.len().max(1);
            match rng.next_u32() % 4 {
                0 if !input.is_empty() => input[position] ^= 1 << (rng.next_u32() % 8),
                1 if !input.is_empty() => {
                    input.remove(position);
                }
                2 => input.insert(position.min(input.len()), rng.next_u32() as u8),
                _ => {
                    // Splice in a piece of another input, as libFuzzer's cross-over does.
                    let other = &inputs[rng.next_u32() as usize % inputs.len()];
                    let start = rng.next_u32() as usize % other.len().max(1);
                    let end = (start + 16).min(other.len());
                    let at = position.min(input.len());
                    input.splice(at..at, other[start..end].iter().copied());
                }
            }
        }
        fuzzing::event(&input);
    }
}
