#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sotto_server::fuzzing::event(data));
