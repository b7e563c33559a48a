//! The two stream framings, SSE and NDJSON: decoding upstream bytes however the network
//! cut them, and encoding what the gateway sends; and reading the JSON a framing (or a
//! whole body) carries from its bytes (`from_json`).
//!
//! Decoding works on bytes and cuts whole lines before anything reads them as UTF-8, so
//! a line or a multi-byte character split across reads comes out whole, and a last line
//! with no newline before the end of the body is not lost.

use std::io;

use bytes::{Bytes, BytesMut};
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{FutureExt, Stream, StreamExt};
use serde::Serialize;

/// Reads a JSON value from bytes (a request body, an upstream's answer, chunk or line).
///
/// The bytes are checked to be UTF-8 once, whole, and then read as text: read as bytes,
/// serde_json checks every string it meets on its own, a call per key and per value,
/// which cost a tenth of reading a streamed chunk. Bytes that are not UTF-8 are read as
/// bytes after all, so that they fail with serde_json's own message, as before.
pub fn from_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// The most of one SSE event or NDJSON line that is held while waiting for its end. A
/// streamed token is a few bytes; without a cap, an upstream that never ends a line
/// would grow the gateway's memory until the process failed.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// A framing failure: the transport's own error, or bytes that are not the framing.
#[derive(Debug)]
pub enum FramingError<E> {
    Transport(E),
    Invalid(String),
}

/// The `data` payloads of an SSE stream, one per event, comments and empty events left
/// out. Several `data:` lines in one event are joined with `\n`, as the spec says. A
/// last event that the body ends without its blank line is still delivered.
///
/// The bytes are first cut into whole events ([`EventCutter`]). An event that is one
/// `data:` line, the shape every chat server streams, is read straight off the bytes
/// ([`plain_data`]); any other event goes through eventsource-stream. That parser copies
/// the rest of its buffer once per line it reads and works a character at a time: fed
/// whole network reads, it was the largest single cost of relaying a stream.
pub fn sse_data<S, E>(body: S) -> impl Stream<Item = Result<Bytes, FramingError<E>>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    async_stream::stream! {
        let mut cutter = EventCutter::default();
        let mut first = true;
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => cutter.push(&bytes),
                Err(e) => {
                    yield Err(FramingError::Transport(e));
                    return;
                }
            }
            while let Some(event) = cutter.next_event() {
                if let Some(data) = event_data(event, first) {
                    yield data.map_err(FramingError::Invalid);
                }
                first = false;
            }
            if cutter.buffer.len() > MAX_PENDING {
                yield Err(too_long("an SSE event"));
                return;
            }
        }
        if let Some(rest) = cutter.finish() {
            if let Some(data) = event_data(rest, first) {
                yield data.map_err(FramingError::Invalid);
            }
        }
    }
}

/// The data of one event (see [`EventCutter`]), or `None` when it carries none.
fn event_data(mut event: Bytes, first_in_stream: bool) -> Option<Result<Bytes, String>> {
    const MARK: &[u8] = "\u{feff}".as_bytes();
    // A byte-order mark may open the stream and is then dropped. It never reaches the
    // parser there: eventsource-stream 0.2 drops it by slicing one byte off a
    // three-byte character, which panics.
    if first_in_stream && event.starts_with(MARK) {
        event = event.slice(MARK.len()..);
    }
    if let Some(data) = plain_data(&event) {
        return (!data.is_empty()).then(|| Ok(event.slice_ref(data)));
    }
    // Anywhere else a mark is part of a field name; a blank line in front keeps the
    // parser from taking it for the stream's opening mark.
    let lead = Bytes::from_static(if event.starts_with(MARK) { b"\n" } else { b"" });
    // A lone `\r` ends a line, but the parser waits to see whether `\n` follows; one
    // more `\n` settles that without adding an event.
    let settle = Bytes::from_static(b"\n");
    // A line at a time: the parser copies the rest of what it holds for every line it
    // reads, so an event of many lines given whole would cost the square of its size.
    let pieces = std::iter::once(lead)
        .chain(lines(event).inspect(note_error_field))
        .chain(std::iter::once(settle))
        .map(Ok::<_, std::convert::Infallible>);
    let parsed = futures::stream::iter(pieces)
        .eventsource()
        .collect::<Vec<_>>()
        .now_or_never()?;
    // One event at most: the piece ends at its first blank line.
    match parsed.into_iter().next()? {
        Ok(event) if event.data.is_empty() => None,
        Ok(event) => Some(Ok(Bytes::from(event.data))),
        Err(EventStreamError::Utf8(e)) => Some(Err(format!("the SSE stream is not UTF-8: {e}"))),
        Err(EventStreamError::Parser(e)) => Some(Err(format!("the SSE stream is malformed: {e}"))),
        Err(EventStreamError::Transport(never)) => match never {},
    }
}

