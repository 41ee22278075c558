//! Run with: `cargo run --release --example web_handler`
//!
//! A web handler under Tokio that offloads its CPU work: `GET /primes?below=N` counts primes in
//! a worker process, with a timeout (504 when it runs out), and answers 503 at once when the
//! pool is saturated (every worker busy and a few requests already waiting), instead of
//! letting requests queue without bound. The async threads only parse and answer.
//!
//! The program serves on a loopback port and is its own client: it sends a burst of requests,
//! more than the pool takes, then one too large for the timeout, and prints what each got.

use std::time::Duration;

use offload::ProcessPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How many requests may wait for a worker before the handler answers 503.
const MAX_WAITING: usize = 2;

/// How long a request's work may run.
const WORK_TIMEOUT: Duration = Duration::from_secs(2);

/// Counts the primes below `limit` by trial division (deliberately naive CPU work).
fn primes_below(limit: u64) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// Answers one request on `stream`.
async fn handle(pool: ProcessPool, mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = vec![0; 1024];
    let n = stream.read(&mut request).await?;
    let request = String::from_utf8_lossy(&request[..n]);
    let below = request
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/primes?below="))
        .and_then(|n| n.parse::<u64>().ok());
    let (status, body) = match below {
        None => (
            "400 Bad Request",
            "expected GET /primes?below=N".to_string(),
        ),
        // Saturated: say so now rather than keep the client waiting behind the others.
        Some(_) if pool.stats().queued >= MAX_WAITING => (
            "503 Service Unavailable",
            "busy, try again later".to_string(),
        ),
        Some(limit) => match pool
            .task(primes_below)
            .timeout(WORK_TIMEOUT)
            .spawn(limit)
            .await
        {
            Ok(count) => ("200 OK", count.to_string()),
            Err(err) if err.is_timed_out() => ("504 Gateway Timeout", err.to_string()),
            Err(err) => ("500 Internal Server Error", err.to_string()),
        },
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// Sends `GET path` to `port` and returns the status line's code and the body.
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No `offload::init()`: with the default `before-main` feature, workers serve before
    // `main` (and its Tokio runtime) would start.
    let pool = ProcessPool::new(2)?;
    pool.ready().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server_pool = pool.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(server_pool.clone(), stream));
        }
    });
    println!("serving on 127.0.0.1:{port}");

    // A burst: more requests at once than the workers and the waiting room take.
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get(port, "/primes?below=300000")))
        .collect();
    let mut codes = Vec::new();
    for request in burst {
        let (code, body) = request.await??;
        println!("burst: {code} {body}");
        codes.push(code);
    }
    // Work too large for its timeout: its worker is stopped, and replaced.
    let (late, body) = get(port, "/primes?below=10000000000").await?;
    println!("too large: {late} {body}");
    let (after, body) = get(port, "/primes?below=1000").await?;
    println!("after it: {after} {body}");

    assert!(codes.contains(&200), "some requests were served");
    assert!(
        codes.contains(&503),
        "some were turned away while the pool was saturated"
    );
    assert_eq!(late, 504);
    assert_eq!((after, body.as_str()), (200, "168"));
    let stats = pool.stats();
    println!(
        "pool: {} completed, {} failed",
        stats.completed, stats.failed
    );
    pool.shutdown().await;
    Ok(())
}
