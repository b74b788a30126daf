//! gRPC-web at the edge, proven by clients nobody here wrote: a real
//! `munity-gateway` process in front of a real users-svc (in this test
//! process, on port 0), driven by npm gRPC-web clients run by node from
//! `tests/grpc-web/`:
//!
//! - `connect.mjs`: binary mode, `@connectrpc/connect-node`'s gRPC-web
//!   transport over HTTP/1.1 and over HTTP/2 (h2c), with service descriptors
//!   built at run time from the descriptor sets this test writes;
//! - `grpc-web-text.mjs`: text mode, the official `grpc-web` runtime (on the
//!   `xhr2` XMLHttpRequest, made to stream as browsers do);
//! - `raw-text.mjs`: text mode by hand with node's own HTTP clients, to check
//!   the frames (trailer frame included) on HTTP/1.1 and h2c;
//! - `browser.mjs`: a real browser, Debian's headless Chromium driven by
//!   `playwright-core`, runs `browser-app.mjs` (Connect's fetch-based
//!   `@connectrpc/connect-web` transport) from a page on an allowed origin,
//!   and is blocked by its own CORS check on another origin.
//!
//! CORS preflights, and refusals over HTTP/1.1 while the client is still
//! sending, are raw HTTP/1.1 requests from here; allowed and refused origins
//! on real calls are checked by `connect.mjs` and `raw-text.mjs` too.
//!
//! The npm packages come from `npm ci --prefix gateway/tests/grpc-web`
//! (`scripts/test.sh` runs it).

use std::{io::Write, net::SocketAddr, path::Path, time::Duration};

mod common;

use common::{Gateway, http1, replica, users_routes};

/// A gateway in front of `users` with the default CORS origins
/// (http://localhost:3000 and http://localhost:5173), and room for the
/// Register calls the clients make.
async fn gateway(users: SocketAddr) -> Gateway {
    gateway_with(users, "").await
}

/// [`gateway`] with more keys in its `[gateway]` table.
async fn gateway_with(users: SocketAddr, gateway_keys: &str) -> Gateway {
    let tables = format!(
        "{}\n[[gateway.rate_limits.rules]]\nmethod = \"/munity.users.v1.Users/Register\"\nrequests = 100\nper_secs = 60\nburst = 100\n",
        users_routes(&[users], "")
    );
    Gateway::start(
        users,
        &format!("health_check_interval_ms = 200\n{gateway_keys}"),
        &tables,
    )
    .serving()
    .await
}

/// The descriptor sets the clients build their registry from, written once
/// per test into `dir`; returned as `--descriptors FILE` arguments.
fn descriptor_args(dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for (name, bytes) in [
        ("munity.fds.bin", munity_proto::FILE_DESCRIPTOR_SET),
        ("health.fds.bin", tonic_health::pb::FILE_DESCRIPTOR_SET),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        args.push("--descriptors".to_owned());
        args.push(path.to_str().unwrap().to_owned());
    }
    args
}

/// Runs `node <script> <args>` in the npm project and asserts it succeeds.
async fn node(script: &str, args: Vec<String>) {
    munity_testkit::node(script, args, &[]).await
}

