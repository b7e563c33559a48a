//! Turns fuzz input into network reads: the first byte picks how the rest is cut, so
//! the fuzzer explores where reads split lines and UTF-8 characters.

use bytes::Bytes;

/// The payload cut into reads of lengths drawn from `input[0]`.
pub fn reads(input: &[u8]) -> (Vec<Bytes>, &[u8]) {
    let Some((&seed, payload)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let step = usize::from(seed % 13) + 1;
    let mut reads = Vec::new();
    let mut at = 0;
    let mut turn = 0usize;
    while at < payload.len() {
        // Vary the read size a little so cuts land at different offsets.
        let len = (step + turn % 3).min(payload.len() - at);
        reads.push(Bytes::copy_from_slice(&payload[at..at + len]));
        at += len;
        turn += 1;
    }
    (reads, payload)
}
