//! The prefork server example: workers share one loopback port, echo bounded traffic, and are
//! all gone after SIGTERM to the parent.

mod common;

#[path = "../examples/prefork_server.rs"]
mod prefork_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, BOUND};

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + BOUND;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => return stream,
            Err(err) => assert!(Instant::now() < deadline, "cannot connect: {err}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn prefork_server_echoes_and_stops_on_sigterm() {
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args(["--prefork-server", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let workers: Vec<u32> = line
        .trim()
        .strip_prefix("workers: ")
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 2);

    // Bounded traffic: 20 connections of 10 lines each.
    for c in 0..20 {
        let mut stream = connect(port);
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let sent: String = (0..10)
            .map(|l| format!("connection {c} line {l}\n"))
            .collect();
        stream.write_all(sent.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut echoed = String::new();
        stream.read_to_string(&mut echoed).unwrap();
        assert_eq!(echoed, sent);
    }

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(
        rest.contains("status='cancelled'") && rest.ends_with("stopped\n"),
        "{rest}"
    );
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the server");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--prefork-server") {
        offload::init();
        prefork_server::run(args[2].parse().unwrap()).unwrap();
        return;
    }
    common::main_with(vec![common::trial(
        "prefork_server_echoes_and_stops_on_sigterm",
        prefork_server_echoes_and_stops_on_sigterm,
    )]);
}
