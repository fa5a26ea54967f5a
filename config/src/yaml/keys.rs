//! Finding a duplicate mapping key in constant time per key.

use std::collections::HashSet;
use std::hash::BuildHasher;

use super::Node;

/// The scalar keys of one mapping, to find a duplicate in constant time per key: a mapping of
/// n keys must not cost n² comparisons (160,000 keys took 28 s that way).
#[derive(Default)]
pub(super) struct KeySet {
    /// Hashes of the keys so far, once the mapping outgrows a short scan. The set's own
    /// randomly keyed hasher makes them, so input cannot be crafted to collide.
    hashes: Option<HashSet<u64>>,
}

/// Keys a mapping may have before [`KeySet`] hashes them (a scan of a few is cheaper than a set
/// for each of the many small mappings of a config).
const SCANNED_KEYS: usize = 8;

impl KeySet {
    /// Records key `name` of a mapping whose entries so far are `entries`; returns the earlier
    /// key with the same text, if any.
    pub(super) fn insert<'e>(
        &mut self,
        entries: &'e [(Node, Node)],
        name: &str,
    ) -> Option<&'e Node> {
        let earlier = || {
            entries
                .iter()
                .map(|(k, _)| k)
                .find(|k| k.as_str() == Some(name))
        };
        if entries.len() < SCANNED_KEYS {
            return earlier();
        }
        let hashes = self.hashes.get_or_insert_with(|| {
            let mut hashes = HashSet::with_capacity(entries.len() * 2);
            for key in entries.iter().filter_map(|(k, _)| k.as_str()) {
                hashes.insert(hashes.hasher().hash_one(key));
            }
            hashes
        });
        // A hash seen before is a duplicate, or (about never) a collision: the scan tells.
        let hash = hashes.hasher().hash_one(name);
        if hashes.insert(hash) {
            None
        } else {
            earlier()
        }
    }
}
