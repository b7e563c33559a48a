//! Where a request meets a limited backend's slots (`crate::queue`): one slot per
//! attempt, and a streamed request that has to wait, in a dialect that can say so
//! (SSE comments), waiting inside its stream so that it is told its place in line.

use std::pin::pin;

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::{render_stream, start_stream, until_client_gone, Caller, StreamLedger};
use crate::dialect::{Dialect, StreamRenderer};
use crate::error::GatewayError;
use crate::queue::{Admit, Progress, Slot, Ticket};
use crate::router::Router;

/// How a stream's first target is admitted.
pub(super) enum First {
    /// Now, with this slot (none where nothing is limited).
    Go(Option<Slot>),
    /// In line, with the first place comment written: the answer waits in its stream.
    Queued(Ticket, BytesMut),
}

/// Admits a stream's first target before any header goes out: a full line or a capped
/// key is a 429 with `Retry-After` now; a wait in a dialect without comments happens
/// here, before the headers.
pub(super) async fn first_slot<D: Dialect>(
    router: &Router,
    caller: &Caller,
    asked: &str,
) -> Result<First, GatewayError> {
    if caller.admission.is_none() {
        return Ok(First::Go(None));
    }
    // The first target's backend, found without `resolve`'s list of every target.
    let first = match router.aliases().iter().find(|alias| alias.name == asked) {
        Some(alias) => alias.targets.first().map(String::as_str),
        None => Some(asked),
    };
    let Some(first) = first else {
        return Ok(First::Go(None));
    };
    match admit(caller, router.route(first)?.name)? {
        Admit::Go(slot) => Ok(First::Go(shared(caller, slot).await?)),
        Admit::Wait(ticket) => {
            let mut place = BytesMut::new();
            if ticket
                .position()
                .is_some_and(|position| D::queue_comment(position, &mut place))
            {
                return Ok(First::Queued(ticket, place));
            }
            let slot = until_client_gone(caller, ticket.granted()).await?;
            Ok(First::Go(shared(caller, Some(slot)).await?))
        }
    }
}

/// Asks for a slot of `backend` (and of the caller's key); nothing to ask where neither
/// is limited.
fn admit(caller: &Caller, backend: &str) -> Result<Admit, GatewayError> {
    match &caller.admission {
        Some(admission) => admission.admit(backend, &caller.user, caller.key_cap.as_ref()),
        None => Ok(Admit::Go(None)),
    }
}

/// A slot of `backend` for one attempt, waiting in line for it (until the client
/// leaves) where there is one; `None` where nothing is limited.
pub(super) async fn slot(caller: &Caller, backend: &str) -> Result<Option<Slot>, GatewayError> {
    if caller.admission.is_none() {
        return Ok(None);
    }
    let slot = match admit(caller, backend)? {
        Admit::Go(slot) => slot,
        Admit::Wait(ticket) => Some(until_client_gone(caller, ticket.granted()).await?),
    };
    shared(caller, slot).await
}

/// Holds `slot` across the cluster too, where `[cluster]` shares the slots: waits (in
/// this instance's line's order, until the client leaves) for a cluster-wide one.
async fn shared(caller: &Caller, slot: Option<Slot>) -> Result<Option<Slot>, GatewayError> {
    let Some(mut slot) = slot else {
        return Ok(None);
    };
    let Some(cluster) = caller.admission.as_ref().and_then(|a| a.cluster()).cloned() else {
        return Ok(Some(slot));
    };
    let key = caller.key_cap.as_ref();
    until_client_gone(
        caller,
        crate::cluster::slots::share(&cluster, &mut slot, key),
    )
    .await?;
    Ok(Some(slot))
}

/// A streamed request waiting for a slot after its headers went out: what it needs to
/// start once the slot comes (the body is parsed again then, as the parse borrows it).
pub(super) struct Waiting<D> {
    pub(super) dialect: D,
    pub(super) body: Bytes,
    pub(super) router: web::Data<Router>,
    pub(super) caller: Caller,
    pub(super) ticket: Ticket,
}

/// Tells a waiting client its place in line (`place` is the first), then streams the
/// answer once the slot comes; a wait that runs out is the stream's one error event.
/// The client leaving drops this, and the ticket with it leaves the line.
pub(super) fn queued_stream<D: Dialect>(
    waiting: Waiting<D>,
    place: BytesMut,
    mut renderer: D::Renderer,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    async_stream::stream! {
        let Waiting { dialect, body, router, caller, mut ticket } = waiting;
        // The ledger takes the caller's record over only once the upstream has been
        // tried, so that the record names the backend; a client that leaves before
        // then is recorded by the caller itself as it is dropped.
        let mut out = place;
        let mut shown = ticket.position();
        yield Ok(out.split().freeze());
        let slot = loop {
            match until_client_gone(&caller, ticket.next(true)).await {
                Ok(Progress::Granted(slot)) => break slot,
                Ok(Progress::Moved) => {
                    let now = ticket.position();
                    if now != shown {
                        if let Some(position) = now {
                            D::queue_comment(position, &mut out);
                            yield Ok(out.split().freeze());
                        }
                        shown = now;
                    }
                }
                Err(GatewayError::ClientGone) => return,
                Err(error) => {
                    yield Ok(failed(&mut renderer, &caller, &error, &mut out));
                    return;
                }
            }
        };
        drop(ticket);
        let slot = match shared(&caller, Some(slot)).await {
            Ok(slot) => slot,
            Err(GatewayError::ClientGone) => return,
            Err(error) => {
                yield Ok(failed(&mut renderer, &caller, &error, &mut out));
                return;
            }
        };
        let started = match dialect.parse_chat(&body) {
            Ok(parsed) => {
                let request = Box::new(parsed.request);
                let started = start_stream(&router, &caller, &parsed.model, &request, slot);
                // As when it did not wait: long texts go upstream as shares of the body.
                crate::backend::pieces::from_source(&body, started).await
            }
            Err(error) => Err(error),
        };
        match started {
            Ok(events) => {
                let ledger = StreamLedger::new(&caller);
                let mut rendered = pin!(render_stream(events, renderer, ledger));
                while let Some(chunk) = rendered.next().await {
                    yield chunk;
                }
            }
            Err(GatewayError::ClientGone) => {}
            Err(error) => yield Ok(failed(&mut renderer, &caller, &error, &mut out)),
        }
    }
}

/// How a waiting stream that failed before its answer began ends: the dialect's one
/// error event, and the ledger's record of the failure.
fn failed<R: StreamRenderer>(
    renderer: &mut R,
    caller: &Caller,
    error: &GatewayError,
    out: &mut BytesMut,
) -> Bytes {
    renderer.error(error, out);
    StreamLedger::new(caller).close(error.status());
    out.split().freeze()
}
