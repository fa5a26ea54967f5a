//! Zero-copy relaying: one direction of a proxied TCP connection moves socket → pipe → socket
//! with splice(2), so its bytes never enter user space (the buffered copy reads every byte into
//! a buffer and writes it out again, 16 KiB at a time).
//!
//! The pipe is filled only when it is empty. That keeps every EAGAIN unambiguous — filling, it
//! can only come from the source socket (an empty pipe has room); draining, only from the
//! destination socket (a non-empty pipe has bytes) — which tokio's `try_io` relies on: an EAGAIN
//! blamed on the wrong socket would clear a readiness that is still there, and with
//! edge-triggered epoll the relay would then wait forever.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Progress;

/// What a pipe is grown to. In the tcp bulk benchmark 256 KiB costs as little proxy CPU per GB
/// as 1 MiB, and about 0.7× what the default 64 KiB does. Pipes count against a per-user budget
/// (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default; none with CAP_SYS_RESOURCE), which
/// a bigger pipe would only spend sooner: over it, growing is refused (the pipe keeps its
/// default size) and new pipes get 2 pages.
const PIPE_SIZE: libc::c_int = 256 << 10;
/// A pipe smaller than the buffered copy's buffer would move less per system call than the
/// copy does (a user over its pipe budget gets 2-page pipes); the buffered copy is used then.
const MIN_PIPE_SIZE: usize = 16 * 1024;

/// A non-blocking kernel pipe: the buffer of one direction. Both ends close on drop.
#[derive(Debug)]
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds at most.
    capacity: usize,
}

impl Pipe {
    /// Opens a pipe and grows it to `PIPE_SIZE` if the kernel allows. Fails when no pipe can be
    /// had (EMFILE, ENFILE) or only one smaller than `MIN_PIPE_SIZE`.
    pub(super) fn new() -> io::Result<Self> {
        let mut fds: [libc::c_int; 2] = [-1; 2];
        // SAFETY: `fds` is a writable array of two ints, which is what pipe2 fills in.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let [read, write] = fds;
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(read), OwnedFd::from_raw_fd(write)) };
        let fd = write.as_raw_fd();
        // SAFETY: F_SETPIPE_SZ and F_GETPIPE_SZ take an int (or nothing) and only act on the
        // pipe `fd` refers to, which `write` keeps open.
        let size = unsafe {
            match libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) {
                refused if refused < 0 => libc::fcntl(fd, libc::F_GETPIPE_SZ),
                grown => grown,
            }
        };
        let capacity = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
        if capacity < MIN_PIPE_SIZE {
            return Err(io::Error::other(format!(
                "pipe of {capacity} bytes is smaller than the {MIN_PIPE_SIZE}-byte copy buffer"
            )));
        }
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// Moves bytes from `from` to `to` through `pipe` until `from` ends, then shuts down `to`'s
/// writing side (half-close); `progress` hears of every byte that reaches `to`. Returns the
/// bytes moved.
pub(super) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    progress: &Progress<'_>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Fill; the pipe is empty here. Each socket's read side is waited on by one direction
        // and its write side by the other, so each has its own waker slot (`readable()` and
        // `writable()` would queue a waiter under a lock, and widen every connection's task).
        std::future::poll_fn(|cx| from.poll_read_ready(cx)).await?;
        let filled = from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), pipe.write.as_fd(), pipe.capacity)
        });
        let mut in_pipe = match filled {
            Ok(0) => {
                socket2::SockRef::from(to).shutdown(Shutdown::Write)?;
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        // Drain all of it before filling again (and before any shutdown).
        while in_pipe > 0 {
            std::future::poll_fn(|cx| to.poll_write_ready(cx)).await?;
            let drained = to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), to.as_fd(), in_pipe)
            });
            match drained {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    in_pipe = in_pipe.saturating_sub(n);
                    total += n as u64;
                    progress.moved(n);
                }
                Err(e) if retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a failed splice is to be tried again: not ready yet (`try_io` has cleared that
/// readiness) or interrupted by a signal.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One non-blocking splice(2) of up to `len` bytes; EAGAIN comes back as `WouldBlock`.
///
/// A splice into a socket whose peer has gone raises SIGPIPE (the kernel sends without
/// MSG_NOSIGNAL); Rust programs ignore SIGPIPE, so it surfaces as an EPIPE error instead.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed from live owners, so they stay open for the call;
    // null offsets are what sockets and pipes require; the kernel touches no user memory.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_grown_or_kept_at_a_usable_size() {
        let pipe = Pipe::new().expect("pipe");
        assert!(pipe.capacity >= MIN_PIPE_SIZE, "{}", pipe.capacity);
        assert!(pipe.capacity <= PIPE_SIZE as usize, "{}", pipe.capacity);
    }
}
