//! The NDJSON line splitter never panics, never yields a blank line, and cutting the
//! input into reads never changes the lines it yields.
#![no_main]

use futures::executor::block_on;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use switchyard::framing::ndjson_lines;

mod cuts;

fn decode(reads: Vec<bytes::Bytes>) -> Vec<bytes::Bytes> {
    let body = futures::stream::iter(reads.into_iter().map(Ok::<_, std::convert::Infallible>));
    block_on(
        ndjson_lines(body)
            .map(|line| line.unwrap_or_default())
            .collect(),
    )
}

fuzz_target!(|input: &[u8]| {
    let (reads, payload) = cuts::reads(input);
    let whole = decode(vec![bytes::Bytes::copy_from_slice(payload)]);
    let cut = decode(reads);
    assert_eq!(whole, cut);
    for line in &whole {
        assert!(!line.contains(&b'\n'));
        assert!(!line.iter().all(u8::is_ascii_whitespace));
    }
});