/// The value of an event that is exactly one `data:` line and the blank line ending it,
/// if it is UTF-8 (otherwise the parser reports it).
fn plain_data(event: &[u8]) -> Option<&[u8]> {
    let value = event.strip_prefix(b"data:")?;
    let value = value.strip_prefix(b" ").unwrap_or(value);
    let end = memchr::memchr2(b'\r', b'\n', value)?;
    let after_line = &value[end + line_ending(&value[end..])?..];
    let data = &value[..end];
    (line_ending(after_line)? == after_line.len() && std::str::from_utf8(data).is_ok())
        .then_some(data)
}

/// Logs an `error:` line. The SSE spec ignores unknown fields, and so does the parser,
/// but old llama-server builds reported a failure mid-stream that way: the stream then
/// ends unfinished, and this line is what says why.
fn note_error_field(line: &Bytes) {
    if let Some(value) = line.strip_prefix(b"error:") {
        let value = String::from_utf8_lossy(value.trim_ascii());
        log::warn!("an upstream SSE event has an `error:` field, which SSE ignores: {value}");
    }
}

/// An event's lines, each with its line ending.
fn lines(mut event: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        let end = match memchr::memchr2(b'\r', b'\n', &event) {
            Some(at) => at + line_ending(&event[at..]).unwrap_or(1),
            None if event.is_empty() => return None,
            None => event.len(),
        };
        Some(event.split_to(end))
    })
}

/// The length of the line ending that `bytes` starts with.
fn line_ending(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [b'\r', b'\n', ..] => Some(2),
        [b'\r' | b'\n', ..] => Some(1),
        _ => None,
    }
}

/// Cuts SSE bytes after each blank line, so every piece is one whole event (or, at the
/// end of the body, what was left of one). Lines end at `\r\n`, `\n` or `\r`.
#[derive(Debug, Default)]
pub struct EventCutter {
    buffer: BytesMut,
    /// Where scanning resumes: the end of the last line ending found, or a `\r` at the
    /// end of what has arrived, which may be the first half of `\r\n`.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

impl EventCutter {
    /// Appends bytes as they came off the network.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole event, if one is buffered.
    pub fn next_event(&mut self) -> Option<Bytes> {
        while let Some(offset) = memchr::memchr2(b'\r', b'\n', &self.buffer[self.scanned..]) {
            let at = self.scanned + offset;
            let end = match (self.buffer[at], self.buffer.get(at + 1)) {
                (b'\r', Some(b'\n')) => at + 2,
                (b'\r', None) => {
                    self.scanned = at;
                    return None;
                }
                _ => at + 1,
            };
            let blank = at == self.line_start;
            (self.scanned, self.line_start) = (end, end);
            if blank {
                (self.scanned, self.line_start) = (0, 0);
                return Some(self.buffer.split_to(end).freeze());
            }
        }
        self.scanned = self.buffer.len();
        None
    }

    /// What is left once the body has ended.
    pub fn finish(&mut self) -> Option<Bytes> {
        (self.scanned, self.line_start) = (0, 0);
        let rest = self.buffer.split().freeze();
        (!rest.is_empty()).then_some(rest)
    }
}

/// Cuts a byte stream into lines at `\n` (a `\r` before it is dropped). Blank lines are
/// skipped; a last line without `\n` is still delivered.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buffer: BytesMut,
    /// How much of `buffer` is known to hold no `\n`, so long lines are scanned once.
    scanned: usize,
}

