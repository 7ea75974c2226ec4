//! HTTP on loopback, for end-to-end tests.

use std::time::Duration;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `http://127.0.0.1:{port}{path}`: status code and body (memtrace's own HTTP reader).
pub fn get(port: u16, path: &str) -> Result<(u16, String), memtrace::export::scrape::ScrapeError> {
    memtrace::export::scrape::get_response(
        &format!("http://127.0.0.1:{port}{path}"),
        Duration::from_secs(10),
    )
}
