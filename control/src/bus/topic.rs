//! Topic syntax and subscription patterns: pure functions, no I/O.
//!
//! A topic is 1 to [`MAX_SEGMENTS`] dot-separated segments of `[A-Za-z0-9_-]`, at most
//! [`MAX_TOPIC_LEN`] characters (`mesh.config.applied`). A pattern may also use `*` for exactly
//! one segment and, as its last segment only, `>` for one or more remaining segments.

use super::error::BusError;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 16;

fn segment_chars_ok(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why `text` is not well-formed as dot-separated segments, if it is not; `wildcards` allows
/// `*` and a final `>`.
fn syntax_error(text: &str, wildcards: bool) -> Option<String> {
    if text.is_empty() {
        return Some("it is empty".into());
    }
    if text.len() > MAX_TOPIC_LEN {
        return Some(format!("it is {} characters long", text.len()));
    }
    let count = text.split('.').count();
    if count > MAX_SEGMENTS {
        return Some(format!("it has {count} segments"));
    }
    for (i, segment) in text.split('.').enumerate() {
        if segment.is_empty() {
            return Some(format!("segment {} is empty", i + 1));
        }
        if wildcards && segment == "*" {
            continue;
        }
        if wildcards && segment == ">" {
            if i + 1 == count {
                continue;
            }
            return Some("`>` may only be the last segment".into());
        }
        if !segment_chars_ok(segment) {
            return Some(format!(
                "segment `{segment}` has a character other than letters, digits, `_` and `-`"
            ));
        }
    }
    None
}

/// Checks that `topic` is a valid (wildcard-free) topic.
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    match syntax_error(topic, false) {
        None => Ok(()),
        Some(reason) => Err(BusError::InvalidTopic {
            topic: topic.chars().take(MAX_TOPIC_LEN).collect(),
            reason,
        }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `>` (always last)
    Rest,
}

/// A compiled subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Compiles `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, BusError> {
        if let Some(reason) = syntax_error(text, true) {
            return Err(BusError::InvalidPattern {
                pattern: text.chars().take(MAX_TOPIC_LEN).collect(),
                reason,
            });
        }
        let segments = text
            .split('.')
            .map(|s| match s {
                "*" => Segment::One,
                ">" => Segment::Rest,
                literal => Segment::Literal(literal.to_owned()),
            })
            .collect();
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` (assumed valid) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match segment {
                // `>` is last: it needs at least one more segment and takes all of them.
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if parts.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, topic: &str) -> bool {
        validate_topic(topic).expect("valid topic");
        Pattern::parse(pattern)
            .expect("valid pattern")
            .matches(topic)
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(matches("mesh.config.applied", "mesh.config.applied"));
        assert!(!matches("mesh.config.applied", "mesh.config.rejected"));
        assert!(!matches("mesh.config", "mesh.config.applied"));
        assert!(!matches("mesh.config.applied", "mesh.config"));
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(matches("mesh.*.applied", "mesh.config.applied"));
        assert!(matches("*", "orders"));
        assert!(matches("*.*", "a.b"));
        assert!(!matches("mesh.*", "mesh"));
        assert!(!matches("mesh.*", "mesh.config.applied"));
        assert!(!matches("*.applied", "mesh.config.applied"));
    }

    #[test]
    fn greater_than_matches_one_or_more_remaining_segments() {
        assert!(matches("mesh.>", "mesh.config"));
        assert!(matches("mesh.>", "mesh.config.applied.v2"));
        assert!(!matches("mesh.>", "mesh"));
        assert!(!matches("mesh.>", "orders.created"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("*.config.>", "mesh.config.applied"));
        assert!(!matches("*.config.>", "mesh.config"));
    }

    #[test]
    fn topic_syntax_is_checked() {
        let sixteen = "a.".repeat(MAX_SEGMENTS - 1) + "b";
        for good in ["a", "mesh.config.applied", "A-b_c.0", &sixteen] {
            assert!(validate_topic(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        let deep = "a.".repeat(MAX_SEGMENTS) + "b";
        for bad in [
            "", ".", "a..b", "a.", ".a", "a b", "a/b", "a.*", "a.>", "é", &long, &deep,
        ] {
            let err = validate_topic(bad).expect_err(bad);
            assert!(matches!(err, BusError::InvalidTopic { .. }), "{bad}");
        }
    }

    #[test]
    fn pattern_syntax_is_checked() {
        for good in ["a", "*", ">", "a.*.c", "a.>", "*.*.>"] {
            assert!(Pattern::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a.>.c", ">.a", "a..b", "a.b*", "a.>x", "a.**"] {
            let err = Pattern::parse(bad).expect_err(bad);
            assert!(matches!(err, BusError::InvalidPattern { .. }), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = validate_topic("a..b")
            .expect_err("empty segment")
            .to_string();
        assert!(err.contains("segment 2 is empty"), "{err}");
        let err = Pattern::parse("a.>.c").expect_err("inner >").to_string();
        assert!(err.contains("may only be the last"), "{err}");
    }
}