impl LineSplitter {
    /// Appends bytes as they came off the network.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line, if one is buffered.
    pub fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let newline = memchr::memchr(b'\n', &self.buffer[self.scanned..])
                .map(|offset| self.scanned + offset);
            let Some(newline) = newline else {
                self.scanned = self.buffer.len();
                return None;
            };
            let mut line = self.buffer.split_to(newline + 1);
            self.scanned = 0;
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line.freeze());
            }
        }
    }

    /// What is left once the body has ended: a last line that had no `\n`.
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.buffer.split().freeze();
        self.scanned = 0;
        let trimmed = rest.strip_suffix(b"\r").unwrap_or(&rest);
        (!trimmed.iter().all(u8::is_ascii_whitespace)).then(|| rest.slice(0..trimmed.len()))
    }
}

/// The lines of an NDJSON body, as they complete.
pub fn ndjson_lines<S, E>(body: S) -> impl Stream<Item = Result<Bytes, FramingError<E>>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    async_stream::stream! {
        let mut splitter = LineSplitter::default();
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    splitter.push(&bytes);
                    while let Some(line) = splitter.next_line() {
                        yield Ok(line);
                    }
                    if splitter.buffer.len() > MAX_PENDING {
                        yield Err(too_long("an NDJSON line"));
                        return;
                    }
                }
                Err(e) => {
                    yield Err(FramingError::Transport(e));
                    return;
                }
            }
        }
        if let Some(line) = splitter.finish() {
            yield Ok(line);
        }
    }
}

fn too_long<E>(what: &str) -> FramingError<E> {
    FramingError::Invalid(format!(
        "{what} ran past {} MiB without ending",
        MAX_PENDING >> 20
    ))
}

/// Appends one SSE event, `data: JSON\n\n`.
pub fn write_sse<T: Serialize>(out: &mut BytesMut, value: &T) {
    out.extend_from_slice(b"data: ");
    write_json(out, value);
    out.extend_from_slice(b"\n\n");
}

/// Appends one value as compact JSON.
pub fn write_json<T: Serialize>(out: &mut BytesMut, value: &T) {
    // Serializing plain data structs into memory cannot fail.
    let _ = serde_json::to_writer(BytesWriter(out), value);
}

/// The event that ends an OpenAI stream.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Appends one NDJSON line, with the line separators that Python's `splitlines` breaks
/// on (U+0085, U+2028, U+2029) escaped, since serde_json writes them raw.
pub fn write_ndjson<T: Serialize>(out: &mut BytesMut, value: &T) {
    write_ollama_json(out, value);
    out.extend_from_slice(b"\n");
}

/// Appends one JSON value, escaped as [`write_ndjson`] does, without a newline.
pub fn write_ollama_json<T: Serialize>(out: &mut BytesMut, value: &T) {
    let mut serializer =
        serde_json::Serializer::with_formatter(BytesWriter(out), LineSeparatorSafe);
    let _ = value.serialize(&mut serializer);
}

struct BytesWriter<'a>(&'a mut BytesMut);

impl io::Write for BytesWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    // serde_json writes every fragment with `write_all`; the default loops over `write`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// serde_json's compact formatter, but escaping U+0085, U+2028 and U+2029.
struct LineSeparatorSafe;

