//! Header handling between hops (RFC 9110 §7.6.1): connection-specific headers stay on their
//! hop; the proxy adds what the next hop should know about the client.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use smallvec::SmallVec;

/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `x-strait-client-id`: the SPIFFE ID of the client an inbound listener authenticated with
/// mTLS, set on the requests it forwards; removed from every request a client sends.
pub static CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("x-strait-client-id");

/// Connection-specific headers removed at every hop besides those `Connection` names.
static HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    HeaderName::from_static("trailer"),
];

/// Whether the message asks to switch protocols (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| lists(v.as_bytes(), token))
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
pub fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Connection-specific headers kept in some cases: `Connection` (when it names an upgrade),
/// `TE: trailers`, `Upgrade` (when the protocol switches).
static SOMETIMES_HOP_BY_HOP: [HeaderName; 3] = [CONNECTION, TE, UPGRADE];

/// Whether `name` may be hop-by-hop without a `Connection` header naming it.
fn maybe_hop_by_hop(name: &HeaderName) -> bool {
    SOMETIMES_HOP_BY_HOP.contains(name) || HOP_BY_HOP.contains(name)
}

/// `maybe_hop_by_hop` for a field name as sent (any case), not parsed into a `HeaderName`.
pub fn maybe_hop_by_hop_bytes(name: &[u8]) -> bool {
    SOMETIMES_HOP_BY_HOP
        .iter()
        .chain(&HOP_BY_HOP)
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` survive so
/// the protocol switch reaches the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over their few names instead of a lookup per
    // hop-by-hop name (this runs twice per request).
    if !upgrade && !headers.keys().any(maybe_hop_by_hop) {
        return;
    }
    // Connection's values name more hop-by-hop headers; they are moved out first.
    let listed: SmallVec<[HeaderValue; 2]> = match headers.entry(CONNECTION) {
        Entry::Occupied(connection) => connection.remove_entry_mult().1.collect(),
        Entry::Vacant(_) => SmallVec::new(),
    };
    let tokens: SmallVec<[&str; 4]> = listed
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let named = |name: &HeaderName| tokens.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()));
    // One more pass decides what goes, so that only headers present are looked up (the
    // usual `Connection: keep-alive` names none).
    let mut doomed: SmallVec<[HeaderName; 2]> = SmallVec::new();
    for (name, value) in headers.iter() {
        let goes = if name == UPGRADE {
            !upgrade
        } else if name == TE {
            // `TE: trailers` announces the client accepts trailers (gRPC needs it); other TE
            // values are hop-by-hop.
            value != "trailers" || named(name)
        } else {
            HOP_BY_HOP.contains(name) || named(name)
        };
        if goes && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// How the client spoke to the listener, as `forwarded` and `x-forwarded-proto` tell the app:
/// TLS (terminated or the mesh's mTLS) is `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Plaintext.
    Http,
    /// Over TLS.
    Https,
}

