//! The web app as the gateway serves it (`src/web.rs`): a real
//! `munity-gateway` process in front of a real users-svc, asked over plain
//! HTTP/1.1 for the app's files, client-side routes and the API paths that
//! must keep their own answers; then the same with `[gateway.web]` turned
//! off and pointed at a directory. And the committed bundle (`web/dist`)
//! is what `npm run build` makes of `web/src` today.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

mod common;

use common::{Gateway, replica, users_routes};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole response.
async fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    let address = address.to_owned();
    let head_only = method == "HEAD";
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&raw).unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 16384];
        let (head, mut rest) = loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break (
                    String::from_utf8(received[..end].to_vec()).unwrap(),
                    received[end + 4..].to_vec(),
                );
            }
            let read = stream.read(&mut buffer).expect("a response head");
            assert!(read > 0, "closed before the response head");
            received.extend_from_slice(&buffer[..read]);
        };
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap());
        if !head_only {
            while length.is_none_or(|l| rest.len() < l) {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => rest.extend_from_slice(&buffer[..read]),
                }
            }
        }
        Response {
            status,
            headers,
            body: rest,
        }
    })
    .await
    .unwrap()
}

async fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(address, "GET", path, headers, b"").await
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// The files under `dir`, relative path → bytes, sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// The asset the page loads with `attribute="/assets/..."` ending in `suffix`.
fn asset(index: &str, suffix: &str) -> String {
    index
        .split('"')
        .find(|part| part.starts_with("/assets/") && part.ends_with(suffix))
        .unwrap_or_else(|| panic!("no /assets/*{suffix} in {index}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_served_at_the_root_and_the_api_paths_keep_their_answers() {
    assert_eq!(
        munity_gateway::web::Web::embedded_files(),
        tree(&web_dir().join("dist")).len(),
        "the binary embeds every file of web/dist (a stale build would not)"
    );
    let users = replica().await;
    let gateway = Gateway::start(
        users.address,
        "health_check_interval_ms = 200",
        &users_routes(&[users.address], ""),
    )
    .serving()
    .await;
    let at = gateway.address.as_str();

    // index.html: revalidated every time, only 'self', no inline script.
    let index = get(at, "/", &[]).await;
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    let csp = index.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    let page = index.text();
    assert!(page.contains(r#"<div id="app"></div>"#), "{page}");
    for script in page.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        assert!(
            tag.contains("src=\"/assets/"),
            "only external scripts: <script{tag}>"
        );
    }
    assert!(!page.contains("style="), "no inline style");
    let etag = index.header("etag").unwrap().to_owned();
    let again = get(at, "/", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // Hashed assets: immutable for a year, precompressed when accepted.
    let script = asset(&page, ".js");
    let style = asset(&page, ".css");
    let plain = get(at, &script, &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        plain.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    let on_disk = std::fs::read(web_dir().join("dist").join(&script[1..])).unwrap();
    assert_eq!(plain.body, on_disk, "the embedded file is web/dist's");
    let gzip = get(at, &script, &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(&gzip.body[..2], &[0x1f, 0x8b]);
    assert!(gzip.body.len() < plain.body.len() / 2);
    let brotli = get(at, &script, &[("Accept-Encoding", "gzip, deflate, br")]).await;
    assert_eq!(brotli.header("content-encoding"), Some("br"));
    assert!(brotli.body.len() < gzip.body.len());
    let css = get(at, &style, &[]).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let head = request(at, "HEAD", &script, &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(plain.body.len().to_string().as_str())
    );
    let icon = get(at, "/favicon.svg", &[]).await;
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    assert_eq!(icon.header("cache-control"), Some("no-cache"));

    // Client-side routes get index.html; a missing file does not.
    for route in [
        "/meetings",
        "/meetings/01a2487b-948c-7643-bbe2-80296f7691f9",
        "/communities/",
        "/inbox?x=1",
    ] {
        let response = get(at, route, &[]).await;
        assert_eq!(response.status, 200, "{route}");
        assert_eq!(response.body, index.body, "{route}");
    }
    let missing = get(at, "/assets/index-missing.js", &[]).await;
    assert_eq!(missing.status, 404);
    assert_ne!(
        missing.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let traversal = get(at, "/assets/../../Cargo.toml", &[]).await;
    assert_ne!(traversal.status, 200);

    // The API's paths answer as before.
    let jwks = get(at, "/v1/jwks", &[]).await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.header("content-type"), Some("application/json"));
    let unknown = get(at, "/v1/nothing-here", &[]).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    let openapi = get(at, "/openapi.json", &[]).await;
    assert_eq!(openapi.header("content-type"), Some("application/json"));
    let docs = get(at, "/docs", &[]).await;
    assert!(docs.text().contains("/openapi.json") && docs.body != index.body);
    let grpc_get = get(at, "/munity.users.v1.Users/GetJwks", &[]).await;
    assert_ne!(
        grpc_get.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(grpc_get.header("content-security-policy").is_none());
    // gRPC-web from the app's own origin needs no CORS allowance; another
    // origin still does.
    let empty_message = [0u8, 0, 0, 0, 0];
    let own = request(
        at,
        "POST",
        "/munity.users.v1.Users/GetJwks",
        &[
            ("Content-Type", "application/grpc-web+proto"),
            ("Origin", &format!("http://{at}")),
        ],
        &empty_message,
    )
    .await;
    assert_eq!(own.status, 200);
    assert!(own.text().contains("grpc-status:0"), "{}", own.text());
    let foreign = request(
        at,
        "POST",
        "/munity.users.v1.Users/GetJwks",
        &[
            ("Content-Type", "application/grpc-web+proto"),
            ("Origin", "http://evil.example"),
        ],
        &empty_message,
    )
    .await;
    assert!(
        foreign.header("grpc-status") == Some("7") || foreign.text().contains("grpc-status:7"),
        "{:?} {}",
        foreign.headers,
        foreign.text()
    );
    // Plain gRPC too.
    let mut client = gateway.client().await;
    client
        .get_jwks(munity_proto::users::v1::GetJwksRequest {})
        .await
        .unwrap();
    users.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_can_be_turned_off_or_served_from_a_directory() {
    let users = replica().await;
    let routes = users_routes(&[users.address], "");

    let off = Gateway::start(
        users.address,
        "health_check_interval_ms = 200",
        &format!("{routes}\n[gateway.web]\nenabled = false\n"),
    )
    .serving()
    .await;
    for path in ["/", "/meetings", "/favicon.svg"] {
        let response = get(&off.address, path, &[]).await;
        assert_eq!(response.status, 404, "{path} with the app off");
        assert!(response.header("content-security-policy").is_none());
    }
    // And the app's own origin is then an origin like any other.
    let own = request(
        &off.address,
        "POST",
        "/munity.users.v1.Users/GetJwks",
        &[
            ("Content-Type", "application/grpc-web+proto"),
            ("Origin", &format!("http://{}", off.address)),
        ],
        &[0, 0, 0, 0, 0],
    )
    .await;
    assert!(own.header("grpc-status") == Some("7") || own.text().contains("grpc-status:7"));
    drop(off);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<p>dev build</p>").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/app-1234.js"), "console.log(1)").unwrap();
    let served = Gateway::start(
        users.address,
        "health_check_interval_ms = 200",
        &format!(
            "{routes}\n[gateway.web]\ndir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .serving()
    .await;
    let index = get(&served.address, "/", &[]).await;
    assert_eq!(index.text(), "<p>dev build</p>");
    assert_eq!(
        get(&served.address, "/somewhere/else", &[]).await.text(),
        "<p>dev build</p>"
    );
    let script = get(&served.address, "/assets/app-1234.js", &[]).await;
    assert_eq!(script.text(), "console.log(1)");
    assert_eq!(
        script.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    // Edited on disk, served at once (no restart).
    std::fs::write(dir.path().join("index.html"), "<p>rebuilt</p>").unwrap();
    assert_eq!(
        get(&served.address, "/", &[]).await.text(),
        "<p>rebuilt</p>"
    );
    assert_eq!(get(&served.address, "/v1/jwks", &[]).await.status, 200);
    users.shutdown.cancel();
}

/// `web/dist` (committed, embedded in the gateway) and `web/src/gen`
/// (committed, generated from proto/) are what the tools make today.
#[test]
fn the_committed_web_bundle_is_a_fresh_build_of_web_src() {
    let web = web_dir();
    if !web.join("node_modules/.bin/vite").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "web/node_modules is missing in CI: `npm ci --prefix web` (scripts/test.sh does)"
        );
        eprintln!("skipped: no web/node_modules (npm ci --prefix web)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        web.join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program)
            .args(args)
            .env("PATH", &path)
            .current_dir(&web)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let gen_dir = out.path().join("gen");
    run("buf", &["generate", "--output", gen_dir.to_str().unwrap()]);
    let generated = tree(&gen_dir.join("src/gen"));
    assert!(!generated.is_empty());
    assert!(
        generated == tree(&web.join("src/gen")),
        "web/src/gen is out of date: run `npm run generate` in web/"
    );
    let dist = out.path().join("dist");
    run(
        "vite",
        &[
            "build",
            "--outDir",
            dist.to_str().unwrap(),
            "--emptyOutDir",
            "--logLevel",
            "warn",
        ],
    );
    let fresh = tree(&dist);
    let committed = tree(&web.join("dist"));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "web/dist is out of date: run `npm run build` in web/"
    );
    assert!(
        committed == fresh,
        "web/dist is out of date: run `npm run build` in web/"
    );
}
