//! One hostile request must never hurt other clients: each finding of
//! probing the edge from outside, replayed against a real `munity-gateway`
//! process in front of a real users-svc, with another client's proxied
//! streams open on the same upstream connection throughout.

use std::time::Duration;

use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tokio::sync::mpsc;
use tonic::{Code, Request, Streaming, transport::Channel};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, ServerReflectionResponse,
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
};

mod common;

use common::{Gateway, Replica, http1, replica, users_routes};

/// A gateway routing to `users` alone, with `route_keys` in its route.
async fn gateway_in_front_of(users: &Replica, route_keys: &str) -> Gateway {
    Gateway::start(
        users.address,
        "",
        &users_routes(&[users.address], route_keys),
    )
    .serving()
    .await
}

/// A well-behaved client's proxied stream (server reflection stays open
/// while the client keeps its side open, and answers each request).
struct OpenStream {
    requests: mpsc::Sender<ServerReflectionRequest>,
    responses: Streaming<ServerReflectionResponse>,
}

fn list_services() -> ServerReflectionRequest {
    ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

impl OpenStream {
    async fn open(channel: Channel) -> OpenStream {
        let (requests, outbound) = mpsc::channel(4);
        requests.send(list_services()).await.unwrap();
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        assert!(responses.message().await.unwrap().is_some());
        OpenStream {
            requests,
            responses,
        }
    }

    /// Whether the stream still answers.
    async fn still_answers(&mut self) -> Result<(), String> {
        self.requests
            .send(list_services())
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), self.responses.message()).await {
            Ok(Ok(Some(_))) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}

async fn open_streams(gateway: &Gateway, count: usize) -> Vec<OpenStream> {
    let channel = gateway.channel().await;
    let mut streams = Vec::new();
    for _ in 0..count {
        streams.push(OpenStream::open(channel.clone()).await);
    }
    streams
}

async fn assert_all_answer(streams: &mut [OpenStream]) {
    for (i, stream) in streams.iter_mut().enumerate() {
        if let Err(error) = stream.still_answers().await {
            panic!("another client's stream {i} was hurt: {error}");
        }
    }
}

fn grpc_status(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(name, _)| name == "grpc-status")
        .map(|(_, value)| value.as_str())
}

