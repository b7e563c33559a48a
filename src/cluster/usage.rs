//! Every instance's usage records in one Redis stream, so that `switchyard usage
//! --cluster` totals the whole cluster: each record an instance writes to its own
//! ledger is also appended here (`XADD … MAXLEN ~ stream_maxlen`, so the stream stays
//! bounded). A record made while Redis is unreachable waits in this instance's memory
//! (at most `pending_max`, the oldest dropped first, with a count logged) and is sent,
//! in order, as soon as Redis answers again.

use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::Cluster;

/// One usage record: its fields as the stream keeps them.
pub type Record = Vec<(&'static str, String)>;

/// How many held records go in one pipelined call when Redis is back.
const FLUSH_BATCH: usize = 500;

impl Cluster {
    /// The stream every instance appends to.
    pub fn stream(&self) -> String {
        self.key(&["usage"])
    }
}

/// Appends `record` to the stream, off the request path; held locally when Redis does
/// not answer.
pub fn send(cluster: &Arc<Cluster>, record: Record) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        hold(cluster, record);
        return;
    };
    let cluster = cluster.clone();
    runtime.spawn(async move {
        // Records held before this one go first, so the stream keeps their order.
        let behind = cluster
            .pending
            .lock()
            .map(|p| !p.is_empty())
            .unwrap_or(false);
        if behind || !cluster.is_up() {
            hold(&cluster, record);
            return;
        }
        let stream = cluster.stream();
        let maxlen = cluster.settings.stream_maxlen;
        let fields = record.clone();
        let sent = cluster
            .run("usage record", |mut connection| async move {
                let mut command = xadd(&stream, maxlen);
                for (field, value) in &fields {
                    command.arg(*field).arg(value);
                }
                command.query_async::<String>(&mut connection).await
            })
            .await;
        if sent.is_none() {
            hold(&cluster, record);
        }
    });
}

fn xadd(stream: &str, maxlen: u64) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*");
    command
}

fn hold(cluster: &Cluster, record: Record) {
    let Ok(mut pending) = cluster.pending.lock() else {
        return;
    };
    if cluster.settings.pending_max == 0 {
        return;
    }
    if pending.len() >= cluster.settings.pending_max {
        pending.pop_front();
        let dropped = cluster
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if dropped == 0 {
            log::warn!(
                "redis has been unreachable for {} usage records (cluster.pending_max): the oldest are dropped from the stream (each instance's own ledger still has them)",
                cluster.settings.pending_max
            );
        }
    }
    pending.push_back(record);
}

/// Sends the records held while Redis was unreachable, oldest first, a batch per call.
pub(super) async fn flush(cluster: &Cluster, connection: ConnectionManager) {
    loop {
        let batch: Vec<Record> = match cluster.pending.lock() {
            Ok(pending) => pending.iter().take(FLUSH_BATCH).cloned().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for record in &batch {
            let mut command = xadd(&cluster.stream(), cluster.settings.stream_maxlen);
            for (field, value) in record {
                command.arg(*field).arg(value);
            }
            pipe.add_command(command).ignore();
        }
        let mut connection = connection.clone();
        let call = async move { pipe.query_async::<()>(&mut connection).await };
        if cluster
            .bounded(
                "sending held usage records",
                super::BACKGROUND_TIMEOUT,
                call,
            )
            .await
            .is_none()
        {
            return;
        }
        let sent = batch.len();
        if let Ok(mut pending) = cluster.pending.lock() {
            let sent = sent.min(pending.len());
            pending.drain(..sent);
            if pending.is_empty() {
                log::info!("usage records held while redis was unreachable are in the stream");
                cluster
                    .dropped
                    .store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
