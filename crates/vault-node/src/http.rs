//! The node's plain-HTTP endpoint for Prometheus and orchestrators:
//! `GET /metrics` (text exposition), `GET /ready` (200 once ready, else
//! 503 with the reason), `GET /live` (200 while the process serves).
//!
//! It serves no secrets and takes no input beyond the request line, so a
//! small HTTP/1.0-style responder is enough; bind it to an address only
//! the monitoring network reaches.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What `/ready` answers: `Ok` when ready, else the reason.
pub type Readiness = watch::Receiver<Result<(), String>>;

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = stop_requested(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (metrics, ready) = (metrics.clone(), ready.clone());
                    tokio::spawn(async move {
                        // A slow or broken scraper only loses its own answer.
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics, &ready)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &Readiness,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, body, kind) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => {
            ("200 OK", metrics.render(), "text/plain; version=0.0.4")
        }
        (Some("GET"), Some("/ready")) => match &*ready.borrow() {
            Ok(()) => ("200 OK", "ready\n".to_owned(), "text/plain"),
            Err(why) => (
                "503 Service Unavailable",
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        (Some("GET"), Some("/live")) => ("200 OK", "live\n".to_owned(), "text/plain"),
        (Some("GET"), _) => (
            "404 Not Found",
            "try /metrics, /ready or /live\n".to_owned(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "GET only\n".to_owned(),
            "text/plain",
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_metrics_readiness_and_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new(1);
        let (ready_tx, ready) = watch::channel(Err("no leader yet".to_owned()));
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve(listener, metrics, ready, stop));

        assert!(get(addr, "/metrics").await.contains("bkv_raft_term"));
        let r = get(addr, "/ready").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("no leader yet"),
            "{r}"
        );
        ready_tx.send(Ok(())).unwrap();
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
