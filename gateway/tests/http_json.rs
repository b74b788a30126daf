//! HTTP/JSON at the edge, proven by plain HTTP clients: a real
//! `munity-gateway` process in front of a real users-svc (in this test
//! process, on port 0), called with curl and with Python `requests`
//! (`tests/http-json/rest_client.py`, from the virtualenv `scripts/test.sh`
//! makes). The transcoded calls take the gRPC calls' path: the same
//! metrics count them, the same quota refuses them.

use std::net::SocketAddr;

mod common;

use common::{Gateway, replica, users_routes};
use munity_testkit::curl;

/// A gateway in front of `users`, with room for the Register calls.
async fn gateway(users: SocketAddr, route_keys: &str) -> Gateway {
    let tables = format!(
        "{}\n[[gateway.rate_limits.rules]]\nmethod = \"/munity.users.v1.Users/Register\"\nrequests = 100\nper_secs = 60\nburst = 100\n",
        users_routes(&[users], route_keys)
    );
    Gateway::start(users, "health_check_interval_ms = 200", &tables)
        .serving()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_registers_and_reads_its_account() {
    let users = replica().await;
    let gateway = gateway(users.address, "").await;
    let base = format!("http://{}", gateway.address);

    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"email":"curl@example.com","password":"correct horse","displayName":"Curl"}"#,
        &format!("{base}/v1/auth/register"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let registered: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = registered["accessToken"].as_str().unwrap();

    let (status, body) = curl(&[
        "-H",
        &format!("authorization: Bearer {token}"),
        &format!("{base}/v1/me"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["email"], "curl@example.com");
    assert_eq!(me["displayName"], "Curl");

    // Over HTTP/2 (prior knowledge, h2c) too.
    let (status, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &format!("authorization: Bearer {token}"),
        &format!("{base}/v1/me"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = curl(&[&format!("{base}/v1/me")]).await;
    assert_eq!(status, 401, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], 16);

    // Counted like gRPC calls, under the gRPC method.
    let counted = gateway
        .metric("munity_gateway_requests_total{code=\"0\",method=\"GetMe\",service=\"munity.users.v1.Users\"}")
        .await;
    assert_eq!(counted, 2, "{}", gateway.metrics().await);
    users.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_client_gets_statuses_and_json_errors() {
    let Some(python) = munity_testkit::python() else {
        return;
    };
    let users = replica().await;
    let gateway = gateway(users.address, "").await;
    munity_testkit::python_script(
        &python,
        "rest_client.py",
        vec![format!("http://{}", gateway.address)],
    )
    .await;
    users.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_turn_http_json_off_and_docs_are_served() {
    let users = replica().await;
    let gateway = gateway(users.address, "http_json = false").await;
    let base = format!("http://{}", gateway.address);
    let (status, body) = curl(&[&format!("{base}/v1/jwks")]).await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = curl(&[&format!("{base}/openapi.json")]).await;
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document["paths"]["/v1/me"]["get"]["x-grpc-method"],
        "/munity.users.v1.Users/GetMe"
    );
    let (status, page) = curl(&[&format!("{base}/docs")]).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("/openapi.json") && !page.contains("https://"),
        "{page}"
    );
    users.shutdown.cancel();
}

/// The published document (`docs/openapi.json`, linked from the README) is
/// what the gateway serves.
#[test]
fn the_published_openapi_file_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    let current = munity_gateway::openapi_document().unwrap();
    assert!(
        published == current,
        "{} is out of date: run `cargo run -p munity-gateway -- openapi --out docs/openapi.json`",
        path.display()
    );
}
