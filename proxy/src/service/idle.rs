//! An endpoint's idle keep-alive connections, last in first out.
//!
//! The connection given back last is the one taken next, as in Envoy's, hyper's and Go's
//! pools. After a burst opened many connections, traffic that needs one at a time keeps
//! using the same one — never near the upstream's keep-alive timeout, so seldom lost to the
//! race with it — while the others idle until the upstream closes them and the pool's sweep
//! lets them go. A first-in-first-out queue (this pool's first form) sent such traffic round
//! every connection the burst opened, keeping all of them open, each used just often enough
//! to live and so idling close to the upstream's timeout.
//!
//! Lock-free and allocation-free after construction: two Treiber stacks over one fixed array
//! of slots, one of the slots holding connections and one of the empty slots, each head
//! carrying a generation (no ABA); a connection moves into and out of its slot by one atomic
//! swap.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::atomic::AtomicCell;

/// No slot: the bottom of a stack.
const NIL: u32 = u32::MAX;

/// One place for a value; on one of the two stacks at any time, or held by the one thread
/// moving a value in or out.
struct Slot<T> {
    /// The value, while the slot is on the stack of values.
    value: AtomicCell<Option<Box<T>>>,
    /// The slot below this one on its stack.
    next: AtomicU32,
}

/// At most `capacity` values, the last pushed popped first.
pub struct IdleStack<T> {
    slots: Box<[Slot<T>]>,
    /// The stack of slots holding values: see [`Head`].
    values: AtomicU64,
    /// The stack of empty slots.
    free: AtomicU64,
    /// Values on the stack (counted before they can be popped: never below zero).
    len: AtomicUsize,
}

impl<T> IdleStack<T> {
    /// An empty stack holding at most `capacity` values (at least 1, at most `u32::MAX - 1`).
    pub fn new(capacity: usize) -> Self {
        // Moving a value in or out is one atomic instruction, not a lock (checked at compile
        // time).
        const { assert!(AtomicCell::<Option<Box<T>>>::is_lock_free()) };
        let capacity = capacity.clamp(1, (NIL - 1) as usize) as u32;
        Self {
            // Every slot on the free stack, slot 0 on top.
            slots: (0..capacity)
                .map(|i| Slot {
                    value: AtomicCell::new(None),
                    next: AtomicU32::new(if i + 1 < capacity { i + 1 } else { NIL }),
                })
                .collect(),
            values: AtomicU64::new(Head::EMPTY),
            free: AtomicU64::new(0),
            len: AtomicUsize::new(0),
        }
    }

    /// Puts `value` on top; gives it back when the stack is full.
    pub fn push(&self, value: Box<T>) -> Result<(), Box<T>> {
        let Some(index) = self.take_slot(&self.free) else {
            return Err(value);
        };
        // Off both stacks: this thread's alone until it is put on one.
        self.slots[index as usize].value.store(Some(value));
        self.len.fetch_add(1, Ordering::Relaxed);
        self.put_slot(&self.values, index);
        Ok(())
    }

    /// Takes the value pushed last.
    pub fn pop(&self) -> Option<Box<T>> {
        let index = self.take_slot(&self.values)?;
        let value = self.slots[index as usize].value.take();
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.put_slot(&self.free, index);
        value
    }

    /// Values on the stack now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the stack holds nothing now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the top slot off the stack whose head is `head`.
    fn take_slot(&self, head: &AtomicU64) -> Option<u32> {
        let mut top = head.load(Ordering::Acquire);
        loop {
            let index = Head::slot(top)?;
            // Stale when another thread took this slot meanwhile; the generation in the head
            // has then moved on and the exchange below fails.
            let below = self.slots[index as usize].next.load(Ordering::Relaxed);
            match head.compare_exchange_weak(
                top,
                Head::after(top, below),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(index),
                Err(current) => top = current,
            }
        }
    }

    /// Puts slot `index`, which this thread holds, on top of the stack whose head is `head`.
    fn put_slot(&self, head: &AtomicU64, index: u32) {
        let slot = &self.slots[index as usize];
        let mut top = head.load(Ordering::Acquire);
        loop {
            slot.next.store(top as u32, Ordering::Relaxed);
            match head.compare_exchange_weak(
                top,
                Head::after(top, index),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(current) => top = current,
            }
        }
    }
}

/// A stack's head: a generation in the high 32 bits, bumped by every change, so that a
/// thread whose view of the top is stale fails its exchange even when the same slot is back
/// on top (no ABA); the top slot in the low 32 bits ([`NIL`] when empty).
struct Head;

impl Head {
    const EMPTY: u64 = NIL as u64;

