//! A session backend for tests. Std-only so it builds in seconds and links statically into a
//! `FROM scratch` image.
//!
//! Endpoints on `0.0.0.0:$PORT` (default 8080):
//! - `GET /` → 200, body `hangar-test-backend <HANGAR_BACKEND_ID>`
//! - `GET /env` → the environment, one `KEY=VALUE` per line, sorted
//! - `GET /headers` → the request headers as received, one per line
//! - `GET /argv` → the command line it was started with, one argument per line (argv[0] first)
//!
//! Behaviours, selected by environment variables:
//! - SIGTERM ends the process with code 143; with `TEST_BACKEND_IGNORE_SIGTERM=1` it is ignored and
//!   only SIGKILL stops the process.
//! - `TEST_BACKEND_EXIT_AFTER_MS=N` with `TEST_BACKEND_EXIT_CODE=C` (default 0): exit with C after N ms.
//! - `TEST_BACKEND_START_DELAY_MS=N`: sleep N ms before listening (a slow start).
//! - `TEST_BACKEND_OOM=1`: allocate and touch memory until the kernel kills the process.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

unsafe extern "C" {
    // Raw libc calls keep this crate dependency-free.
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(code: i32) -> !;
}

const SIGTERM: i32 = 15;
/// `SIG_IGN` on Linux.
const SIG_IGN: usize = 1;

extern "C" fn exit_on_sigterm(_: i32) {
    // Only async-signal-safe calls here. 143 = 128 + SIGTERM, what a shell reports.
    unsafe { _exit(143) }
}

/// As PID 1 of a container the kernel would drop a SIGTERM without a handler, so the backend
/// installs one: it then stops on SIGTERM the same way as a process and in a container.
fn handle_sigterm(ignore: bool) {
    let handler = if ignore { SIG_IGN } else { exit_on_sigterm as *const () as usize };
    unsafe {
        signal(SIGTERM, handler);
    }
}

fn eat_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really resident and the cgroup limit is hit.
        let chunk = vec![1u8; 4 << 20];
        hoard.push(chunk);
        std::thread::sleep(Duration::from_millis(1));
    }
}

mod upload;
mod websocket;

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn handle(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                headers.push(line);
            }
        }
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let target = words.next().unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/");
    match path {
        "/request" => respond(&mut stream, "200 OK", &format!("{method} {target}\n")),
        "/upload" => {
            // Streams the body through a digest without keeping it, like a real upload sink.
            let header = |name: &str| {
                headers.iter().find_map(|h| {
                    let (k, v) = h.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
            match upload::read_body(&mut reader, chunked, length) {
                Ok((bytes, digest)) => respond(&mut stream, "200 OK", &format!("{bytes} {digest:016x}\n")),
                Err(err) => respond(&mut stream, "400 Bad Request", &format!("{err}\n")),
            }
        }
        "/ws" => {
            let key = headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
            });
            match key {
                Some(key) => {
                    let _ = stream.set_read_timeout(None);
                    websocket::echo(stream, reader, &key);
                }
                None => respond(&mut stream, "400 Bad Request", "not a websocket upgrade\n"),
            }
        }
        "/" => {
            let id = std::env::var("HANGAR_BACKEND_ID").unwrap_or_default();
            respond(&mut stream, "200 OK", &format!("hangar-test-backend {id}\n"));
        }
        "/env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            respond(&mut stream, "200 OK", &(vars.join("\n") + "\n"));
        }
        "/headers" => respond(&mut stream, "200 OK", &(headers.join("\n") + "\n")),
        "/argv" => {
            let argv: String = std::env::args().map(|arg| arg + "\n").collect();
            respond(&mut stream, "200 OK", &argv);
        }
        _ => respond(&mut stream, "404 Not Found", "not found\n"),
    }
}

fn main() {
    handle_sigterm(std::env::var("TEST_BACKEND_IGNORE_SIGTERM").as_deref() == Ok("1"));
    if let Some(ms) = env_u64("TEST_BACKEND_EXIT_AFTER_MS") {
        let code = env_u64("TEST_BACKEND_EXIT_CODE").unwrap_or(0) as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(code);
        });
    }
    if std::env::var("TEST_BACKEND_OOM").as_deref() == Ok("1") {
        eat_memory();
    }
    if let Some(ms) = env_u64("TEST_BACKEND_START_DELAY_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("hangar-test-backend: cannot listen on port {port}: {err}");
            std::process::exit(2);
        }
    };
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
}