impl Proto {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// Clients whose [`ClientHeaders`] a thread keeps.
const CACHED_CLIENTS: usize = 8;

/// Per-client values for the forwarding headers, formatted once per client address.
#[derive(Debug, Clone)]
pub struct ClientHeaders {
    /// The client IP, as text.
    ip: HeaderValue,
    /// `for=IP;proto=http` (or `https`).
    forwarded: HeaderValue,
    /// `http` or `https`.
    proto: HeaderValue,
    /// All three fields as HTTP/1 field lines, for a head that carries none of them.
    lines: Box<[u8]>,
}

impl ClientHeaders {
    /// Formats the values for a client address that spoke `proto`.
    pub fn new(ip: IpAddr, proto: Proto) -> Self {
        let ip_text = ip.to_string();
        let scheme = proto.as_str();
        let forwarded = match ip {
            IpAddr::V4(_) => format!("for={ip_text};proto={scheme}"),
            IpAddr::V6(_) => format!("for=\"[{ip_text}]\";proto={scheme}"),
        };
        let proto = HeaderValue::from_static(scheme);
        let ip = HeaderValue::from_str(&ip_text).unwrap_or(HeaderValue::from_static("unknown"));
        let forwarded =
            HeaderValue::from_str(&forwarded).unwrap_or(HeaderValue::from_static("for=unknown"));
        let mut lines = Vec::new();
        for (name, value) in [
            (&X_FORWARDED_FOR, &ip),
            (&FORWARDED, &forwarded),
            (&X_FORWARDED_PROTO, &proto),
        ] {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Self {
            ip,
            forwarded,
            proto,
            lines: lines.into_boxed_slice(),
        }
    }

    /// The values for `ip`, shared by the connections from it: a sidecar's clients are few
    /// (the app over loopback, a handful of peers), so each thread keeps the values of the
    /// last `CACHED_CLIENTS` (8) addresses it saw and a connection from one of them holds a
    /// reference instead of three allocations of its own.
    pub fn of(ip: IpAddr, proto: Proto) -> Arc<Self> {
        thread_local! {
            static RECENT: RefCell<RecentClients> = const { RefCell::new(RecentClients::new()) };
        }
        RECENT
            .try_with(|recent| recent.borrow_mut().get(ip, proto))
            .unwrap_or_else(|_| Arc::new(Self::new(ip, proto)))
    }

    /// `x-forwarded-for`, `forwarded` and `x-forwarded-proto` as HTTP/1 field lines: what
    /// [`append_to`](Self::append_to) adds to a head that has none of them.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// Whether `name` is one of the forwarding fields (a head that carries one has them
    /// merged into its map rather than written as [`lines`](Self::lines)).
    pub fn is_forwarding(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR || name == FORWARDED || name == X_FORWARDED_PROTO
    }

    /// Appends the client to `x-forwarded-for` and `forwarded`, and sets `x-forwarded-proto`
    /// when absent.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        append_list(headers, &X_FORWARDED_FOR, &self.ip);
        append_list(headers, &FORWARDED, &self.forwarded);
        headers
            .entry(&X_FORWARDED_PROTO)
            .or_insert_with(|| self.proto.clone());
    }
}

/// The [`ClientHeaders`] of a thread's recent clients, the oldest replaced first.
struct RecentClients {
    entries: Vec<((IpAddr, Proto), Arc<ClientHeaders>)>,
    /// The entry replaced next once all are taken.
    next: usize,
}

impl RecentClients {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    /// The values for `ip` speaking `proto`: kept ones, or new ones kept in place of the oldest.
    fn get(&mut self, ip: IpAddr, proto: Proto) -> Arc<ClientHeaders> {
        let key = (ip, proto);
        if let Some((_, values)) = self.entries.iter().find(|(seen, _)| *seen == key) {
            return values.clone();
        }
        let values = Arc::new(ClientHeaders::new(ip, proto));
        if self.entries.len() < CACHED_CLIENTS {
            self.entries.push((key, values.clone()));
        } else {
            self.entries[self.next] = (key, values.clone());
            self.next = (self.next + 1) % CACHED_CLIENTS;
        }
        values
    }
}

/// Appends `value` to a comma-separated list header, folding repeated fields into one. One
/// lookup of `name` whether or not it is there.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut existing = match headers.entry(name) {
        Entry::Vacant(vacant) => {
            vacant.insert(value.clone());
            return;
        }
        Entry::Occupied(existing) => existing,
    };
    let mut joined = Vec::with_capacity(64);
    for v in existing.iter() {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    existing.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| value.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_connection_and_the_headers_it_names() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", " x-other-hop ,"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "2"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn te_trailers_stays_unless_connection_names_it() {
        let mut h = map(&[("te", "trailers"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("connection").is_none());
        let mut h = map(&[("te", "trailers"), ("connection", "TE")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_the_rest_untouched() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "trailer",
        ] {
            let mut h = map(&[("x-kept", "yes"), (name, "1"), ("te", "trailers")]);
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, vec!["x-kept", "te"], "{name}");
        }
        let mut none = map(&[("x-kept", "yes"), ("accept", "*/*")]);
        let before = none.clone();
        strip_hop_by_hop(&mut none, false);
        assert_eq!(none, before);
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn appends_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        ClientHeaders::new("127.0.0.1".parse().unwrap(), Proto::Http).append_to(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h6 = HeaderMap::new();
        ClientHeaders::new("::1".parse().unwrap(), Proto::Http).append_to(&mut h6);
        assert_eq!(h6["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn a_client_over_tls_is_forwarded_as_https_unless_an_earlier_hop_said() {
        let tls = ClientHeaders::new("127.0.0.1".parse().unwrap(), Proto::Https);
        let mut h = HeaderMap::new();
        tls.append_to(&mut h);
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=https");
        assert_eq!(h["x-forwarded-proto"], "https");
        let lines = String::from_utf8_lossy(tls.lines()).into_owned();
        assert!(lines.contains("x-forwarded-proto: https\r\n"), "{lines}");
        assert!(lines.contains("proto=https\r\n"), "{lines}");
        // The first hop's scheme is the client's: kept.
        let mut h = map(&[("x-forwarded-proto", "http")]);
        tls.append_to(&mut h);
        assert_eq!(h["x-forwarded-proto"], "http");
        // Plaintext and TLS clients of one address are told apart.
        let ip = "10.9.9.9".parse().unwrap();
        let plain = ClientHeaders::of(ip, Proto::Http);
        let over_tls = ClientHeaders::of(ip, Proto::Https);
        assert_ne!(plain.lines(), over_tls.lines());
        assert!(Arc::ptr_eq(&over_tls, &ClientHeaders::of(ip, Proto::Https)));
    }

    #[test]
    fn clients_share_their_values_while_their_thread_remembers_them() {
        let ip = |n: usize| IpAddr::from([10, 9, 0, n as u8]);
        let first = ClientHeaders::of(ip(0), Proto::Http);
        assert!(Arc::ptr_eq(&first, &ClientHeaders::of(ip(0), Proto::Http)));
        assert_eq!(
            first.lines(),
            ClientHeaders::new(ip(0), Proto::Http).lines()
        );
        let other = ClientHeaders::of(ip(1), Proto::Http);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(
            other.lines(),
            ClientHeaders::new(ip(1), Proto::Http).lines()
        );
        // Enough others push the first out; it is formatted afresh, still right.
        for n in 2..2 + CACHED_CLIENTS {
            ClientHeaders::of(ip(n), Proto::Http);
        }
        let again = ClientHeaders::of(ip(0), Proto::Http);
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.lines(), first.lines());
    }

    #[test]
    fn the_field_lines_say_what_append_to_adds_to_a_head_without_them() {
        let client = ClientHeaders::new("10.1.2.3".parse().unwrap(), Proto::Http);
        let mut added = HeaderMap::new();
        client.append_to(&mut added);
        let mut written = Vec::new();
        for (name, value) in &added {
            written.extend_from_slice(format!("{name}: ").as_bytes());
            written.extend_from_slice(value.as_bytes());
            written.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            String::from_utf8_lossy(client.lines()),
            String::from_utf8_lossy(&written)
        );
        assert!(!ClientHeaders::is_forwarding(&http::header::HOST));
        for (name, _) in &added {
            assert!(ClientHeaders::is_forwarding(name), "{name}");
        }
    }
}