impl serde_json::ser::Formatter for LineSeparatorSafe {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // All three start with byte 0xC2 or 0xE2; most text has neither.
        if !fragment.bytes().any(|b| b == 0xC2 || b == 0xE2) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (at, ch) in fragment.char_indices() {
            let escaped = match ch {
                '\u{85}' => "\\u0085",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..at])?;
            writer.write_all(escaped.as_bytes())?;
            start = at + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_as_text_and_bytes_not_utf8_fail_as_serde_says() {
        let read: serde_json::Value = from_json(b"{\"a\": \"\xc3\xa9\"}").unwrap();
        assert_eq!(read["a"], "\u{e9}");
        let borrowed: std::collections::HashMap<&str, &str> =
            from_json(b"{\"k\": \"plain\"}").unwrap();
        assert_eq!(borrowed["k"], "plain");
        for bad in [&b"{\"a\": \"\xff\"}"[..], b"{\"a\": 1,}", b"[1, 2"] {
            let ours = from_json::<serde_json::Value>(bad).unwrap_err().to_string();
            let serdes = serde_json::from_slice::<serde_json::Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, serdes);
        }
    }
    use futures::executor::block_on;
    use proptest::prelude::*;
    use std::convert::Infallible;

    /// Feeds `input` cut at `cuts` (sorted byte offsets) as separate network reads.
    fn pieces(input: &[u8], cuts: &[usize]) -> Vec<Result<Bytes, Infallible>> {
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            out.push(Ok(Bytes::copy_from_slice(&input[last..cut])));
            last = cut;
        }
        out.push(Ok(Bytes::copy_from_slice(&input[last..])));
        out
    }

    fn decode_ndjson(input: &[u8], cuts: &[usize]) -> Vec<String> {
        block_on(
            ndjson_lines(futures::stream::iter(pieces(input, cuts)))
                .map(|line| String::from_utf8(line.unwrap().to_vec()).unwrap())
                .collect(),
        )
    }

    fn decode_sse(input: &[u8], cuts: &[usize]) -> Vec<String> {
        block_on(
            sse_data(futures::stream::iter(pieces(input, cuts)))
                .map(|data| match data {
                    Ok(data) => String::from_utf8(data.to_vec()).unwrap(),
                    Err(_) => panic!("decode error"),
                })
                .collect(),
        )
    }

    const NDJSON: &str =
        "{\"content\":\"héllo 世界\"}\r\n\n{\"content\":\"🦀 done\"}\n{\"done\":true}";

    #[test]
    fn ndjson_every_single_cut() {
        let expected = vec![
            "{\"content\":\"héllo 世界\"}",
            "{\"content\":\"🦀 done\"}",
            "{\"done\":true}",
        ];
        let input = NDJSON.as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(decode_ndjson(input, &[cut]), expected, "cut at {cut}");
        }
        // Every byte its own read.
        let all: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode_ndjson(input, &all), expected);
    }

    const SSE: &str = "data: {\"c\":\"héllo 世界\"}\r\n\r\n: ping\n\ndata: {\"c\":\"🦀\"}\rdata: more\r\rdata: [DONE]\n\n";

    #[test]
    fn sse_every_single_cut() {
        let expected = vec![
            "{\"c\":\"héllo 世界\"}".to_owned(),
            "{\"c\":\"🦀\"}\nmore".to_owned(),
            "[DONE]".to_owned(),
        ];
        let input = SSE.as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(decode_sse(input, &[cut]), expected, "cut at {cut}");
        }
        let all: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode_sse(input, &all), expected);
    }

    fn cuts_strategy(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..12).prop_map(|mut cuts| {
            cuts.sort_unstable();
            cuts
        })
    }

    proptest! {
        #[test]
        fn ndjson_lines_survive_any_cuts(
            texts in proptest::collection::vec("\\PC{0,12}", 1..6),
            seed_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut input = Vec::new();
            for text in &texts {
                input.extend_from_slice(serde_json::to_string(&serde_json::json!({"t": text})).unwrap().as_bytes());
                input.push(b'\n');
            }
            let mut cuts: Vec<usize> = seed_cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let lines = decode_ndjson(&input, &cuts);
            let decoded: Vec<String> = lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["t"].as_str().unwrap().to_owned())
                .collect();
            prop_assert_eq!(decoded, texts);
        }

        #[test]
        fn sse_events_survive_any_cuts(
            texts in proptest::collection::vec("[^\r\n]{1,12}", 1..6),
            cuts in cuts_strategy(64),
            ending in prop::sample::select(vec!["\n\n", "\r\n\r\n", "\r\r"]),
        ) {
            let mut input = Vec::new();
            for text in &texts {
                input.extend_from_slice(b"data: ");
                input.extend_from_slice(serde_json::to_string(text).unwrap().as_bytes());
                input.extend_from_slice(ending.as_bytes());
            }
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            let decoded: Vec<String> = decode_sse(&input, &cuts)
                .iter()
                .map(|d| serde_json::from_str::<String>(d).unwrap())
                .collect();
            prop_assert_eq!(decoded, texts);
        }
    }

    #[test]
    fn sse_opening_byte_order_mark_is_dropped_without_a_panic() {
        let input = "\u{feff}data: one\n\n\u{feff}data: not data\n\ndata: two\n\n".as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(decode_sse(input, &[cut]), ["one", "two"], "cut at {cut}");
        }
    }

    #[test]
    fn sse_data_that_is_not_utf8_is_an_error() {
        let input = futures::stream::iter([Ok::<_, Infallible>(Bytes::from_static(
            b"data: {\"c\":\"\xff\"}\n\n",
        ))]);
        let decoded: Vec<_> = block_on(sse_data(input).collect());
        assert!(
            matches!(&decoded[..], [Err(FramingError::Invalid(detail))] if detail.contains("UTF-8")),
            "{decoded:?}"
        );
    }

    /// Feeds `piece` until more than [`MAX_PENDING`] bytes have gone in.
    fn endless(piece: &'static [u8]) -> impl Stream<Item = Result<Bytes, Infallible>> {
        let reads = MAX_PENDING / piece.len() + 2;
        futures::stream::iter((0..reads).map(move |_| Ok(Bytes::from_static(piece))))
    }

    #[test]
    fn an_event_or_line_that_never_ends_is_cut_off_with_an_error() {
        const PIECE: &[u8] = &[b'x'; 64 * 1024];
        let sse: Vec<_> = block_on(
            sse_data(
                futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"data: ")) })
                    .chain(endless(PIECE)),
            )
            .collect(),
        );
        assert!(
            matches!(&sse[..], [Err(FramingError::Invalid(detail))] if detail.contains("16 MiB")),
            "{sse:?}"
        );
        let ndjson: Vec<_> = block_on(ndjson_lines(endless(PIECE)).collect());
        assert!(
            matches!(&ndjson[..], [Err(FramingError::Invalid(detail))] if detail.contains("16 MiB")),
            "{ndjson:?}"
        );
    }

    /// What eventsource-stream alone decodes from the whole input. It panics on a
    /// byte-order mark at the start, so that is dropped here, as the spec says, and a
    /// blank line (which adds nothing) keeps it from seeing a second one there.
    fn reference_sse(input: &[u8]) -> Vec<String> {
        let input = input.strip_prefix("\u{feff}".as_bytes()).unwrap_or(input);
        block_on(
            futures::stream::iter([b"\n", input, b"\n"].map(Ok::<_, Infallible>))
                .eventsource()
                .filter_map(|event| async move {
                    let data = event.unwrap().data;
                    (!data.is_empty()).then_some(data)
                })
                .collect(),
        )
    }

    /// Lines of every kind SSE has, for the comparison below.
    fn sse_line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[^\r\n]{0,10}".prop_map(|v| format!("data: {v}")),
            "[^\r\n]{0,10}".prop_map(|v| format!("data:{v}")),
            Just("data".to_owned()),
            Just(String::new()),
            Just(String::new()),
            "[^\r\n]{0,6}".prop_map(|v| format!(":{v}")),
            "[a-z]{1,5}".prop_map(|v| format!("event: {v}")),
            Just("id: 7".to_owned()),
            Just("retry: 10".to_owned()),
            Just("\u{feff}data: marked".to_owned()),
        ]
    }

    proptest! {
        /// Reading plain events straight off the bytes decodes what the parser would.
        #[test]
        fn sse_decodes_what_eventsource_stream_decodes(
            lines in proptest::collection::vec(
                (sse_line(), prop::sample::select(vec!["\n", "\r\n", "\r"])),
                0..14,
            ),
            mark in any::<bool>(),
            cuts in cuts_strategy(160),
        ) {
            let mut input = String::new();
            if mark {
                input.push('\u{feff}');
            }
            for (line, ending) in &lines {
                input.push_str(line);
                input.push_str(ending);
            }
            let input = input.into_bytes();
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            prop_assert_eq!(decode_sse(&input, &cuts), reference_sse(&input));
        }
    }

    #[test]
    fn ndjson_output_escapes_python_line_breaks() {
        let mut out = BytesMut::new();
        write_ndjson(
            &mut out,
            &serde_json::json!({"c": "a\u{2028}b\u{85}c\u{2029}é"}),
        );
        assert_eq!(&out[..], b"{\"c\":\"a\\u2028b\\u0085c\\u2029\xc3\xa9\"}\n");
    }
}