/// A gRPC-web request over HTTP/1.1 with `extra` header lines.
fn web_request(address: &str, path: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\ncontent-type: {content_type}\r\n\
         x-grpc-web: 1\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Headers of 64 KB passed on made users-svc GOAWAY the shared upstream
/// connection (`too_many_continuations`), cutting every other client's
/// streams. The edge now refuses them itself, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_are_refused_and_other_clients_streams_survive() {
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "").await;
    let mut streams = open_streams(&gateway, 5).await;

    // HTTP/1.1 gRPC-web, one 64 KB header.
    let big = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
    let empty_message = [0u8, 0, 0, 0, 0];
    let (status, headers) = http1(
        &gateway.address,
        web_request(
            &gateway.address,
            "/munity.users.v1.Users/GetJwks",
            "application/grpc-web+proto",
            &big,
            &empty_message,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(grpc_status(&headers), Some("8"), "{headers:?}"); // RESOURCE_EXHAUSTED
    assert_all_answer(&mut streams).await;

    // HTTP/2: over the edge's limit (refused with a status), and far over
    // it (refused by HTTP/2 itself); either way, not passed on.
    let mut client = UsersClient::new(gateway.channel().await);
    for size in [12 * 1024, 64 * 1024] {
        let mut request = Request::new(pb::GetJwksRequest {});
        request
            .metadata_mut()
            .insert("x-big", "a".repeat(size).parse().unwrap());
        let status = client.get_jwks(request).await.unwrap_err();
        if size == 12 * 1024 {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        }
    }
    assert_all_answer(&mut streams).await;

    // Normal calls still work, and no replica was blamed.
    let mut client = UsersClient::new(gateway.channel().await);
    client.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    assert_eq!(
        gateway
            .metric("munity_gateway_upstream_ejections_total{route=\"users\"}")
            .await,
        0
    );
    users.shutdown.cancel();
}

/// Bad base64 in a gRPC-web-text body hung until the call's deadline (30 s),
/// holding the upstream call open; on a streaming method the call never
/// ended. It is an immediate INVALID_ARGUMENT now, with nothing left in
/// flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_base64_is_an_immediate_invalid_argument() {
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "").await;
    let mut streams = open_streams(&gateway, 3).await;
    for path in [
        "/munity.users.v1.Users/GetJwks",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Watch",
    ] {
        let answered = tokio::time::timeout(
            Duration::from_secs(3),
            http1(
                &gateway.address,
                web_request(
                    &gateway.address,
                    path,
                    "application/grpc-web-text",
                    "",
                    b"!!!!not*base64",
                ),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 3 s"));
        let (status, headers) = answered;
        assert_eq!(status, 200, "{path}");
        assert_eq!(grpc_status(&headers), Some("3"), "{path}: {headers:?}");
        let message = headers
            .iter()
            .find(|(n, _)| n == "grpc-message")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        assert!(
            !message.contains("127.0.0.1"),
            "{path}: internal address in {message:?}"
        );
    }
    // Nothing stays in flight but the well-behaved client's streams.
    let started = std::time::Instant::now();
    loop {
        let metrics = gateway.metrics().await;
        let unary = metrics.lines().find(|l| {
            l.starts_with("munity_gateway_calls_in_flight{")
                && l.contains("service=\"munity.users.v1.Users\"")
                && l.contains("kind=\"unary\"")
        });
        // Reflection streams count as streams (they were `unary`).
        let reflection = metrics.lines().find(|l| {
            l.starts_with("munity_gateway_calls_in_flight{")
                && l.contains("service=\"grpc.reflection.v1.ServerReflection\"")
                && l.contains("kind=\"server_streaming\"")
        });
        let settled = unary.is_none_or(|l| l.ends_with(" 0"))
            && reflection.is_some_and(|l| l.ends_with(" 3"));
        if settled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "calls left in flight: {unary:?} {reflection:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_all_answer(&mut streams).await;
    users.shutdown.cancel();
}

/// What the gateway sends on one HTTP/1.1 connection after `request`,
/// and whether it closed the connection within `limit`.
async fn answer_and_close(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
    limit: Duration,
) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// An HTTP/1.1 body with a bad chunk size (`0x5`, `-5`, one past 64 bits)
/// got HTTP 200 with grpc-status 3, and the connection stayed open: a
/// second request sent on it a second later was parsed and answered,
/// though where the first request ended is unknown after a framing error
/// (request smuggling). It is now HTTP 400 with `Connection: close`, the
/// socket is closed, and nothing sent after it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_http1_body_is_400_and_closes_the_connection() {
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "").await;
    let path = "/munity.users.v1.Users/GetJwks";
    let well_formed = web_request(
        &gateway.address,
        path,
        "application/grpc-web+proto",
        "",
        &[0u8, 0, 0, 0, 0],
    );
    let second = String::from_utf8(well_formed.clone())
        .unwrap()
        .replace("connection: close\r\n", "");
    // A proxied method, one the gateway answers itself, and an HTTP/JSON
    // call (whose body the gateway reads itself).
    let cases = ["0x5", "-5", "ffffffffffffffffff", "zz"]
        .into_iter()
        .flat_map(|size| {
            [
                (path, size),
                ("/grpc.health.v1.Health/Check", size),
                ("/v1/auth/login", size),
            ]
        });
    let mut failures = Vec::new();
    for (path, size) in cases {
        let content_type = if path.starts_with("/v1/") {
            "application/json"
        } else {
            "application/grpc-web+proto\r\nx-grpc-web: 1"
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {0}\r\n\
             content-type: {content_type}\r\n\
             transfer-encoding: chunked\r\n\r\n{size}\r\n",
            gateway.address
        );
        let mut stream = tokio::net::TcpStream::connect(&gateway.address)
            .await
            .unwrap();
        let (answer, closed) =
            answer_and_close(&mut stream, request.as_bytes(), Duration::from_secs(5)).await;
        // A second request on the same connection a second later is not
        // parsed: nothing comes back.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (after, _) =
            answer_and_close(&mut stream, second.as_bytes(), Duration::from_secs(3)).await;
        let answered_400 = answer.starts_with("HTTP/1.1 400")
            && answer.to_ascii_lowercase().contains("connection: close");
        if !(answered_400 && closed && after.is_empty()) {
            failures.push(format!(
                "{path}, chunk size {size:?}: answered {answer:?}; closed: {closed}; \
                 the second request got {after:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // A well-formed request on another connection is answered as ever.
    let answer =
        String::from_utf8_lossy(&http1_to_end(&gateway.address, well_formed).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("grpc-status:0"), "{answer}");
    users.shutdown.cancel();
}

/// How a stream ended: the status of the error that ended it, or `None` if
/// it was still open after `limit`.
async fn ended_with<T>(stream: &mut Streaming<T>, limit: Duration) -> Option<Code> {
    let ended = tokio::time::timeout(limit, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    })
    .await;
    ended.ok()
}

/// A deadline covers the whole call, streams included: a Watch or a
/// proxied stream with `grpc-timeout: 1S` was still open after 8 s, at the
/// gateway and at users-svc alike, and a route's `max_timeout_ms` did not
/// cap a stream either. Each now ends with DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_server_streams_with_deadline_exceeded() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "max_timeout_ms = 1500").await;
    let watch_request = |timeout: Duration| {
        let mut request = Request::new(HealthCheckRequest {
            service: "munity.users.v1.Users".to_owned(),
        });
        request.set_timeout(timeout);
        request
    };

    // At users-svc itself (GrpcHost).
    let direct = Channel::from_shared(format!("http://{}", users.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(direct)
        .watch(watch_request(Duration::from_secs(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ended_with(&mut watch, Duration::from_secs(6)).await,
        Some(Code::DeadlineExceeded)
    );

    // The gateway's own Watch.
    let mut watch = HealthClient::new(gateway.channel().await)
        .watch(watch_request(Duration::from_secs(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ended_with(&mut watch, Duration::from_secs(6)).await,
        Some(Code::DeadlineExceeded)
    );

    // A proxied stream asking for a minute gets the route's 1.5 s cap.
    let (requests, outbound) = mpsc::channel(4);
    requests.send(list_services()).await.unwrap();
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
    request.set_timeout(Duration::from_secs(60));
    let mut stream = ServerReflectionClient::new(gateway.channel().await)
        .server_reflection_info(request)
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(
        ended_with(&mut stream, Duration::from_secs(6)).await,
        Some(Code::DeadlineExceeded)
    );
    drop(requests);

    // gRPC-web over HTTP/1.1: the trailer frame says DEADLINE_EXCEEDED.
    let message = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: "munity.users.v1.Users".to_owned(),
    });
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let whole = tokio::time::timeout(
        Duration::from_secs(6),
        http1_to_end(
            &gateway.address,
            web_request(
                &gateway.address,
                "/grpc.health.v1.Health/Watch",
                "application/grpc-web+proto",
                "grpc-timeout: 1S\r\n",
                &body,
            ),
        ),
    )
    .await
    .expect("the gRPC-web Watch ended at its deadline");
    let text = String::from_utf8_lossy(&whole);
    assert!(text.contains("grpc-status:4"), "{text:?}");
    users.shutdown.cancel();
}

/// Everything the server sends on one HTTP/1.1 request, to the end.
async fn http1_to_end(address: &str, request: Vec<u8>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.unwrap();
    received
}

/// Whether the gateway closed `stream` within `limit` (a read sees the end,
/// or a reset), reading and discarding whatever it sent first.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A connection that sends nothing, an HTTP/1.1 header sent a byte at a
/// time, and a bare HTTP/2 preface were all still open after 150 s (a
/// slowloris starves the edge of descriptors). Each is now closed once the
/// request header timeout passes, while other clients' streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let users = replica().await;
    let gateway = Gateway::start(
        users.address,
        "request_header_timeout_ms = 1500",
        &users_routes(&[users.address], ""),
    )
    .serving()
    .await;
    let mut streams = open_streams(&gateway, 3).await;

    let mut idle = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    let mut preface = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut slow = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    let header = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\n",
        gateway.address
    );
    let trickle = tokio::spawn(async move {
        for byte in header.bytes() {
            if slow.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    assert!(
        closed_within(&mut idle, Duration::from_secs(6)).await,
        "idle connection still open"
    );
    assert!(
        closed_within(&mut preface, Duration::from_secs(6)).await,
        "bare h2 preface still open"
    );
    // The trickle ends when its writes fail: before its 50-odd bytes at
    // 200 ms each (10 s) were sent.
    let started = std::time::Instant::now();
    let mut slow = trickle.await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow header kept going"
    );

    // A well-behaved connection is not cut for being quiet while its call
    // runs: the streams opened before are still answering.
    assert_all_answer(&mut streams).await;
    assert!(
        gateway
            .metric("munity_gateway_connections_timed_out_total")
            .await
            >= 3
    );
    users.shutdown.cancel();
}

/// Connections are capped per client IP (and in all): past the cap, new
/// ones are closed at accept and counted; ones already open carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_cap_are_refused() {
    let users = replica().await;
    let gateway = Gateway::start(
        users.address,
        "max_connections_per_ip = 4",
        &users_routes(&[users.address], ""),
    )
    .serving()
    .await;
    // serving()'s own connection is gone once its channel's task sees it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One client connection with streams on it, and three idle ones.
    let mut streams = open_streams(&gateway, 2).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&gateway.address)
                .await
                .unwrap(),
        );
    }
    let mut over = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the fifth connection from one IP was kept"
    );
    assert_all_answer(&mut streams).await;
    assert!(
        gateway
            .metric("munity_gateway_connections_refused_total{reason=\"max_connections_per_ip\"}")
            .await
            >= 1
    );
    // A place freed is a place to take again.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    assert!(!closed_within(&mut again, Duration::from_millis(500)).await);
    users.shutdown.cancel();
}

/// Two framed GetJwks request messages in one body.
fn two_messages() -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend_from_slice(&[0, 0, 0, 0, 0]);
    }
    body
}

