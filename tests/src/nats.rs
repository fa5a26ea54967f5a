//! A real NATS server with JetStream (`nats-server -js`) on a free loopback port, its storage
//! in a temporary directory; killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::TempDir;

/// A running `nats-server -js`.
pub struct Nats {
    child: Option<Child>,
    dir: TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    /// Where it listens (known once started).
    address: Option<SocketAddr>,
}

impl Nats {
    /// Starts a server with JetStream on a port of its choosing on 127.0.0.1 and waits until
    /// it is ready.
    pub fn start() -> Self {
        let mut nats = Nats {
            child: None,
            dir: TempDir::new("nats"),
            logs: Arc::default(),
            address: None,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        // `-p -1` picks a free port; a restart takes the same one again.
        let port = self
            .address
            .map_or_else(|| "-1".to_owned(), |a| a.port().to_string());
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server: install it (Debian package `nats-server`; scripts/test.sh does)");
        let logs = crate::process::stderr_lines(&mut child);
        self.logs = logs;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            let listening = logs.iter().find_map(|l| {
                let (_, address) = l.split_once("Listening for client connections on ")?;
                address.trim().parse::<SocketAddr>().ok()
            });
            let ready = logs.iter().any(|l| l.contains("Server is ready"));
            if let (Some(address), true) = (listening, ready) {
                self.address = Some(address);
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server exited at startup ({status}):\n{}",
                    logs.join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                logs.join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let address = self.address.expect("started");
        format!("nats://{address}")
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every log line of the current process.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server logs ----\n{}\n---- end ----",
                self.logs().join("\n")
            );
        }
    }
}
