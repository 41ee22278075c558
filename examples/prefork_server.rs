//! Run with: `cargo run --example prefork_server -- [workers]`
//!
//! A prefork server in the manner of aiotools.server: every worker process runs an async TCP
//! echo server on the same loopback port (`SO_REUSEPORT`, so the kernel spreads connections
//! over them), through `spawn_async`. SIGINT (Ctrl-C) or SIGTERM to the parent shuts the pool
//! down: every worker is stopped and reaped before the parent exits.
//!
//! Try it with `nc 127.0.0.1 <port>` and type lines.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::OwnedFd;

use futures_lite::{AsyncBufReadExt, AsyncWriteExt, StreamExt};
use rustix::net::{sockopt, AddressFamily, SocketType};

/// A TCP socket on 127.0.0.1:`port` that others may bind too.
fn shared_socket(port: u16) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseport(&socket, true)?;
    rustix::net::bind(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    Ok(socket)
}

/// Runs in a worker: echoes lines on every connection to `port`, until the worker is stopped.
async fn echo_server(port: u16) -> Result<(), String> {
    serve_echo(port).await.map_err(|e| e.to_string())
}

async fn serve_echo(port: u16) -> io::Result<()> {
    let socket = shared_socket(port)?;
    rustix::net::listen(&socket, 128)?;
    let listener = async_io::Async::new(TcpListener::from(socket))?;
    let connections = smol::LocalExecutor::new();
    connections
        .run(async {
            loop {
                let (stream, _) = listener.accept().await?;
                connections
                    .spawn(async move {
                        let stream = async_io::Async::new(stream.into_inner()?)?;
                        let (reader, mut writer) = futures_lite::io::split(stream);
                        let mut lines = futures_lite::io::BufReader::new(reader).lines();
                        while let Some(line) = lines.next().await {
                            writer.write_all(format!("{}\n", line?).as_bytes()).await?;
                        }
                        io::Result::Ok(())
                    })
                    .detach();
            }
        })
        .await
}

/// Serves on a free loopback port with `workers` processes until SIGINT or SIGTERM.
pub fn run(workers: usize) -> io::Result<()> {
    // Signals are taken over before anything else, so none is lost while starting.
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
    // Bound but never listening: it holds the port without taking connections.
    let holder = shared_socket(0)?;
    let port = match rustix::net::getsockname(&holder)?.try_into() {
        Ok(std::net::SocketAddr::V4(address)) => address.port(),
        _ => return Err(io::Error::other("no IPv4 port")),
    };
    let pool = offload::ProcessPool::new(workers).map_err(io::Error::other)?;
    let servers: Vec<_> = (0..workers)
        .map(|_| pool.spawn_async(echo_server, port))
        .collect();
    smol::block_on(async {
        while servers.iter().any(|s| s.pid().is_none()) {
            async_io::Timer::after(std::time::Duration::from_millis(1)).await;
        }
        let pids: Vec<String> = servers
            .iter()
            .map(|s| s.pid().unwrap().to_string())
            .collect();
        println!("listening on 127.0.0.1:{port}");
        println!("workers: {}", pids.join(" "));
        let signal = signals.next().await.transpose()?;
        println!("received {signal:?}, stopping the workers");
        pool.shutdown_now().await;
        for server in &servers {
            println!("{server:?}");
        }
        println!("stopped");
        io::Result::Ok(())
    })
}

#[allow(dead_code)] // the test includes this file and calls `run` itself
fn main() -> io::Result<()> {
    offload::init();
    let workers = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    run(workers)
}
