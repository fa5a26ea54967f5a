//! A per-subscriber priority queue: highest priority first, FIFO within a priority.

use std::collections::VecDeque;

use super::event::Priority;

/// Four FIFO lanes, one per priority. Pushing and popping are O(1).
#[derive(Debug)]
pub(crate) struct PriorityQueue<T> {
    lanes: [VecDeque<T>; 4],
    len: usize,
}

impl<T> Default for PriorityQueue<T> {
    fn default() -> Self {
        Self {
            lanes: Default::default(),
            len: 0,
        }
    }
}

impl<T> PriorityQueue<T> {
    /// Appends `item` to the lane of `priority`.
    pub fn push(&mut self, priority: Priority, item: T) {
        if let Some(lane) = self.lanes.get_mut(usize::from(priority.rank())) {
            lane.push_back(item);
            self.len += 1;
        }
    }

    /// The oldest item of the highest non-empty priority.
    pub fn pop(&mut self) -> Option<T> {
        let item = self
            .lanes
            .iter_mut()
            .rev()
            .find_map(|lane| lane.pop_front())?;
        self.len -= 1;
        Some(item)
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priorities_first_fifo_within_one() {
        let mut q = PriorityQueue::default();
        q.push(Priority::Low, "low-1");
        q.push(Priority::Normal, "normal-1");
        q.push(Priority::Critical, "critical-1");
        q.push(Priority::Low, "low-2");
        q.push(Priority::High, "high-1");
        q.push(Priority::Critical, "critical-2");
        q.push(Priority::Normal, "normal-2");
        assert_eq!(q.len(), 7);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                "critical-1",
                "critical-2",
                "high-1",
                "normal-1",
                "normal-2",
                "low-1",
                "low-2"
            ]
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn interleaved_pushes_and_pops_keep_the_order() {
        let mut q = PriorityQueue::default();
        q.push(Priority::Low, 1);
        q.push(Priority::High, 2);
        assert_eq!(q.pop(), Some(2));
        q.push(Priority::Normal, 3);
        q.push(Priority::Low, 4);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.pop(), None);
    }
}
