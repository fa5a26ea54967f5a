//! Path normalisation before matching, so that one resource has one spelling: a route (or a
//! policy) on `/admin` also sees `/public/../admin`, `/public/%2e%2e/admin` and `//admin`.
//!
//! What is normalised, in this order:
//! 1. Percent-escapes of unreserved characters are decoded (RFC 3986 §2.3: `ALPHA / DIGIT /
//!    "-" / "." / "_" / "~"`), so `%2e` is `.` and `%61` is `a`. Every other escape stays as
//!    it is (`%2F` is not a `/`), and so does a `%` not followed by two hex digits. Decoding
//!    is done once: `%252e` is `%252e`.
//! 2. Empty segments are dropped (`//` is `/`).
//! 3. Dot segments are removed (RFC 3986 §5.2.4): `.` goes, `..` takes the segment before it
//!    with it, and a `..` at the root stays at the root (`/../x` is `/x`). A path that ends in
//!    a dot segment ends with `/` (`/a/b/..` is `/a/`).
//!
//! A query (from the first `?`) is kept as it is; a path that does not start with `/` (`*`,
//! an empty one) is returned unchanged.

use std::borrow::Cow;

/// The path as matching sees it (see the [module](self) for what changes).
///
/// Borrows when the path is already normal, the common case: one scan, no allocation.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let (path_part, query) = match path.find('?') {
        Some(at) => path.split_at(at),
        None => (path, ""),
    };
    if !path_part.starts_with('/') || is_normal(path_part.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let mut normal = remove_dot_segments(&decode_unreserved(path_part));
    normal.push_str(query);
    Cow::Owned(normal)
}

/// Whether an absolute path has nothing to normalise: no escape of an unreserved character,
/// no empty segment but the last, no `.` or `..` segment.
fn is_normal(path: &[u8]) -> bool {
    // Just after the last `/` seen; the leading `/` opens the first segment.
    let mut segment_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                if is_removable(path.get(segment_start..i)) {
                    return false;
                }
                segment_start = i + 1;
            }
            b'%' if unreserved_escape(path.get(i + 1..i + 3)).is_some() => return false,
            _ => {}
        }
    }
    // The last segment may be empty (a trailing `/`), not a dot segment.
    !matches!(path.get(segment_start..), Some(b"." | b".."))
}

/// Whether a segment followed by `/` goes: an empty one or a dot segment.
fn is_removable(segment: Option<&[u8]>) -> bool {
    matches!(segment, Some(b"" | b"." | b".."))
}

/// The character a `%XX` escape (`hex` being the two bytes after `%`) stands for, when it is
/// an unreserved one.
fn unreserved_escape(hex: Option<&[u8]>) -> Option<char> {
    let &[high, low] = hex? else {
        return None;
    };
    let value = (hex_digit(high)? << 4) | hex_digit(low)?;
    let c = char::from(value);
    (c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')).then_some(c)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `path` with the escapes of unreserved characters decoded, once.
fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        let (before, escape) = rest.split_at(at);
        out.push_str(before);
        // `%` and the characters decoded are ASCII: every offset below is a char boundary.
        match unreserved_escape(escape.as_bytes().get(1..3)) {
            Some(c) => {
                out.push(c);
                rest = escape.get(3..).unwrap_or_default();
            }
            None => {
                out.push('%');
                rest = escape.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// An absolute path without empty or dot segments (RFC 3986 §5.2.4, with `//` merged).
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // Skips what precedes the leading `/`.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            _ => {
                out.push('/');
                out.push_str(segment);
            }
        }
        if last && matches!(segment, "" | "." | "..") {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        let cases = [
            // Already normal: borrowed.
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a.b/..c/c../...", "/a.b/..c/c../..."),
            // Dot segments.
            ("/public/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../../..", "/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/../x", "/x"),
            ("/../../x/../y", "/y"),
            // Escapes of unreserved characters, any case.
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2E./admin", "/admin"),
            ("/a/%2e/b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/%7euser/%5F%2D", "/~user/_-"),
            // Escapes of other characters stay, as do invalid ones; one decoding only.
            ("/public/%2e%2e%2fadmin", "/public/..%2fadmin"),
            ("/a%2Fb/%2e", "/a%2Fb/"),
            ("/a%20b", "/a%20b"),
            ("/%", "/%"),
            ("/%2", "/%2"),
            ("/%zz/%2e", "/%zz/"),
            ("/%%2e%2e", "/%.."),
            ("/%252e%252e/x", "/%252e%252e/x"),
            // Empty segments.
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("//", "/"),
            ("/a//", "/a/"),
            // The query is left alone.
            ("/a/../b?x=/../y&p=%2e", "/b?x=/../y&p=%2e"),
            ("/a?b/../c", "/a?b/../c"),
            ("/a/%2e?", "/a/?"),
            // Not absolute: unchanged.
            ("*", "*"),
            ("", ""),
            ("a/../b", "a/../b"),
            // Non-ASCII bytes pass through.
            ("/é/../ü", "/ü"),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), want, "{path:?}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for path in ["/", "/a/b", "/a/b/", "/a%2Fb", "/a?x=/../y", "*"] {
            assert!(matches!(normalize_path(path), Cow::Borrowed(_)), "{path:?}");
        }
        assert!(matches!(normalize_path("/a/./b"), Cow::Owned(_)));
    }

    /// Every path of up to six characters over an alphabet of the interesting ones: the scan
    /// says "normal" exactly when normalising changes nothing, and a normalised path contains
    /// no empty segment but the last and no dot segment.
    #[test]
    fn the_scan_agrees_with_the_rewrite_on_every_short_path() {
        const ALPHABET: [char; 7] = ['/', '.', '%', '2', 'e', 'a', 'F'];
        let mut paths = vec![String::from("/")];
        let mut start = 0;
        for _ in 0..6 {
            let end = paths.len();
            for i in start..end {
                for c in ALPHABET {
                    let mut longer = paths[i].clone();
                    longer.push(c);
                    paths.push(longer);
                }
            }
            start = end;
        }
        for path in &paths {
            let rewritten = remove_dot_segments(&decode_unreserved(path));
            assert_eq!(
                is_normal(path.as_bytes()),
                rewritten == *path,
                "{path:?} → {rewritten:?}"
            );
            assert!(rewritten.starts_with('/'), "{path:?} → {rewritten:?}");
            let inner = rewritten.strip_suffix('/').unwrap_or(&rewritten);
            for segment in inner.split('/').skip(1) {
                assert!(
                    !matches!(segment, "" | "." | ".."),
                    "{path:?} → {rewritten:?}"
                );
            }
        }
    }
}
