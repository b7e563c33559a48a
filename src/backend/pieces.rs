//! An upstream request body kept as a row of pieces of about [`PIECE`] bytes, and sent
//! as them.
//!
//! A long conversation is resent whole every turn, so what a request holds in flight
//! grows with its body. Two whole copies of the upstream body used to be held: the
//! encoded body in one buffer, pre-sized from an estimate that must not fall short (or
//! the buffer doubles and copies), and awc's HTTP/1 write buffer, into which its encoder
//! copies a body given as one `Bytes` before the first byte goes out. Written in pieces,
//! the body takes its own size and no estimate; sent as a sized stream of those pieces,
//! awc copies one piece at a time into its buffer and writes it out before it takes the
//! next, so its buffer stays at a piece or two whatever the body's size. A body that
//! fits one piece is sent as the single `Bytes` it always was, with no more allocation
//! than before. The pieces are shared, not copied, when the body is sent again (to
//! another server, with another key).
//!
//! The request's texts are the client's JSON string literals, borrowed from its body,
//! and a long one would be the bulk of the upstream body too. While the pipeline runs a
//! request's backend calls inside [`from_source`], a writer takes a long literal that
//! lies in the client's body as a piece sharing that body's bytes, so the upstream body
//! is little more than the JSON around the texts.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use awc::body::{BodySize, MessageBody};
use bytes::{Bytes, BytesMut};

/// The most bytes one piece holds: large enough that a long body is a few hundred
/// pieces and as many socket writes, small beside any body it helps with.
pub const PIECE: usize = 64 * 1024;

/// An encoded request body: one buffer, or pieces once it outgrew one.
#[derive(Clone, Debug)]
pub enum Encoded {
    One(Bytes),
    Pieces(Rc<Vec<Bytes>>),
}

impl Encoded {
    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::One(bytes) => bytes.len(),
            Encoded::Pieces(pieces) => pieces.iter().map(Bytes::len).sum(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body in one slice, for the few readers that parse it again (the count of an
    /// Anthropic request's tokens, tests): borrowed when it is one buffer.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match self {
            Encoded::One(bytes) => Cow::Borrowed(bytes),
            Encoded::Pieces(pieces) => Cow::Owned(pieces.concat()),
        }
    }

    /// The body as awc sends it, sharing the pieces.
    pub fn sending(&self) -> Sending {
        match self {
            Encoded::One(bytes) => Sending::One(Some(bytes.clone())),
            Encoded::Pieces(pieces) => Sending::Pieces {
                pieces: pieces.clone(),
                next: 0,
            },
        }
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(body: Vec<u8>) -> Encoded {
        Encoded::One(Bytes::from(body))
    }
}

/// A body on its way out: the one buffer, or a sized stream of its pieces.
pub enum Sending {
    One(Option<Bytes>),
    Pieces {
        pieces: Rc<Vec<Bytes>>,
        /// The first piece not yet handed to awc.
        next: usize,
    },
}

impl MessageBody for Sending {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        let left = match self {
            Sending::One(one) => one.as_ref().map_or(0, Bytes::len),
            Sending::Pieces { pieces, next } => pieces
                .get(*next..)
                .map_or(0, |left| left.iter().map(Bytes::len).sum()),
        };
        BodySize::Sized(left as u64)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let piece = match self.get_mut() {
            Sending::One(one) => one.take().filter(|one| !one.is_empty()),
            Sending::Pieces { pieces, next } => {
                let piece = pieces.get(*next).cloned();
                if piece.is_some() {
                    *next += 1;
                }
                piece
            }
        };
        Poll::Ready(piece.map(Ok))
    }

    /// One buffer goes to awc as the plain `Bytes` body it takes without a stream.
    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self {
            Sending::One(Some(one)) => Ok(one),
            sending => Err(sending),
        }
    }
}

/// Where a body is serialised: one buffer of the estimated size, and pieces of
/// [`PIECE`] bytes once the body outgrows a piece. A long string literal that lies in
/// the client's body (see [`from_source`]) becomes a piece of its own that shares the
/// body's bytes instead of a copy of them.
pub struct Writer {
    sealed: Vec<Bytes>,
    current: BytesMut,
    /// The client's body, when it is long enough for sharing to matter.
    source: Option<Bytes>,
}

