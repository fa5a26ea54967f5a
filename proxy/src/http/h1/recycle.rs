//! Per-thread free lists for what a downstream connection needs only while a request is in
//! flight: the heap room for the request's future, the buffer its head is read into and the
//! buffer its response's head is written from.
//!
//! A keep-alive connection that kept its own would hold several KiB while it idles, which is
//! most of the time; instead it takes them from its thread's free lists when a request
//! arrives and gives them back when the response is written. A list holds as many as were in
//! use at once on the thread (up to [`KEEP`]), so taking one is a pop, not an allocation.

use std::any::Any;
use std::cell::RefCell;
use std::pin::Pin;

use bytes::BytesMut;

/// Values kept per thread and type; more in use at once are allocated and freed.
const KEEP: usize = 256;

/// A place for one future on the heap, empty between requests.
pub type Room<F> = Pin<Box<Option<F>>>;

thread_local! {
    /// This thread's free rooms: a `Vec<Room<F>>` for the one future type that uses them
    /// (type erased: that type cannot be named in a static; a second type is not kept).
    static ROOMS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// This thread's free head buffers.
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// This thread's free write buffers.
    static WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty room, from this thread's free list when it has one.
pub fn room<F: 'static>() -> Room<F> {
    ROOMS
        .try_with(|rooms| {
            rooms
                .borrow_mut()
                .as_mut()
                .and_then(|list| list.downcast_mut::<Vec<Room<F>>>())
                .and_then(Vec::pop)
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::pin(None))
}

/// Empties `room` (dropping the future in it) and keeps it for another request.
pub fn give_room<F: 'static>(mut room: Room<F>) {
    // Dropped before the list is borrowed: a future's drop may run any code.
    room.set(None);
    let _ = ROOMS.try_with(|rooms| {
        let mut rooms = rooms.borrow_mut();
        let list = rooms.get_or_insert_with(|| Box::new(Vec::<Room<F>>::new()));
        if let Some(list) = list.downcast_mut::<Vec<Room<F>>>() {
            keep(list, room);
        }
    });
}

/// A buffer to read a head into, with room left in it when one was given back.
pub fn buffer() -> BytesMut {
    BUFFERS
        .try_with(|buffers| buffers.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `buf`, which holds nothing to read any more, for another connection's head.
pub fn give_buffer(buf: BytesMut) {
    if buf.capacity() > 0 {
        let _ = BUFFERS.try_with(|buffers| keep(&mut buffers.borrow_mut(), buf));
    }
}

/// An empty buffer to write a response from, with room in it when one was given back.
pub fn write_buffer() -> Vec<u8> {
    WRITE_BUFFERS
        .try_with(|buffers| buffers.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `buf` (emptied here) for another response, unless it has grown past `limit` bytes.
pub fn give_write_buffer(mut buf: Vec<u8>, limit: usize) {
    if buf.capacity() == 0 || buf.capacity() > limit {
        return;
    }
    buf.clear();
    let _ = WRITE_BUFFERS.try_with(|buffers| keep(&mut buffers.borrow_mut(), buf));
}

fn keep<T>(list: &mut Vec<T>, value: T) {
    if list.len() < KEEP {
        list.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_room_is_taken_again_empty() {
        let mut first: Room<[u8; 64]> = room();
        first.set(Some([7; 64]));
        let at = &*first as *const Option<[u8; 64]>;
        give_room(first);
        let again: Room<[u8; 64]> = room();
        assert_eq!(&*again as *const Option<[u8; 64]>, at);
        assert!(again.is_none());
    }

    #[test]
    fn rooms_and_buffers_are_kept_in_bounded_lists() {
        let rooms: Vec<Room<u32>> = (0..KEEP + 10).map(|_| room()).collect();
        rooms.into_iter().for_each(give_room);
        give_buffer(BytesMut::with_capacity(100));
        give_buffer(BytesMut::new());
        let rooms = ROOMS.with(|rooms| {
            rooms
                .borrow_mut()
                .as_mut()
                .and_then(|list| list.downcast_mut::<Vec<Room<u32>>>())
                .map(|list| list.len())
        });
        assert_eq!(rooms, Some(KEEP));
        assert_eq!(BUFFERS.with(|buffers| buffers.borrow().len()), 1);
        assert!(buffer().capacity() >= 100);
        assert_eq!(buffer().capacity(), 0);
    }

    #[test]
    fn write_buffers_come_back_empty_and_big_ones_are_not_kept() {
        let mut used = write_buffer();
        used.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let at = used.as_ptr();
        give_write_buffer(used, 1024);
        give_write_buffer(Vec::with_capacity(4096), 1024);
        give_write_buffer(Vec::new(), 1024);
        assert_eq!(WRITE_BUFFERS.with(|buffers| buffers.borrow().len()), 1);
        let again = write_buffer();
        assert_eq!(again.as_ptr(), at, "the same allocation, taken again");
        assert!(again.is_empty());
        assert_eq!(
            write_buffer().capacity(),
            0,
            "none left: a new, unallocated one"
        );
    }

    #[test]
    fn a_future_is_dropped_when_its_room_is_given_back() {
        let dropped = std::rc::Rc::new(());
        let mut held: Room<std::rc::Rc<()>> = room();
        held.set(Some(dropped.clone()));
        assert_eq!(std::rc::Rc::strong_count(&dropped), 2);
        give_room(held);
        assert_eq!(std::rc::Rc::strong_count(&dropped), 1);
    }
}
