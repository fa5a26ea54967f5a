//! The config loader (YAML parsing, spec decoding, validation, compilation) on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strait_config::load_str("fuzz.yaml", text);
    }
});
