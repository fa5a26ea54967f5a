//! Reading serde types from a [`Node`] tree, with errors that know their line and field path.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};

use crate::error::{FieldPath, Mark, PathSeg};
use crate::yaml::{Node, NodeKind};

/// A value that does not fit the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeError {
    /// What is wrong.
    pub message: String,
    /// Field path to the offending value (for an unknown field, including that field).
    pub path: FieldPath,
    /// Where the offending node starts.
    pub mark: Mark,
}

/// Deserializes `T` from `node`.
///
/// The error is boxed: it carries a field path, and the success path should not pay for moving
/// it around.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, Box<DeError>> {
    T::deserialize(NodeDe(node)).map_err(|e| {
        let mut segs = e.rev_path;
        segs.reverse();
        Box::new(DeError {
            message: e.message,
            path: FieldPath::from(segs),
            mark: e.mark.unwrap_or(node.mark),
        })
    })
}

/// The error while bubbling up: the innermost node fills `mark`, each level adds its path step.
#[derive(Debug)]
pub struct Error {
    message: String,
    mark: Option<Mark>,
    rev_path: Vec<PathSeg>,
}

impl Error {
    fn at(mut self, mark: Mark) -> Self {
        self.mark.get_or_insert(mark);
        self
    }

    fn under(mut self, seg: PathSeg) -> Self {
        self.rev_path.push(seg);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            mark: None,
            rev_path: Vec::new(),
        }
    }
}

struct NodeDe<'a>(&'a Node);

impl<'a> NodeDe<'a> {
    fn scalar(&self) -> Option<&'a str> {
        self.0.as_str()
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match &self.0.kind {
            NodeKind::Scalar { value, .. } => Unexpected::Str(value),
            NodeKind::Seq(_) => Unexpected::Seq,
            NodeKind::Map(_) => Unexpected::Map,
        }
    }

    fn expected_text(&self, what: &'static str) -> Error {
        match self.scalar() {
            Some(text) => de::Error::custom(format!("expected {what}, found `{text}`")),
            None => de::Error::invalid_type(self.unexpected(), &what),
        }
    }
}

