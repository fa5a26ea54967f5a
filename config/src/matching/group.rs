//! The per-host rule list and its path index: a lookup in a table of thousands of rules looks
//! only at the few that can match.

use std::collections::HashMap;

use super::{MatchEntry, PathMatch, RequestView};

/// Groups up to this size are scanned in order; larger ones use the path index.
const LINEAR_MAX: usize = 16;
/// Most index lists one lookup merges (1 unindexed + 1 exact + path segments); deeper paths
/// fall back to the ordered scan.
const MAX_LISTS: usize = 24;

/// Candidate lists of one lookup, on the stack.
struct Lists<'a> {
    lists: [&'a [u32]; MAX_LISTS],
    n: usize,
}

impl<'a> Lists<'a> {
    /// Adds a non-empty list; false when there is no room left.
    fn push(&mut self, list: &'a [u32]) -> bool {
        if list.is_empty() {
            return true;
        }
        let Some(slot) = self.lists.get_mut(self.n) else {
            return false;
        };
        *slot = list;
        self.n += 1;
        true
    }
}

/// The match entries one host sees, in precedence order, with an index by path so that a
/// lookup in a table of thousands of rules only looks at the few that can match.
///
/// Every entry is in exactly one list: `exact[path]` (Exact paths), `prefix[p]` (segment-aware
/// prefixes other than `/`), or `unindexed` (regexes, `/`, no path). A request's candidates are
/// `unindexed`, `exact[its path]` and `prefix[q]` for every segment boundary `q` of its path;
/// merging those ascending lists and taking the first full match gives exactly the entry the
/// ordered scan would find.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) entries: Vec<MatchEntry>,
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: HashMap<Box<str>, Vec<u32>>,
    unindexed: Vec<u32>,
}

impl Group {
    pub(super) fn new(entries: Vec<MatchEntry>) -> Self {
        let mut group = Self {
            entries,
            ..Self::default()
        };
        if group.entries.len() <= LINEAR_MAX {
            return group;
        }
        for (i, e) in group.entries.iter().enumerate() {
            let i = i as u32;
            match &e.matcher.path {
                Some(PathMatch::Exact(p)) => {
                    group.exact.entry(p.as_str().into()).or_default().push(i)
                }
                Some(PathMatch::Prefix(p)) if p != "/" => {
                    group.prefix.entry(p.as_str().into()).or_default().push(i)
                }
                _ => group.unindexed.push(i),
            }
        }
        group
    }

    pub(super) fn find(&self, req: &RequestView<'_>) -> Option<&MatchEntry> {
        if self.entries.len() <= LINEAR_MAX {
            return self.entries.iter().find(|e| e.matcher.matches(req));
        }
        let mut lists = Lists {
            lists: [&[]; MAX_LISTS],
            n: 0,
        };
        let path = req.path;
        let mut indexed = lists.push(&self.unindexed);
        if let Some(l) = self.exact.get(path) {
            indexed &= lists.push(l);
        }
        // Segment boundaries: every prefix followed by `/`, and the whole path.
        let boundaries = path
            .bytes()
            .enumerate()
            .filter(|&(i, b)| b == b'/' && i > 0)
            .map(|(i, _)| i)
            .chain(std::iter::once(path.len()));
        for end in boundaries {
            if let Some(l) = path.get(..end).and_then(|p| self.prefix.get(p)) {
                indexed &= lists.push(l);
            }
        }
        if !indexed {
            return self.entries.iter().find(|e| e.matcher.matches(req));
        }
        let (lists, n) = (lists.lists, lists.n);
        let mut cursors = [0usize; MAX_LISTS];
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (l, list) in lists.iter().enumerate().take(n) {
                if let Some(&idx) = list.get(cursors[l]) {
                    if best.is_none_or(|(_, b)| idx < b) {
                        best = Some((l, idx));
                    }
                }
            }
            let (l, idx) = best?;
            cursors[l] += 1;
            let entry = self.entries.get(idx as usize)?;
            if entry.matcher.matches(req) {
                return Some(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::snapshot::Serves;

    #[test]
    fn the_path_index_finds_what_an_ordered_scan_finds() {
        // 60 rules of every kind, so the group is indexed; compare with a plain ordered scan.
        let mut rules = String::new();
        for i in 0..15 {
            rules.push_str(&format!("    - {{matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}], backendRefs: [{{name: s}}]}}\n"));
            rules.push_str(&format!("    - {{matches: [{{path: {{type: PathPrefix, value: /p{i}/deep}}, method: POST}}], backendRefs: [{{name: s}}]}}\n"));
            rules.push_str(&format!("    - {{matches: [{{path: {{type: Exact, value: /p{i}/x}}}}], backendRefs: [{{name: s}}]}}\n"));
            rules.push_str(&format!("    - {{matches: [{{path: {{type: RegularExpression, value: \"/p{i}/r[0-9]+\"}}, headers: [{{name: x-v, value: \"1\"}}]}}], backendRefs: [{{name: s}}]}}\n"));
        }
        rules.push_str(
            "    - {matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: s}]}\n",
        );
        let s = super::super::tests::table(&super::super::tests::route("r", "[]", &rules));
        let Serves::Http(t) = &s.listeners[0].serves else {
            panic!("http listener")
        };
        let group = &t.any_host;
        assert!(group.entries.len() > LINEAR_MAX && !group.prefix.is_empty());
        let headers: HeaderMap = [(
            http::HeaderName::from_static("x-v"),
            HeaderValue::from_static("1"),
        )]
        .into_iter()
        .collect();
        let paths = [
            "/",
            "/p3",
            "/p3/",
            "/p3/x",
            "/p3/x/y",
            "/p3/deep",
            "/p3/deep/z",
            "/p3/r12",
            "/p31",
            "/p14/r1",
            "/q",
            "/p7/deeper",
            "//p2",
        ];
        for path in paths {
            for method in [Method::GET, Method::POST] {
                for h in [HeaderMap::new(), headers.clone()] {
                    let view = RequestView {
                        host: "h",
                        path,
                        query: None,
                        method: &method,
                        headers: &h,
                    };
                    let indexed = group.find(&view).map(|e| e.order);
                    let scanned = group
                        .entries
                        .iter()
                        .find(|e| e.matcher.matches(&view))
                        .map(|e| e.order);
                    assert_eq!(indexed, scanned, "{method} {path}");
                }
            }
        }
    }
}
