//! The server name (SNI) of a TLS ClientHello, read from the bytes a client sent first,
//! without a TLS library and without taking them off the socket: a small strict parser of the
//! record layer (RFC 8446 §5.1), the ClientHello (§4.1.2) and its `server_name` extension
//! (RFC 6066 §3). Anything it does not understand it calls [`Hello::Invalid`]; it never reads
//! past the end of its input and never allocates unless the ClientHello spans several records.

use std::borrow::Cow;

/// The largest ClientHello handshake message accepted (its body, without headers). Browsers'
/// and rustls' are 0.5–2 KiB, 1.8 KiB with a post-quantum key share.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Bytes of a record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Bytes of a handshake header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// TLS record content type `handshake`.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Extension `server_name`.
const EXT_SERVER_NAME: u16 = 0;
/// ServerName entry type `host_name`.
const HOST_NAME: u8 = 0;
/// Largest record payload (2^14).
const MAX_RECORD: usize = 16 * 1024;

/// The most bytes [`parse`] ever needs to see: a maximal ClientHello cut into the smallest
/// (one-byte) records would need more, but such a client is refused as [`Hello::TooLarge`].
pub const MAX_PEEK: usize = MAX_CLIENT_HELLO + HANDSHAKE_HEADER + 4 * RECORD_HEADER;

/// What a connection's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello<'a> {
    /// Not a TLS handshake record: some other protocol.
    NotTls,
    /// A valid prefix of a ClientHello: more bytes are needed.
    NeedMore,
    /// A whole ClientHello, with the host name it asks for, if any.
    Complete {
        /// The `server_name` extension's host name (as sent: case not changed).
        server_name: Option<Cow<'a, str>>,
    },
    /// Longer than [`MAX_CLIENT_HELLO`], or spread over more than [`MAX_PEEK`] bytes.
    TooLarge,
    /// Starts as TLS, but is not a well-formed ClientHello.
    Invalid(&'static str),
}

/// Reads the ClientHello at the start of `bytes` (all that has arrived so far).
pub fn parse(bytes: &[u8]) -> Hello<'_> {
    match bytes.first() {
        None => return Hello::NeedMore,
        Some(&CONTENT_HANDSHAKE) => {}
        Some(_) => return Hello::NotTls,
    }
    // The common case: the whole ClientHello in the first record. Borrowed.
    let first = match record(bytes) {
        Ok(Some(payload)) => payload,
        Ok(None) => return Hello::NeedMore,
        Err(e) => return e,
    };
    match handshake_len(first) {
        Err(e) => return e,
        Ok(Some(len)) if first.len() >= HANDSHAKE_HEADER + len => {
            let body = first
                .get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + len)
                .unwrap_or_default();
            return complete(body);
        }
        Ok(_) => {}
    }
    reassembled(bytes)
}

/// The ClientHello spread over several records: their payloads joined, then parsed.
fn reassembled(bytes: &[u8]) -> Hello<'static> {
    let mut joined = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            return Hello::NeedMore;
        }
        if rest.first() != Some(&CONTENT_HANDSHAKE) {
            return Hello::Invalid("a record other than a handshake inside the ClientHello");
        }
        let payload = match record(rest) {
            Ok(Some(payload)) => payload,
            Ok(None) if bytes.len() >= MAX_PEEK => return Hello::TooLarge,
            Ok(None) => return Hello::NeedMore,
            Err(e) => return e,
        };
        rest = rest
            .get(RECORD_HEADER + payload.len()..)
            .unwrap_or_default();
        joined.extend_from_slice(payload);
        match handshake_len(&joined) {
            Err(e) => return e,
            Ok(Some(len)) if joined.len() >= HANDSHAKE_HEADER + len => {
                let body = joined
                    .get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + len)
                    .unwrap_or_default();
                return match complete(body) {
                    Hello::Complete { server_name } => Hello::Complete {
                        server_name: server_name.map(|n| Cow::Owned(n.into_owned())),
                    },
                    Hello::NotTls => Hello::NotTls,
                    Hello::NeedMore => Hello::NeedMore,
                    Hello::TooLarge => Hello::TooLarge,
                    Hello::Invalid(why) => Hello::Invalid(why),
                };
            }
            Ok(_) if bytes.len() >= MAX_PEEK => return Hello::TooLarge,
            Ok(_) => {}
        }
    }
}

