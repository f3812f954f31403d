//! A witness process for one test fleet.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `vault-witness serve`. Dropping it kills the process.
pub struct TestWitness {
    child: Child,
}

impl TestWitness {
    /// Starts the witness of `dir` on 127.0.0.1:`port`, accepting operator
    /// certificates of `operator_ca`, logging to `log`; returns once it
    /// accepts connections.
    pub fn start(
        bin: &Path,
        dir: &Path,
        port: u16,
        operator_ca: &Path,
        log: &Path,
    ) -> anyhow::Result<TestWitness> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(bin)
            .args(["serve", "--dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--operator-ca"])
            .arg(operator_ca)
            // It stops when this pipe closes, even if the test dies
            // without dropping it.
            .env("BKV_EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start vault-witness")?;
        let mut w = TestWitness { child };
        let give_up = Instant::now() + Duration::from_secs(20);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = w.child.try_wait()? {
                bail!("vault-witness exited at once ({status}); see its log");
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(w);
            }
            if Instant::now() >= give_up {
                let _ = w.kill();
                bail!("vault-witness did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
