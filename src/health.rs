//! `switchyard health`: asks a running gateway's `/health` and says whether it is ok,
//! through the exit status. A container's HEALTHCHECK runs it, so it needs nothing but
//! the binary (no curl in a distroless image).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// How long the whole check may take: a healthcheck that hangs is worse than one that fails.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The `/health` URL of a gateway listening on `listen`; an unspecified address
/// (0.0.0.0 or ::) is asked on the loopback address of its family.
pub fn url_for(listen: SocketAddr) -> String {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{address}/health")
}

/// Asks `url` (a gateway root or its `/health`) and prints one line: exit 0 when it
/// answers 200 with `"status"` `ok` or `degraded`, 1 otherwise. A degraded gateway is
/// up and serving, only some upstream is not: restarting the gateway would not mend that.
pub fn report(url: &str) -> ExitCode {
    let url = health_url(url);
    let outcome = actix_web::rt::System::new().block_on(ask(&url));
    match outcome {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("{url}: {problem}");
            ExitCode::from(1)
        }
    }
}

/// `http://host:port` and `http://host:port/` mean the gateway's `/health`.
fn health_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.ends_with("/health") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/health")
    }
}

/// The gateway's own word on its health, when it is serving.
async fn ask(url: &str) -> Result<String, String> {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("no answer ({e})"))?;
    let body = response
        .body()
        .limit(64 * 1024)
        .await
        .map_err(|e| format!("unreadable answer ({e})"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status().as_u16()));
    }
    let status = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|health| health.get("status")?.as_str().map(str::to_owned));
    match status.as_deref() {
        Some(status @ ("ok" | "degraded")) => Ok(status.to_owned()),
        Some(other) => Err(format!("status {other}")),
        None => Err("the answer is not switchyard's /health".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_asked_on_loopback() {
        assert_eq!(
            url_for("0.0.0.0:8787".parse().unwrap()),
            "http://127.0.0.1:8787/health"
        );
        assert_eq!(
            url_for("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/health"
        );
        assert_eq!(
            url_for("127.0.0.1:1234".parse().unwrap()),
            "http://127.0.0.1:1234/health"
        );
    }

    #[test]
    fn a_root_url_means_its_health_route() {
        assert_eq!(health_url("http://h:1"), "http://h:1/health");
        assert_eq!(health_url("http://h:1/"), "http://h:1/health");
        assert_eq!(health_url("http://h:1/health"), "http://h:1/health");
    }
}
