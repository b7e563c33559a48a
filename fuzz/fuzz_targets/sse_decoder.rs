//! The SSE decoder never panics, and cutting the input into reads never changes what it
//! decodes.
#![no_main]

use futures::executor::block_on;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use switchyard::framing::{sse_data, FramingError};

mod cuts;

fn decode(reads: Vec<bytes::Bytes>) -> Vec<Result<String, String>> {
    let body = futures::stream::iter(reads.into_iter().map(Ok::<_, std::convert::Infallible>));
    block_on(
        sse_data(body)
            .map(|item| match item {
                Ok(data) => Ok(data),
                Err(FramingError::Invalid(detail)) => Err(detail),
                Err(FramingError::Transport(never)) => match never {},
            })
            .collect(),
    )
}

fuzz_target!(|input: &[u8]| {
    let (reads, payload) = cuts::reads(input);
    let whole = decode(vec![bytes::Bytes::copy_from_slice(payload)]);
    let cut = decode(reads);
    // Invalid UTF-8 may be reported at a different read; valid input must agree exactly.
    if std::str::from_utf8(payload).is_ok() {
        assert_eq!(whole, cut);
    }
});
