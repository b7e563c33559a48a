//! The SSE decoder never panics, cutting the input into reads never changes what it
//! decodes, and on UTF-8 input it decodes what eventsource-stream alone decodes.
#![no_main]

use futures::executor::block_on;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use switchyard::framing::{sse_data, FramingError};

mod cuts;

fn decode(reads: Vec<bytes::Bytes>) -> Vec<Result<Vec<u8>, String>> {
    let body = futures::stream::iter(reads.into_iter().map(Ok::<_, std::convert::Infallible>));
    block_on(
        sse_data(body)
            .map(|item| match item {
                Ok(data) => Ok(data.to_vec()),
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
        // eventsource-stream panics on a byte-order mark at the start: drop one, as the
        // spec says, and lead with a blank line (which adds nothing) against a second.
        let unmarked = payload.strip_prefix("\u{feff}".as_bytes()).unwrap_or(payload);
        let reference: Vec<Result<Vec<u8>, String>> = block_on(
            futures::stream::iter([b"\n", unmarked, b"\n"].map(Ok::<_, std::convert::Infallible>))
                .eventsource()
                .filter_map(|event| async move {
                    let data = event.ok()?.data;
                    (!data.is_empty()).then(|| Ok(data.into_bytes()))
                })
                .collect(),
        );
        assert_eq!(whole, reference);
    }
});
