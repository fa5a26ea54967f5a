//! Configuration errors: each names the file, line, column and field path of what is wrong.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use smallvec::SmallVec;

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A mapping key, e.g. `spec`.
    Key(Cow<'static, str>),
    /// A sequence index, e.g. `[0]`.
    Index(usize),
}

/// Where in a document a value sits, e.g. `spec.rules[0].backendRefs[1].name`.
///
/// Compiling builds a path for every field it checks, and nearly all of them are never used
/// (only an error keeps one), so the segments live inline: extending a path copies a few words
/// instead of allocating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(SmallVec<[PathSeg; INLINE_SEGMENTS]>);

/// Segments a path holds without allocating: `spec.rules[0].matches[0].headers[0].name` is 8.
const INLINE_SEGMENTS: usize = 8;

impl FieldPath {
    /// The empty path: the document root.
    pub fn root() -> Self {
        Self(SmallVec::new())
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: impl Into<Cow<'static, str>>) -> Self {
        self.extended(PathSeg::Key(key.into()))
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        self.extended(PathSeg::Index(index))
    }

    fn extended(&self, segment: PathSeg) -> Self {
        let mut segs = SmallVec::with_capacity(self.0.len() + 1);
        segs.extend(self.0.iter().cloned());
        segs.push(segment);
        Self(segs)
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[PathSeg] {
        &self.0
    }
}

impl From<Vec<PathSeg>> for FieldPath {
    fn from(segments: Vec<PathSeg>) -> Self {
        Self(SmallVec::from_vec(segments))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                PathSeg::Key(k) if i == 0 => write!(f, "{k}")?,
                PathSeg::Key(k) => write!(f, ".{k}")?,
                PathSeg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A position in a YAML text, both 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// One thing wrong with the configuration, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it came from (or a label such as `<control>` for pushed config).
    pub file: PathBuf,
    /// Line and column of the offending node.
    pub mark: Mark,
    /// Field path inside the document, e.g. `spec.rules[0].backendRefs[0].name`.
    pub path: FieldPath,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.mark.line,
            self.mark.column,
            self.path,
            self.message
        )
    }
}

/// Every error found in a configuration set; a set with any error is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in file and line order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never true for a returned error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
