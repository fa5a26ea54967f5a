//! What anchors and aliases may copy, counted before anything is copied.
//!
//! An alias repeats its anchor's whole subtree, so a few kilobytes of YAML can describe billions
//! of nodes ("billion laughs"), or repeat one long string a hundred thousand times. One
//! [`Budget`] covers every document of a file and every file read together (a config directory,
//! one control apply): a stream of documents each just under a per-document limit would
//! otherwise still expand without bound.

/// Most nodes that anchors and aliases may copy in one load.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// Most bytes of scalar text that anchors and aliases may copy in one load.
pub const MAX_ALIAS_BYTES: usize = 4 * 1024 * 1024;

/// The size of a subtree: how many nodes it has and how many bytes of text its scalars hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    /// Nodes, the subtree's root included.
    pub(crate) nodes: usize,
    /// Bytes of scalar text.
    pub(crate) bytes: usize,
    /// Levels below the root (0 for a scalar or an empty collection).
    pub(crate) height: usize,
}

impl Cost {
    /// A scalar holding `text`.
    pub(crate) fn scalar(text: &str) -> Self {
        Self {
            nodes: 1,
            bytes: text.len(),
            height: 0,
        }
    }

    /// An empty sequence or mapping, to which children are then [added](Self::add_child).
    pub(crate) fn collection() -> Self {
        Self {
            nodes: 1,
            bytes: 0,
            height: 0,
        }
    }

    /// Counts `child` as one level below this node.
    pub(crate) fn add_child(&mut self, child: Cost) {
        self.nodes = self.nodes.saturating_add(child.nodes);
        self.bytes = self.bytes.saturating_add(child.bytes);
        self.height = self.height.max(child.height.saturating_add(1));
    }
}

/// What copies made by anchors and aliases may still spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    nodes: usize,
    bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            nodes: MAX_ALIAS_NODES,
            bytes: MAX_ALIAS_BYTES,
        }
    }
}

/// A copy the budget cannot pay for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "anchors and aliases copy more than {MAX_ALIAS_NODES} nodes or {MAX_ALIAS_BYTES} bytes of \
     text (one budget for all documents and files read together, against alias bombs); write \
     the repeated parts out or use fewer aliases"
)]
pub(crate) struct Exhausted;

impl Budget {
    /// Pays for copying a subtree of size `cost`, or refuses and spends nothing.
    pub(crate) fn spend(&mut self, cost: Cost) -> Result<(), Exhausted> {
        let nodes = self.nodes.checked_sub(cost.nodes).ok_or(Exhausted)?;
        let bytes = self.bytes.checked_sub(cost.bytes).ok_or(Exhausted)?;
        self.nodes = nodes;
        self.bytes = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_counts_its_children_and_its_height() {
        let mut inner = Cost::collection();
        inner.add_child(Cost::scalar("abc"));
        let mut outer = Cost::collection();
        outer.add_child(inner);
        outer.add_child(Cost::scalar("de"));
        assert_eq!(
            outer,
            Cost {
                nodes: 4,
                bytes: 5,
                height: 2
            }
        );
    }

    #[test]
    fn spending_stops_at_either_limit_and_a_refusal_spends_nothing() {
        let mut budget = Budget::default();
        let nodes = |n| Cost {
            nodes: n,
            ..Cost::default()
        };
        budget.spend(nodes(MAX_ALIAS_NODES - 1)).unwrap();
        assert_eq!(budget.spend(nodes(2)), Err(Exhausted));
        budget.spend(nodes(1)).unwrap();
        assert_eq!(budget.spend(nodes(1)), Err(Exhausted));

        let mut budget = Budget::default();
        let text = Cost {
            bytes: MAX_ALIAS_BYTES,
            ..Cost::scalar("")
        };
        budget.spend(text).unwrap();
        assert_eq!(budget.spend(Cost::scalar("x")), Err(Exhausted));
    }
}
