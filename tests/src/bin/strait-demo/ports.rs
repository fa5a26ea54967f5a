//! Where the demo's pieces listen: the fixed ports the README and the contract example name,
//! or (`--free-ports`, for its end-to-end test) ports the system hands out.

use std::net::{SocketAddr, TcpListener};

/// Every address of the demo.
#[derive(Debug, Clone)]
pub struct Ports {
    /// The control's API (HTTPS).
    pub control: SocketAddr,
    /// The frontend proxy's admin server.
    pub frontend_admin: SocketAddr,
    /// The frontend proxy's HTTP listener `web`.
    pub web: SocketAddr,
    /// The frontend proxy's TCP listener `db`.
    pub db: SocketAddr,
    /// The ratings proxy's admin server.
    pub ratings_admin: SocketAddr,
    /// The ratings proxy's mTLS-only listener `inbound`.
    pub inbound: SocketAddr,
    /// Demo upstream `reviews-v1-a` (port 0 with `--free-ports`: bound, then filled in).
    pub reviews_v1_a: SocketAddr,
    /// Demo upstream `reviews-v1-b`.
    pub reviews_v1_b: SocketAddr,
    /// Demo upstream `reviews-v2`.
    pub reviews_v2: SocketAddr,
    /// The app behind the ratings proxy.
    pub ratings_app: SocketAddr,
    /// The TCP echo behind `db`.
    pub echo: SocketAddr,
}

fn at(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

impl Ports {
    /// The documented ports (`deploy/examples/mesh.yaml` names the first proxy's and the
    /// upstreams').
    pub fn fixed() -> Self {
        Self {
            control: at(15010),
            frontend_admin: at(15000),
            web: at(15080),
            db: at(15432),
            ratings_admin: at(15100),
            inbound: at(15102),
            reviews_v1_a: at(9001),
            reviews_v1_b: at(9002),
            reviews_v2: at(9003),
            ratings_app: at(9004),
            echo: at(5432),
        }
    }

    /// Every address, in one order (to move the documented ones to these).
    pub fn all(&self) -> [SocketAddr; 11] {
        [
            self.control,
            self.frontend_admin,
            self.web,
            self.db,
            self.ratings_admin,
            self.inbound,
            self.reviews_v1_a,
            self.reviews_v1_b,
            self.reviews_v2,
            self.ratings_app,
            self.echo,
        ]
    }

    /// Free ports for the listeners the control and the proxies bind (asked of the system
    /// together, then let go for them to bind) and port 0 for the upstreams the demo binds
    /// itself.
    pub fn free() -> std::io::Result<Self> {
        let held = (0..6)
            .map(|_| TcpListener::bind(at(0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut free = held
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter();
        let mut next = || free.next().unwrap_or(at(0));
        Ok(Self {
            control: next(),
            frontend_admin: next(),
            web: next(),
            db: next(),
            ratings_admin: next(),
            inbound: next(),
            reviews_v1_a: at(0),
            reviews_v1_b: at(0),
            reviews_v2: at(0),
            ratings_app: at(0),
            echo: at(0),
        })
    }
}
