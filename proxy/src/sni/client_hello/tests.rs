//! The parser against ClientHellos rustls makes, whole, cut short, spread over records, and
//! broken on purpose.

use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::*;

/// The bytes a rustls client sends first, for `server_name` (an IP address sends no SNI),
/// with records of at most `fragment` bytes when given.
fn hello_with(server_name: &str, fragment: Option<usize>) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.max_fragment_size = fragment;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write");
    }
    out
}

fn hello(server_name: &str) -> Vec<u8> {
    hello_with(server_name, None)
}

fn name_of(bytes: &[u8]) -> Option<String> {
    match parse(bytes) {
        Hello::Complete { server_name } => server_name.map(Cow::into_owned),
        other => panic!("not a complete hello: {other:?}"),
    }
}

#[test]
fn a_rustls_client_hello_gives_its_server_name() {
    let bytes = hello("a.example");
    assert_eq!(name_of(&bytes).as_deref(), Some("a.example"));
    assert!(matches!(
        parse(&bytes),
        Hello::Complete {
            server_name: Some(Cow::Borrowed(_))
        }
    ));
}

#[test]
fn a_hello_to_an_ip_address_has_no_server_name() {
    assert_eq!(name_of(&hello("127.0.0.1")), None);
}

#[test]
fn every_proper_prefix_needs_more() {
    let bytes = hello("a.example");
    for end in 0..bytes.len() {
        assert_eq!(
            parse(&bytes[..end]),
            Hello::NeedMore,
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn a_hello_spread_over_small_records_is_reassembled() {
    // rustls' smallest fragment: 32 bytes of payload per record.
    let bytes = hello_with("b.example", Some(32 + 5));
    assert!(
        bytes.len() > 5 * 37,
        "{} bytes: several records",
        bytes.len()
    );
    assert_eq!(name_of(&bytes).as_deref(), Some("b.example"));
    for end in 0..bytes.len() {
        assert_eq!(
            parse(&bytes[..end]),
            Hello::NeedMore,
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn other_protocols_are_not_tls() {
    for start in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x80\x2e\x01",
    ] {
        assert_eq!(parse(start), Hello::NotTls, "{start:?}");
    }
}

#[test]
fn broken_hellos_are_invalid() {
    let good = hello("a.example");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut v = good.clone();
    v[1] = 2; // record version SSL 2
    cases.push(("record version", v));
    cases.push(("empty record", vec![22, 3, 1, 0, 0]));
    cases.push(("not a ClientHello", vec![22, 3, 1, 0, 4, 2, 0, 0, 0]));
    cases.push(("oversized record", vec![22, 3, 1, 0x40, 1]));
    // A record of another type in the middle of a hello spread over records.
    let mut v = hello_with("a.example", Some(37));
    v[37] = 23;
    cases.push(("application data inside", v));
    // The server_name extension's name made invalid in place.
    let mut v = good.clone();
    let at = v
        .windows(9)
        .position(|w| w == b"a.example")
        .expect("name in the hello");
    v[at] = b' ';
    cases.push(("space in the name", v));
    let mut v = good.clone();
    v[at] = b'.';
    cases.push(("empty label", v));
    // Extensions' total length one byte short: the last extension is cut.
    let mut v = good.clone();
    let ext_len_at = extensions_length_at(&v);
    let len = u16::from_be_bytes([v[ext_len_at], v[ext_len_at + 1]]) - 1;
    v[ext_len_at..ext_len_at + 2].copy_from_slice(&len.to_be_bytes());
    cases.push(("extensions cut", v));
    for (what, bytes) in cases {
        assert!(
            matches!(parse(&bytes), Hello::Invalid(_)),
            "{what}: {:?}",
            parse(&bytes)
        );
    }
}

#[test]
fn a_hello_longer_than_the_limit_is_too_large() {
    let mut v = hello("a.example");
    // Handshake length 16 KiB + 1.
    let len = (MAX_CLIENT_HELLO + 1) as u32;
    v[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
    assert_eq!(parse(&v), Hello::TooLarge);
}

#[test]
fn a_hello_without_extensions_has_no_server_name() {
    // TLS 1.2 hello: version, random, empty session id, one suite, null compression.
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    let mut bytes = vec![
        22,
        3,
        1,
        0,
        (body.len() + 4) as u8,
        1,
        0,
        0,
        body.len() as u8,
    ];
    bytes.extend(&body);
    assert_eq!(name_of(&bytes), None);
}

/// Where the extensions' two-byte length sits in a single-record hello.
fn extensions_length_at(v: &[u8]) -> usize {
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + usize::from(v[at]);
    at += 2 + usize::from(u16::from_be_bytes([v[at], v[at + 1]]));
    at += 1 + usize::from(v[at]);
    at
}
