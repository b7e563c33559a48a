//! The Ollama dialect's request parsers never panic; what they refuse, they refuse
//! with a 400 and a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::dialect::ollama;

fuzz_target!(|input: &[u8]| {
    for outcome in [
        ollama::parse_chat(input).err(),
        ollama::parse_generate(input).err(),
    ] {
        if let Some(error) = outcome {
            assert!(!error.to_string().is_empty());
            assert_eq!(error.status().as_u16(), 400);
        }
    }
    if let Err(error) = ollama::embeddings::parse_embed(input) {
        assert_eq!(error.status().as_u16(), 400);
    }
    if let Err(error) = ollama::embeddings::parse_legacy(input) {
        assert_eq!(error.status().as_u16(), 400);
    }
});
