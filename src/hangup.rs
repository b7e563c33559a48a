//! Notices a client that hung up while the gateway is still waiting for the upstream's
//! first byte. actix drops a response body whose client is gone, which cancels a stream
//! already flowing, but it keeps polling a handler that has not answered yet; without
//! this, a model could keep loading and generating for nobody until it answered.

use std::any::Any;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use actix_web::dev::Extensions;

/// How often a waiting request looks at its client's socket.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The client connection's socket, remembered when the connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket(RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each TCP connection.
pub fn remember_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ClientSocket(stream.as_raw_fd()));
    }
}

impl ClientSocket {
    /// Whether the peer has closed or reset the connection, without consuming data.
    fn is_closed(self) -> bool {
        // SAFETY: the descriptor belongs to the connection whose request is being
        // served; actix's dispatcher owns it and drops it only after dropping the
        // handler future that calls this, so it is open whenever this runs.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&fd).peek(&mut byte) {
            // End of stream: the client sent FIN.
            Ok(0) => true,
            // Data waiting (a pipelined request) means the client is still there.
            Ok(_) => false,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::Interrupted
            }
        }
    }
}

/// Resolves once the client has hung up; never, when the socket is unknown.
pub async fn client_gone(socket: Option<ClientSocket>) {
    let Some(socket) = socket else {
        return futures::future::pending().await;
    };
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        if socket.is_closed() {
            return;
        }
    }
}