async fn node_with_env(script: &str, args: Vec<String>, env: &[(&str, &str)]) {
    munity_testkit::node(script, args, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_grpc_web_binary_over_http1_and_h2c() {
    munity_testkit::grpc_web_clients();
    let users = replica().await;
    let gateway = gateway(users.address).await;
    let descriptors = tempfile::tempdir().unwrap();
    for http in ["1.1", "2"] {
        let mut args = vec![
            "--base-url".to_owned(),
            format!("http://{}", gateway.address),
            "--http".to_owned(),
            http.to_owned(),
            "--email".to_owned(),
            format!("connect-h{}@example.com", http.replace('.', "")),
        ];
        args.extend(descriptor_args(descriptors.path()));
        node("connect.mjs", args).await;
    }
    users.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_text_with_the_official_client_and_by_hand() {
    munity_testkit::grpc_web_clients();
    let users = replica().await;
    let gateway = gateway(users.address).await;
    let descriptors = tempfile::tempdir().unwrap();
    let base = vec![
        "--base-url".to_owned(),
        format!("http://{}", gateway.address),
    ];

    let mut args = base.clone();
    args.extend(["--email".to_owned(), "text@example.com".to_owned()]);
    args.extend(descriptor_args(descriptors.path()));
    node("grpc-web-text.mjs", args).await;

    for http in ["1.1", "2"] {
        let mut args = base.clone();
        args.extend(["--http".to_owned(), http.to_owned()]);
        args.extend(descriptor_args(descriptors.path()));
        node("raw-text.mjs", args).await;
    }
    users.shutdown.cancel();
}

/// A real browser: headless Chromium loads a page from an allowed origin
/// and calls the gateway with Connect's browser transport (fetch), unary
/// and server streaming; a page on another origin is blocked by the
/// browser's own CORS check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_calls_from_an_allowed_origin_and_is_blocked_from_another() {
    munity_testkit::grpc_web_clients();
    let Some(chromium) = munity_testkit::chromium() else {
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let users = replica().await;
    let (allowed_port, refused_port) = (common::free_port(), common::free_port());
    let gateway = gateway_with(
        users.address,
        &format!("cors_allowed_origins = [\"http://127.0.0.1:{allowed_port}\"]"),
    )
    .await;
    let descriptors = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--gateway".to_owned(),
        format!("http://{}", gateway.address),
        "--allowed-port".to_owned(),
        allowed_port.to_string(),
        "--refused-port".to_owned(),
        refused_port.to_string(),
        "--email".to_owned(),
        "browser@example.com".to_owned(),
    ];
    args.extend(descriptor_args(descriptors.path()));
    node_with_env("browser.mjs", args, &[("CHROMIUM", &chromium)]).await;
    users.shutdown.cancel();
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn preflight(address: &str, origin: &str) -> Vec<u8> {
    format!(
        "OPTIONS /munity.users.v1.Users/GetMe HTTP/1.1\r\n\
         Host: {address}\r\n\
         Origin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,authorization\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_refused_origins() {
    let users = replica().await;
    let gateway = gateway(users.address).await;

    for origin in ["http://localhost:3000", "http://localhost:5173"] {
        let (status, headers) = http1(&gateway.address, preflight(&gateway.address, origin)).await;
        assert_eq!(status, 204, "{origin}: {headers:?}");
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some(origin)
        );
        let methods = list(header(&headers, "access-control-allow-methods"));
        assert!(methods.contains(&"post".to_owned()), "{methods:?}");
        let allowed = list(header(&headers, "access-control-allow-headers"));
        for name in [
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "authorization",
        ] {
            assert!(allowed.contains(&name.to_owned()), "{name} in {allowed:?}");
        }
        let exposed = list(header(&headers, "access-control-expose-headers"));
        for name in ["grpc-status", "grpc-message"] {
            assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
        }
    }

    let (status, headers) = http1(
        &gateway.address,
        preflight(&gateway.address, "http://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    // A real gRPC-web call from that origin is refused at the edge.
    let frame = [0u8, 0, 0, 0, 0]; // GetJwksRequest {} in one gRPC frame
    let mut request = format!(
        "POST /munity.users.v1.Users/GetJwks HTTP/1.1\r\n\
         Host: {}\r\n\
         Origin: http://evil.example\r\n\
         Content-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        gateway.address,
        frame.len()
    )
    .into_bytes();
    request.extend_from_slice(&frame);
    let (status, headers) = http1(&gateway.address, request).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(header(&headers, "grpc-status"), Some("7"), "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    users.shutdown.cancel();
}

/// Requests that are not gRPC get a clear status from the edge, not a
/// decoding failure from the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_grpc_get_a_clear_status() {
    let users = replica().await;
    let gateway = gateway(users.address).await;
    for (request, code, message) in [
        (
            "GET /munity.users.v1.Users/GetJwks HTTP/1.1\r\n",
            "12",
            "gRPC calls are POST requests, not GET",
        ),
        (
            "POST /munity.users.v1.Users/GetJwks HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n",
            "3",
            "content-type application/json is not gRPC",
        ),
        (
            "POST /munity.users.v1.Users/GetJwks HTTP/1.1\r\nContent-Length: 2\r\n",
            "3",
            "content-type (none) is not gRPC",
        ),
    ] {
        let mut bytes = format!(
            "{request}Host: {}\r\nConnection: close\r\n\r\n",
            gateway.address
        )
        .into_bytes();
        if request.contains("Content-Length: 2") {
            bytes.extend_from_slice(b"{}");
        }
        let (status, headers) = http1(&gateway.address, bytes).await;
        assert_eq!(status, 200, "{request}: {headers:?}");
        assert_eq!(
            header(&headers, "grpc-status"),
            Some(code),
            "{request}: {headers:?}"
        );
        let said = header(&headers, "grpc-message").unwrap_or_default();
        let said = said.replace("%20", " ").replace("%3A", ":");
        assert!(said.starts_with(message), "{request}: {said}");
    }
    users.shutdown.cancel();
}

/// A call refused at the edge over HTTP/1.1 (no token, foreign origin) may
/// be answered before all of its body has arrived: the gateway waits a
/// little for it, not forever. The rest of the body must still be accepted
/// after the answer (read and discarded, or the connection closed in stages,
/// RFC 9112 section 9.6), never met with a reset: a client still writing
/// (a large body, a slow link) then loses the status to EPIPE or
/// ECONNRESET, as Connect's node transport did here ("[internal] write
/// EPIPE" instead of UNAUTHENTICATED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_refusals_let_the_client_finish_its_body() {
    let users = replica().await;
    let gateway = gateway(users.address).await;
    for (what, extra_header, status) in [
        ("no token", "", "16"),
        ("foreign origin", "Origin: http://evil.example\r\n", "7"),
    ] {
        let address = gateway.address.clone();
        let head = format!(
            "POST /munity.users.v1.Users/GetMe HTTP/1.1\r\n\
             Host: {address}\r\n\
             {extra_header}\
             Content-Type: application/grpc-web+proto\r\n\
             X-Grpc-Web: 1\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        let (response, sent) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            let has_head = |r: &[u8]| r.windows(4).any(|w| w == b"\r\n\r\n");
            stream.write_all(head.as_bytes()).unwrap();
            // Give the gateway time to answer before the body is sent.
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            while !has_head(&received) {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => received.extend_from_slice(&buffer[..read]),
                    Err(_) => break, // no answer yet: it waits for the body
                }
            }
            // Then the body, in two writes as a streaming client makes them.
            std::thread::sleep(Duration::from_millis(100));
            let first = stream.write_all(b"5\r\n\0\0\0\0\0\r\n");
            std::thread::sleep(Duration::from_millis(100));
            let sent = first.and_then(|()| stream.write_all(b"0\r\n\r\n"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            while !has_head(&received) {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => received.extend_from_slice(&buffer[..read]),
                    Err(error) => {
                        received.extend_from_slice(format!("<read failed: {error}>").as_bytes());
                        break;
                    }
                }
            }
            (String::from_utf8_lossy(&received).into_owned(), sent)
        })
        .await
        .unwrap();
        if let Err(error) = sent {
            panic!(
                "{what}: the connection was reset while the client was still sending the \
                 request body ({error}); received:\n{response}"
            );
        }
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("grpc-status: {status}\r\n")),
            "{what}: {response}"
        );
    }
    users.shutdown.cancel();
}