/// The shortest literal shared with the client's body rather than copied: a shared
/// piece costs a `Bytes` handle (32 bytes) and a chunk of its own on the way out.
const SHARED: usize = 128;

thread_local! {
    /// The body of the request whose work is being polled on this thread, if long.
    static SOURCE: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// Runs `work` with `body` known as the source of what it encodes: while it is
/// polled, a [`Writer`] on this thread takes long string literals that lie in `body`
/// (the request's texts borrow from it) as shared pieces of it instead of copying them.
/// A literal found elsewhere is copied, so a writer that sees another request's body
/// only shares less. Bodies of one piece or less are left alone, as before.
pub fn from_source<F: Future>(body: &Bytes, work: F) -> FromSource<'_, F> {
    FromSource { body, work }
}

pin_project_lite::pin_project! {
    /// See [`from_source`].
    pub struct FromSource<'b, F> {
        body: &'b Bytes,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for FromSource<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.body.len() <= PIECE {
            return this.work.poll(context);
        }
        let outer = SOURCE.with(|cell| cell.replace(Some(this.body.clone())));
        let polled = this.work.poll(context);
        SOURCE.with(|cell| cell.set(outer));
        polled
    }
}

impl Writer {
    /// A writer whose first buffer holds `estimate` bytes (at most a piece): small
    /// bodies fit it without growing.
    pub fn new(estimate: usize) -> Writer {
        let source = SOURCE.with(|cell| {
            let source = cell.take();
            cell.set(source.clone());
            source
        });
        Writer {
            sealed: Vec::new(),
            current: BytesMut::with_capacity(estimate.min(PIECE)),
            source,
        }
    }

    /// The body written.
    pub fn finish(mut self) -> Encoded {
        if self.sealed.is_empty() {
            return Encoded::One(self.current.freeze());
        }
        if !self.current.is_empty() {
            self.sealed.push(self.current.freeze());
        }
        Encoded::Pieces(Rc::new(self.sealed))
    }

    /// Makes room for at least one more byte: the buffer grows by doubling up to a
    /// piece; a full piece is sealed and a new one begun.
    #[cold]
    fn make_room(&mut self) {
        // Nothing sealed yet: this is the first buffer, sized by the estimate.
        if self.sealed.is_empty() && self.current.capacity() < PIECE {
            let want = (self.current.capacity() * 2).clamp(64, PIECE);
            self.current.reserve(want - self.current.len());
            return;
        }
        let full = std::mem::replace(&mut self.current, BytesMut::with_capacity(PIECE));
        if !full.is_empty() {
            self.sealed.push(full.freeze());
        }
    }

    /// `literal` as a share of the client's body, when it lies there.
    #[cold]
    fn shared(&self, literal: &[u8]) -> Option<Bytes> {
        let source = self.source.as_ref()?;
        let start = source.as_ptr() as usize;
        let at = literal.as_ptr() as usize;
        (at >= start && at + literal.len() <= start + source.len())
            .then(|| source.slice_ref(literal))
    }
}

