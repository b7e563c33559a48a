//! The OpenAI dialect's request parsers never panic; what they refuse, they refuse
//! with a message that names the problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::dialect::openai;

fuzz_target!(|input: &[u8]| {
    if let Err(error) = openai::parse_chat(input) {
        assert!(!error.to_string().is_empty());
        assert_eq!(error.status().as_u16(), 400);
    }
    if let Err(error) = openai::embeddings::parse(input) {
        assert_eq!(error.status().as_u16(), 400);
    }
});
