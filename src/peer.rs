//! Who is on the other end of a request: whether a proxy or tunnel relayed it, and the
//! client address to record.
//!
//! A tunnel (cloudflared) or reverse proxy on the gateway's own machine connects from
//! 127.0.0.1, so every request from the internet would look local. Such a proxy adds a
//! forwarding header, and a request carrying one is treated as relayed, never as a
//! loopback caller, whichever address it came from. The address such a header names is
//! believed only from the proxies listed in `server.trusted_proxies`, since anyone can
//! write the header.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// The headers a proxy or tunnel adds when it relays a request.
pub const RELAY_HEADERS: [&str; 5] = [
    "cf-connecting-ip",
    "cf-ray",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
];

/// The relay header a request carries, if any: it was relayed.
pub fn relay_header(headers: &HeaderMap) -> Option<&'static str> {
    RELAY_HEADERS
        .into_iter()
        .find(|name| headers.contains_key(*name))
}

/// Whether the caller is on this machine and not relayed: what `loopback` means for
/// anonymous serving and for the operational routes.
pub fn is_local(peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    peer.is_some_and(|ip| ip.is_loopback()) && relay_header(headers).is_none()
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the address
/// the proxy says it relayed for (`CF-Connecting-IP`, `X-Real-IP`, the nearest
/// untrusted hop of `X-Forwarded-For`, or `Forwarded: for=`).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    for name in ["cf-connecting-ip", "x-real-ip"] {
        if let Some(ip) = header(name).and_then(|v| v.trim().parse().ok()) {
            return Some(ip);
        }
    }
    // Each proxy appends the address it received from: walk back from the nearest hop
    // past the proxies we trust.
    let hops: Vec<IpAddr> = if let Some(list) = header("x-forwarded-for") {
        list.split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect()
    } else if let Some(forwarded) = header("forwarded") {
        forwarded
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for")
                        .then(|| forwarded_node(value))?
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(
        hops.iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer),
    )
}

/// An RFC 7239 node: `192.0.2.1`, `"192.0.2.1:80"`, `"[2001:db8::1]:80"`.
fn forwarded_node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value
        .parse()
        .ok()
        .or_else(|| value.rsplit_once(':')?.0.parse().ok())
}

/// `server.trusted_proxies`, as app data for whoever records the client's address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

/// The client address of a request, as logs record it (`-` when unknown).
pub fn client_of(request: &actix_web::dev::ServiceRequest) -> String {
    let trusted = request
        .app_data::<actix_web::web::Data<TrustedProxies>>()
        .map(|t| t.0.as_slice())
        .unwrap_or(&[]);
    match client_address(
        request.peer_addr().map(|a| a.ip()),
        request.headers(),
        trusted,
    ) {
        Some(ip) => ip.to_string(),
        None => "-".to_owned(),
    }
}

/// Parses `server.trusted_proxies` entries: a CIDR block or a single address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("\"{text}\" is not an address or a CIDR block like 127.0.0.1/32"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn any_relay_header_makes_a_loopback_peer_remote() {
        let local: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        assert!(is_local(local, &headers(&[])));
        for name in RELAY_HEADERS {
            assert!(
                !is_local(local, &headers(&[(name, "203.0.113.7")])),
                "{name}"
            );
        }
        assert!(!is_local(Some("192.0.2.1".parse().unwrap()), &headers(&[])));
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxy: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let trusted = [
            parse_network("127.0.0.1/32").unwrap(),
            parse_network("10.0.0.0/8").unwrap(),
        ];
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.1.2.3")]);
        assert_eq!(
            client_address(proxy, &xff, &trusted),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            client_address(proxy, &xff, &[]),
            proxy,
            "untrusted: the peer"
        );
        let cf = headers(&[("cf-connecting-ip", "2001:db8::5")]);
        assert_eq!(
            client_address(proxy, &cf, &trusted),
            Some("2001:db8::5".parse().unwrap())
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(
            client_address(proxy, &forwarded, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        assert!(parse_network("nope").is_err());
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
    }
}