impl io::Write for Writer {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if buf.len() >= SHARED && self.source.is_some() {
            if let Some(shared) = self.shared(buf) {
                // What was written before it keeps the rest of its buffer's room.
                if !self.current.is_empty() {
                    self.sealed.push(self.current.split().freeze());
                }
                self.sealed.push(shared);
                return Ok(());
            }
        }
        loop {
            let room = self.current.capacity() - self.current.len();
            if buf.len() <= room {
                self.current.extend_from_slice(buf);
                return Ok(());
            }
            let (now, rest) = buf.split_at(room);
            self.current.extend_from_slice(now);
            buf = rest;
            self.make_room();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn written(estimate: usize, writes: &[&[u8]]) -> Encoded {
        let mut writer = Writer::new(estimate);
        for bytes in writes {
            writer.write_all(bytes).unwrap();
        }
        writer.finish()
    }

    fn sent(body: &Encoded) -> (BodySize, Vec<Bytes>) {
        let mut sending = body.sending();
        let size = sending.size();
        let waker = futures::task::noop_waker();
        let mut context = Context::from_waker(&waker);
        let mut pieces = Vec::new();
        while let Poll::Ready(Some(Ok(piece))) = Pin::new(&mut sending).poll_next(&mut context) {
            pieces.push(piece);
        }
        (size, pieces)
    }

    #[test]
    fn a_small_body_is_one_buffer_sent_as_plain_bytes() {
        let body = written(16, &[b"{\"model\":", b"\"m\"}"]);
        assert!(matches!(body, Encoded::One(_)));
        assert_eq!(&*body.contiguous(), b"{\"model\":\"m\"}");
        let bytes = body.sending().try_into_bytes().ok().unwrap();
        assert_eq!(&bytes[..], b"{\"model\":\"m\"}");
    }

    #[test]
    fn a_short_estimate_grows_the_first_buffer() {
        let body = written(4, &[&[b'a'; 1000], &[b'b'; 3000]]);
        assert!(matches!(body, Encoded::One(_)));
        assert_eq!(body.len(), 4000);
        assert_eq!(&body.contiguous()[995..1005], b"aaaaabbbbb");
    }

    #[test]
    fn a_long_body_is_pieces_sent_in_order_with_its_whole_size() {
        let long: Vec<u8> = (0..PIECE * 3 + 100).map(|i| (i % 251) as u8).collect();
        let body = written(1024, &[b"[", &long, b"]"]);
        let Encoded::Pieces(pieces) = &body else {
            panic!("one buffer for {} bytes", body.len());
        };
        assert_eq!(pieces.len(), 4);
        assert!(pieces[..3].iter().all(|piece| piece.len() == PIECE));
        let (size, pieces_sent) = sent(&body);
        assert_eq!(size, BodySize::Sized(long.len() as u64 + 2));
        let whole = pieces_sent.concat();
        assert_eq!(whole.len(), long.len() + 2);
        assert_eq!(&whole[1..whole.len() - 1], &long[..]);
        assert_eq!(&*body.contiguous(), &whole[..]);
        // Sent again (another server, another key), it is the same body.
        assert_eq!(sent(&body).1.concat(), whole);
        assert!(body.sending().try_into_bytes().is_err());
    }

    /// Polls `work` once, as the pipeline's worker would.
    fn polled<T>(work: impl Future<Output = T>) -> T {
        let waker = futures::task::noop_waker();
        let mut context = Context::from_waker(&waker);
        match std::pin::pin!(work).poll(&mut context) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the work waits on nothing"),
        }
    }

    #[test]
    fn a_long_literal_of_the_clients_body_is_shared_not_copied() {
        let text = "x".repeat(SHARED);
        let client = Bytes::from(format!(
            "{{\"content\":\"{text}\",\"pad\":\"{}\"}}",
            "p".repeat(PIECE)
        ));
        let literal = &client[12..12 + SHARED];
        let elsewhere = text.as_bytes();
        let body = polled(from_source(&client, async {
            let mut writer = Writer::new(64);
            writer.write_all(b"{\"text\":\"").unwrap();
            writer.write_all(literal).unwrap();
            writer.write_all(b"\",\"copy\":\"").unwrap();
            writer.write_all(elsewhere).unwrap();
            writer.write_all(b"\"}").unwrap();
            writer.finish()
        }));
        let Encoded::Pieces(pieces) = &body else {
            panic!("one buffer: nothing was shared");
        };
        assert_eq!(
            &pieces[0][..],
            b"{\"text\":\"",
            "what came before the literal"
        );
        assert_eq!(
            pieces[1].as_ptr(),
            literal.as_ptr(),
            "the literal is the body's bytes"
        );
        let want = format!("{{\"text\":\"{text}\",\"copy\":\"{text}\"}}");
        assert_eq!(&*body.contiguous(), want.as_bytes());
        assert_eq!(sent(&body).1.concat(), want.as_bytes());
        // Outside its work, or for a short body, nothing is shared.
        let mut writer = Writer::new(64);
        writer.write_all(literal).unwrap();
        assert!(matches!(writer.finish(), Encoded::One(_)));
        let short = Bytes::from(text.clone());
        let body = polled(from_source(&short, async {
            let mut writer = Writer::new(64);
            writer.write_all(&short).unwrap();
            writer.finish()
        }));
        assert!(matches!(body, Encoded::One(_)));
    }

    #[test]
    fn an_empty_body_sends_nothing() {
        let body = written(0, &[]);
        assert!(body.is_empty());
        let (size, sent) = sent(&body);
        assert_eq!(size, BodySize::Sized(0));
        assert!(sent.is_empty());
    }
}