fn parse_int(text: &str) -> Option<Result<i64, u64>> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        u64::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    if neg {
        i64::try_from(magnitude).ok().map(|m| Ok(-m))
    } else {
        Some(Err(magnitude))
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" => Some(f64::NAN),
        _ if text.bytes().any(|b| b.is_ascii_digit())
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

macro_rules! integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let mark = self.0.mark;
            match self.scalar().and_then(parse_int) {
                Some(Ok(negative)) => visitor.visit_i64(negative),
                Some(Err(positive)) => visitor.visit_u64(positive),
                None => Err(self.expected_text("an integer")),
            }
            .map_err(|e: Error| e.at(mark))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let mark = self.0.mark;
        match &self.0.kind {
            NodeKind::Scalar {
                value,
                plain: false,
            } => visitor.visit_str(value),
            NodeKind::Scalar { value, plain: true } => {
                if self.0.is_null() {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(value) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_int(value) {
                    match i {
                        Ok(negative) => visitor.visit_i64(negative),
                        Err(positive) => visitor.visit_u64(positive),
                    }
                } else if let Some(f) = parse_float(value) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                index: 0,
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            }),
        }
        .map_err(|e: Error| e.at(mark))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar().and_then(parse_bool) {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.expected_text("true or false")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    integer! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar().and_then(parse_float) {
            Some(f) => visitor.visit_f64(f),
            None => Err(self.expected_text("a number")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(text) => visitor.visit_str(text),
            None => Err(de::Error::invalid_type(self.unexpected(), &"a string")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(text) => visitor.visit_bytes(text.as_bytes()),
            None => Err(de::Error::invalid_type(self.unexpected(), &"a string")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.0.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.0.is_null() {
            visitor.visit_unit()
        } else {
            Err(
                <Error as de::Error>::invalid_type(self.unexpected(), &"nothing (null)")
                    .at(self.0.mark),
            )
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.0.kind {
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                index: 0,
            }),
            _ if self.0.is_null() => visitor.visit_seq(SeqAccess {
                items: [].iter(),
                index: 0,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a list")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.0.kind {
            NodeKind::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            }),
            _ if self.0.is_null() => visitor.visit_map(MapAccess {
                entries: [].iter(),
                value: None,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a mapping")),
        }
        .map_err(|e: Error| e.at(self.0.mark))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mark = self.0.mark;
        match &self.0.kind {
            NodeKind::Scalar { value, .. } => {
                visitor.visit_enum(value.as_str().into_deserializer())
            }
            NodeKind::Map(entries) if entries.len() == 1 => match entries.first() {
                Some((key, value)) => visitor.visit_enum(EnumAccess { key, value }),
                None => Err(de::Error::custom("expected a variant")),
            },
            _ => Err(de::Error::invalid_type(
                self.unexpected(),
                &"one of the listed values",
            )),
        }
        .map_err(|e: Error| e.at(mark))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(NodeDe(item))
            .map(Some)
            .map_err(|e| e.at(item.mark).under(PathSeg::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<(&'a Node, &'a Node)>,
}

fn key_seg(key: &Node) -> PathSeg {
    PathSeg::Key(key.as_str().unwrap_or("?").to_owned().into())
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(NodeDe(key))
            .map(Some)
            .map_err(|e| e.at(key.mark).under(key_seg(key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("value without a key"));
        };
        seed.deserialize(NodeDe(value))
            .map_err(|e| e.at(value.mark).under(key_seg(key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = Error;
    type Variant = NodeDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), Error> {
        let variant = seed
            .deserialize(NodeDe(self.key))
            .map_err(|e| e.at(self.key.mark))?;
        Ok((variant, NodeDe(self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::parse_documents;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Doc {
        spec: Spec,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        endpoints: Vec<Ep>,
        #[serde(default)]
        max_items: Option<u32>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        kind: Option<Kind>,
        #[serde(default)]
        either: Option<Either>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Ep {
        name: String,
        #[serde(default)]
        weight: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Kind {
        Exact,
        Prefix,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Pair { a: u32 },
    }

    fn parse(text: &str) -> Result<Doc, Box<DeError>> {
        from_node(&parse_documents(text).unwrap()[0].root)
    }

    #[test]
    fn reads_a_document() {
        let doc = parse("spec:\n  endpoints: [{name: a, weight: 3}, {name: \"true\"}, {name: 1}]\n  maxItems: 7\n  labels: {x: 1}\n  kind: Exact\n").unwrap();
        assert_eq!(
            doc.spec.endpoints[0],
            Ep {
                name: "a".into(),
                weight: 3
            }
        );
        assert_eq!(doc.spec.endpoints[1].name, "true");
        assert_eq!(doc.spec.endpoints[2].name, "1");
        assert_eq!(doc.spec.max_items, Some(7));
        assert_eq!(doc.spec.labels["x"], "1");
        assert_eq!(doc.spec.kind, Some(Kind::Exact));
    }

    #[test]
    fn null_option_and_untagged() {
        let doc = parse("spec:\n  maxItems: ~\n  either: hello\n").unwrap();
        assert_eq!(doc.spec.max_items, None);
        assert_eq!(doc.spec.either, Some(Either::Text("hello".into())));
        let doc = parse("spec:\n  either: {a: 2}\n").unwrap();
        assert_eq!(doc.spec.either, Some(Either::Pair { a: 2 }));
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let err = parse("spec:\n  endpoints:\n    - name: a\n    - name: b\n      wieght: 2\n")
            .unwrap_err();
        assert_eq!(err.path.to_string(), "spec.endpoints[1].wieght");
        assert_eq!(err.mark, Mark { line: 5, column: 7 });
        assert!(
            err.message.starts_with("unknown field `wieght`, expected"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        let err = parse("spec:\n  endpoints:\n    - weight: 2\n").unwrap_err();
        assert_eq!(err.path.to_string(), "spec.endpoints[0]");
        assert_eq!(err.mark.line, 3);
        assert!(
            err.message.contains("missing field `name`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_value_points_at_the_value() {
        let err = parse("spec:\n  endpoints:\n    - {name: a}\n    - {name: b, weight: heavy}\n")
            .unwrap_err();
        assert_eq!(err.path.to_string(), "spec.endpoints[1].weight");
        assert_eq!(
            err.mark,
            Mark {
                line: 4,
                column: 25
            }
        );
        assert_eq!(err.message, "expected an integer, found `heavy`");
        let err = parse("spec:\n  maxItems: -1\n").unwrap_err();
        assert!(err.message.contains("invalid value"), "{}", err.message);
        let err = parse("spec:\n  kind: Fuzzy\n").unwrap_err();
        assert_eq!(err.path.to_string(), "spec.kind");
        assert!(
            err.message.contains("unknown variant `Fuzzy`"),
            "{}",
            err.message
        );
    }
}