    /// The top slot of `head`, if any.
    fn slot(head: u64) -> Option<u32> {
        let index = head as u32;
        (index != NIL).then_some(index)
    }

    /// The head that follows `head` with `top` on top.
    fn after(head: u64, top: u32) -> u64 {
        ((head >> 32).wrapping_add(1) << 32) | u64::from(top)
    }
}

impl<T> std::fmt::Debug for IdleStack<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStack")
            .field("len", &self.len())
            .field("capacity", &self.slots.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn last_in_first_out() {
        let stack = IdleStack::new(4);
        for i in 0..3 {
            assert!(stack.push(Box::new(i)).is_ok());
        }
        assert_eq!(stack.len(), 3);
        assert_eq!(stack.pop().as_deref(), Some(&2));
        assert!(stack.push(Box::new(7)).is_ok());
        assert_eq!(stack.pop().as_deref(), Some(&7));
        assert_eq!(stack.pop().as_deref(), Some(&1));
        assert_eq!(stack.pop().as_deref(), Some(&0));
        assert_eq!(stack.pop(), None);
        assert!(stack.is_empty());
    }

    #[test]
    fn a_stale_view_of_the_top_fails_even_with_the_same_slot_back_on_top() {
        // The ABA interleaving, played out by hand: a thread about to take the top slot has
        // read the head and the slot below; before its exchange, another takes the top value
        // and gives one back, into the same slot, which is on top again.
        let stack = IdleStack::new(4);
        assert!(stack.push(Box::new(1)).is_ok());
        assert!(stack.push(Box::new(2)).is_ok());
        let seen = stack.values.load(Ordering::Acquire);
        let top = Head::slot(seen).expect("a top slot");
        let below = stack.slots[top as usize].next.load(Ordering::Relaxed);

        assert_eq!(stack.pop().as_deref(), Some(&2));
        assert!(stack.push(Box::new(3)).is_ok());
        let now = stack.values.load(Ordering::Acquire);
        assert_eq!(Head::slot(now), Some(top), "the same slot is back on top");

        let stale = stack.values.compare_exchange(
            seen,
            Head::after(seen, below),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        assert!(stale.is_err(), "a stale exchange went through");
        assert_eq!(stack.pop().as_deref(), Some(&3));
        assert_eq!(stack.pop().as_deref(), Some(&1));
    }

    #[test]
    fn full_stack_gives_the_value_back() {
        let stack = IdleStack::new(2);
        assert!(stack.push(Box::new(1)).is_ok());
        assert!(stack.push(Box::new(2)).is_ok());
        assert_eq!(stack.push(Box::new(3)).err().as_deref(), Some(&3));
        assert_eq!(stack.pop().as_deref(), Some(&2));
        assert!(stack.push(Box::new(4)).is_ok());
        assert_eq!(stack.len(), 2);
    }

    #[test]
    fn zero_capacity_holds_one() {
        let stack = IdleStack::new(0);
        assert!(stack.push(Box::new(1)).is_ok());
        assert!(stack.push(Box::new(2)).is_err());
    }

    #[test]
    fn dropping_the_stack_drops_what_it_holds() {
        let value = Arc::new(());
        let stack = IdleStack::new(2);
        assert!(stack.push(Box::new(value.clone())).is_ok());
        drop(stack);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    /// Threads push and pop at once: every value comes out exactly once.
    #[test]
    fn concurrent_pushes_and_pops_lose_and_duplicate_nothing() {
        const THREADS: u32 = 4;
        const PER_THREAD: u32 = 200_000;
        let stack = Arc::new(IdleStack::new(4));
        let start = Arc::new(std::sync::Barrier::new(THREADS as usize));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (stack, start) = (stack.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut taken = Vec::new();
                    start.wait();
                    for i in 0..PER_THREAD {
                        let mut value = Box::new(t * PER_THREAD + i);
                        // Full: take one out to make room (it is this thread's now).
                        while let Err(back) = stack.push(value) {
                            value = back;
                            if let Some(v) = stack.pop() {
                                taken.push(*v);
                            }
                        }
                        if i % 3 == 0 {
                            if let Some(v) = stack.pop() {
                                taken.push(*v);
                            }
                        }
                    }
                    taken
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for v in handle.join().expect("thread") {
                assert!(seen.insert(v), "{v} popped twice");
            }
        }
        while let Some(v) = stack.pop() {
            assert!(seen.insert(*v), "{v} popped twice");
        }
        assert_eq!(seen.len(), (THREADS * PER_THREAD) as usize);
        assert!(stack.is_empty());
    }
}