/// A unary method took two request messages (tonic reads the first and
/// ignores the rest; gRPC says it is an error): INVALID_ARGUMENT now, at
/// the gateway (gRPC-web over HTTP/1.1) and at users-svc itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_message_is_invalid_argument() {
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "").await;
    let path = "/munity.users.v1.Users/GetJwks";
    let (status, headers) = http1(
        &gateway.address,
        web_request(
            &gateway.address,
            path,
            "application/grpc-web+proto",
            "",
            &two_messages(),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(grpc_status(&headers), Some("3"), "{headers:?}");

    // Directly: plain gRPC framing to GrpcHost (over HTTP/1.1, which tonic
    // accepts; the refusal comes back trailers-only, in the headers).
    let body = two_messages();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {0}\r\ncontent-type: application/grpc\r\n\
         te: trailers\r\ncontent-length: {1}\r\nconnection: close\r\n\r\n",
        users.address,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let (status, headers) = http1(&users.address.to_string(), request).await;
    assert_eq!(status, 200);
    assert_eq!(grpc_status(&headers), Some("3"), "{headers:?}");

    // One message is still fine, both ways.
    let (_, headers) = http1(
        &gateway.address,
        web_request(
            &gateway.address,
            path,
            "application/grpc-web+proto",
            "",
            &two_messages()[..5],
        ),
    )
    .await;
    assert_eq!(
        grpc_status(&headers),
        None,
        "answered with a body: {headers:?}"
    );
    users.shutdown.cancel();
}

/// The grpc-status and grpc-message of an HTTP/2 answer (headers, else
/// trailers).
async fn h2_status(response: http::Response<hyper::body::Incoming>) -> (String, String) {
    use http_body_util::BodyExt;
    let field = |headers: &http::HeaderMap, name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    if response.headers().contains_key("grpc-status") {
        let headers = response.headers();
        return (
            field(headers, "grpc-status"),
            field(headers, "grpc-message"),
        );
    }
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned()
        .unwrap_or_default();
    (
        field(&trailers, "grpc-status"),
        field(&trailers, "grpc-message"),
    )
}

/// The same rule over HTTP/2 with plain gRPC (the relay's path): a second
/// message is INVALID_ARGUMENT from the gateway itself (the upstream here
/// answers OK to anything, as tonic would by ignoring the second message),
/// and the connection goes on serving calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_message_over_http2_is_invalid_argument() {
    let users = replica().await;
    // It reads the whole request, as a unary handler does, then says OK.
    let lenient = common::scripted_upstream(|_request: axum::body::Bytes| async {
        axum::response::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(axum::body::Body::empty())
            .unwrap()
    })
    .await;
    // Not `serving()`: its GetJwks needs an answer the lenient upstream
    // does not give. The one-message calls below wait for the route instead.
    let gateway = Gateway::start(users.address, "", &users_routes(&[lenient], ""));
    let _listening = gateway.channel().await;
    let socket = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(socket),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let call = |body: Vec<u8>| {
        http::Request::post(format!(
            "http://{}/munity.users.v1.Users/GetJwks",
            gateway.address
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
    };

    let started = std::time::Instant::now();
    loop {
        let response = sender
            .send_request(call(two_messages()[..5].to_vec()))
            .await
            .unwrap();
        if h2_status(response).await.0 == "0" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = sender.send_request(call(two_messages())).await.unwrap();
    let (status, message) = h2_status(response).await;
    assert_eq!(status, "3", "{message}");
    assert!(
        message.contains("takes exactly one request message"),
        "{message}"
    );

    let response = sender
        .send_request(call(two_messages()[..5].to_vec()))
        .await
        .unwrap();
    assert_eq!(h2_status(response).await.0, "0");
    users.shutdown.cancel();
}

/// An HTTP/1.1 request pipelined behind another was dropped, though the
/// first answer said keep-alive. Both are answered now, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_are_each_answered() {
    let users = replica().await;
    let gateway = gateway_in_front_of(&users, "").await;
    let path = "/munity.users.v1.Users/GetJwks";
    let mut both = web_request(
        &gateway.address,
        path,
        "application/grpc-web+proto",
        "",
        &two_messages()[..5],
    );
    // The first keeps the connection open; the second closes it.
    let first = String::from_utf8(both.clone()).unwrap();
    both = first.replace("connection: close\r\n", "").into_bytes();
    both.extend(web_request(
        &gateway.address,
        path,
        "application/grpc-web-text",
        "",
        b"AAAAAAA=",
    ));
    let received = tokio::time::timeout(
        Duration::from_secs(10),
        http1_to_end(&gateway.address, both),
    )
    .await
    .expect("both answered and the connection closed");
    let text = String::from_utf8_lossy(&received);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(
        text.contains("grpc-web-text"),
        "the second answer is the text one: {text}"
    );
    users.shutdown.cancel();
}