/// One handshake record's payload: `Ok(None)` while incomplete.
fn record(bytes: &[u8]) -> Result<Option<&[u8]>, Hello<'static>> {
    let Some(&[_, major, minor, high, low]) = bytes.get(..RECORD_HEADER) else {
        // Check what has arrived of the version already.
        return match bytes.get(1) {
            Some(&major) if major != 3 => Err(Hello::Invalid("record version is not TLS")),
            _ => Ok(None),
        };
    };
    if major != 3 || minor > 4 {
        return Err(Hello::Invalid("record version is not TLS"));
    }
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len == 0 {
        return Err(Hello::Invalid("empty handshake record"));
    }
    if len > MAX_RECORD {
        return Err(Hello::Invalid("record longer than 2^14 bytes"));
    }
    Ok(bytes.get(RECORD_HEADER..RECORD_HEADER + len))
}

/// The ClientHello's length from its handshake header: `Ok(None)` while the header is
/// incomplete.
fn handshake_len(payload: &[u8]) -> Result<Option<usize>, Hello<'static>> {
    match payload.first() {
        None => return Ok(None),
        Some(&CLIENT_HELLO) => {}
        Some(_) => {
            return Err(Hello::Invalid(
                "first handshake message is not a ClientHello",
            ))
        }
    }
    let Some(&[_, a, b, c]) = payload.get(..HANDSHAKE_HEADER) else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if len > MAX_CLIENT_HELLO {
        return Err(Hello::TooLarge);
    }
    Ok(Some(len))
}

/// Reads a whole ClientHello body.
fn complete(body: &[u8]) -> Hello<'_> {
    match client_hello(body) {
        Ok(server_name) => Hello::Complete { server_name },
        Err(why) => Hello::Invalid(why),
    }
}

/// A cursor over a byte slice; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        let (head, tail) = (self.0.get(..n).ok_or(what)?, self.0.get(n..).ok_or(what)?);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or_default(),
            b.get(1).copied().unwrap_or_default(),
        ]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The host name of a ClientHello body (RFC 8446 §4.1.2; TLS 1.0–1.2 hellos have the same
/// shape, extensions optional).
fn client_hello(body: &[u8]) -> Result<Option<Cow<'_, str>>, &'static str> {
    let mut r = Reader(body);
    let version = r.u16("truncated version")?;
    if version >> 8 != 3 {
        return Err("client version is not TLS");
    }
    r.take(32, "truncated random")?;
    if r.vec8("truncated session id")?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("malformed cipher suites");
    }
    if r.vec8("truncated compression methods")?.is_empty() {
        return Err("no compression method");
    }
    if r.is_empty() {
        return Ok(None);
    }
    let mut extensions = Reader(r.vec16("truncated extensions")?);
    if !r.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut seen: Vec<u16> = Vec::new();
    let mut server_name = None;
    while !extensions.is_empty() {
        let kind = extensions.u16("truncated extension")?;
        let data = extensions.vec16("truncated extension")?;
        // Most hellos carry 10–20 extensions: a scan beats a set.
        if seen.contains(&kind) {
            return Err("an extension repeated");
        }
        seen.push(kind);
        if kind == EXT_SERVER_NAME {
            server_name = host_name(data)?;
        }
    }
    Ok(server_name.map(Cow::Borrowed))
}

/// The `host_name` of a `server_name` extension (RFC 6066 §3): at most one; other name
/// types are skipped.
fn host_name(data: &[u8]) -> Result<Option<&str>, &'static str> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16("truncated server name list")?);
    if !outer.is_empty() || list.is_empty() {
        return Err("malformed server name list");
    }
    let mut found = None;
    while !list.is_empty() {
        let kind = list.u8("truncated server name")?;
        let name = list.vec16("truncated server name")?;
        if kind != HOST_NAME {
            continue;
        }
        if found.is_some() {
            return Err("two host names");
        }
        found = Some(checked_host(name)?);
    }
    Ok(found)
}

/// A DNS host name as RFC 6066 allows it: ASCII letters, digits, `-`, `_` and `.`, at most 255
/// bytes, no empty label, no trailing dot.
fn checked_host(name: &[u8]) -> Result<&str, &'static str> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 255 || !name.iter().all(allowed) {
        return Err("host name is not a DNS name");
    }
    if name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return Err("host name has an empty label");
    }
    std::str::from_utf8(name).map_err(|_| "host name is not a DNS name")
}

#[cfg(test)]
mod tests;
