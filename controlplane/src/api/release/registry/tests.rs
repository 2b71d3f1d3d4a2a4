//! Link parsing and error classification, and tag pagination against a
//! small HTTP responder that pages the way quay.io does (its own tokens
//! in `Link`, relative and absolute), which the real registry of the
//! integration test does not (it sends every tag at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

#[test]
fn registry_hosts_are_lowercase_host_and_port_without_scheme_or_path() {
    assert_eq!(parse_registry_host("Registry.Local:5000").as_deref(), Ok("registry.local:5000"));
    assert_eq!(parse_registry_host("localhost").as_deref(), Ok("localhost"));
    assert_eq!(parse_registry_host("127.0.0.1:5000").as_deref(), Ok("127.0.0.1:5000"));
    for bad in ["", "http://quay.io", "quay.io/kairos", "registry", "quay.io:http", "-x.io"] {
        let error = parse_registry_host(bad).expect_err(bad);
        assert!(error.to_string().contains("host[:port]"), "{error}");
    }
}

#[test]
fn the_next_link_is_found_among_others_quoted_or_not() {
    assert_eq!(
        next_link(r#"</v2/k/o/tags/list?n=2&next_page=abc>; rel="next""#),
        Some("/v2/k/o/tags/list?n=2&next_page=abc")
    );
    assert_eq!(
        next_link(r#"<https://a/prev>; rel="prev", <https://a/next?x=1,2>; rel=next"#),
        Some("https://a/next?x=1,2")
    );
    assert_eq!(next_link(r#"<https://a/first>; rel="first last""#), None);
    assert_eq!(next_link(r#"<https://a/x>; title="next""#), None);
    assert_eq!(next_link("garbage"), None);
}

#[test]
fn only_the_registry_itself_may_serve_the_next_page() {
    let base = Url::parse("https://quay.io/v2/kairos/opensuse/tags/list?n=100").expect("url");
    assert!(same_origin(&base, &Url::parse("https://quay.io:443/v2/x").expect("url")));
    assert!(!same_origin(&base, &Url::parse("http://quay.io/v2/x").expect("url")));
    assert!(!same_origin(&base, &Url::parse("https://evil.example/v2/x").expect("url")));
}

#[test]
fn only_failures_of_the_registry_itself_count_as_unavailable() {
    let registry = Registry::new("registry.local:5000", &RegistrySettings::default()).expect("client");
    let status = |code: u16| registry.classify_status("listing", code, String::new(), String::new());
    assert!(status(503).is_unavailable() && status(429).is_unavailable());
    for code in [404, 401, 403, 400] {
        assert!(!status(code).is_unavailable(), "{code}");
    }
    let missing = status(404).to_string();
    assert!(missing.starts_with("registry.local:5000: listing: not found"), "{missing}");
}

type Route = (String, u16, Vec<(String, String)>, String);

/// Answers `GET` requests from the table `routes` makes for the address it
/// listens on (path and query → status, extra headers, body); anything
/// else is a 404 in the spec's shape. One request per connection.
async fn responder(routes: impl FnOnce(&str) -> Vec<Route>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let routes = Arc::new(routes(&addr));
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let (status, headers, body) = routes
                    .iter()
                    .find(|(path, ..)| *path == target)
                    .map(|(_, status, headers, body)| (*status, headers.clone(), body.clone()))
                    .unwrap_or((404, Vec::new(), r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}"#.into()));
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    answer.push_str(&format!("{name}: {value}\r\n"));
                }
                answer.push_str("\r\n");
                answer.push_str(&body);
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

fn page(path: &str, tags: &[&str], next: Option<String>) -> Route {
    let headers = next.map(|n| vec![("Link".to_owned(), format!("<{n}>; rel=\"next\""))]).unwrap_or_default();
    (path.to_owned(), 200, headers, serde_json::json!({ "name": "x", "tags": tags }).to_string())
}

fn plain_http(addr: &str, page_size: u32) -> RegistrySettings {
    RegistrySettings { page_size, ..RegistrySettings::with_plain_http(vec![addr.to_owned()]) }
}

#[tokio::test]
async fn tag_lists_follow_next_links_and_stop_at_other_hosts_and_loops() {
    let paged = "/v2/kairos/paged/tags/list";
    let (addr, server) = responder(|addr| {
        vec![
            ("/v2/".to_owned(), 200, Vec::new(), "{}".to_owned()),
            page(&format!("{paged}?n=2"), &["a", "b"], Some(format!("{paged}?n=2&next_page=t1"))),
            page(
                &format!("{paged}?n=2&next_page=t1"),
                &["c", "d"],
                Some(format!("http://{addr}{paged}?n=2&next_page=t2")),
            ),
            page(&format!("{paged}?n=2&next_page=t2"), &["e"], None),
            page("/v2/kairos/escape/tags/list?n=2", &["x"], Some("http://elsewhere.example/v2/x".to_owned())),
            page("/v2/kairos/loop/tags/list?n=2", &["y"], Some("/v2/kairos/loop/tags/list?n=2".to_owned())),
            ("/v2/kairos/null/tags/list?n=2".to_owned(), 200, Vec::new(), r#"{"name":"n","tags":null}"#.to_owned()),
        ]
    })
    .await;
    let registry = Registry::new(&addr, &plain_http(&addr, 2)).expect("client");

    let listing = registry.list_tags("kairos/paged").await;
    assert!(listing.error.is_none(), "{:?}", listing.error);
    assert_eq!(listing.tags, ["a", "b", "c", "d", "e"]);

    let escape = registry.list_tags("kairos/escape").await;
    assert_eq!(escape.tags, ["x"], "the tags before the bad link are kept");
    let error = escape.error.expect("an error").to_string();
    assert!(error.contains("elsewhere.example") && error.contains("leaves"), "{error}");

    let looping = registry.list_tags("kairos/loop").await;
    assert_eq!(looping.tags, ["y"]);
    assert!(looping.error.expect("an error").to_string().contains("already read"));

    let null = registry.list_tags("kairos/null").await;
    assert!(null.tags.is_empty() && null.error.is_none(), "{null:?}");

    let missing = registry.list_tags("kairos/missing").await;
    let error = missing.error.expect("an error");
    assert!(matches!(&error, RegistryError::NotFound { code, .. } if code == "NAME_UNKNOWN"), "{error:?}");
    assert!(!error.is_unavailable());
    server.abort();
}

#[tokio::test]
async fn plain_http_registries_are_refused_without_the_opt_in() {
    let (addr, server) = responder(|_| vec![("/v2/".to_owned(), 200, Vec::new(), "{}".to_owned())]).await;
    // The responder waits for a request line and never answers the TLS hello.
    let settings = RegistrySettings { connect_timeout: Duration::from_millis(500), ..RegistrySettings::default() };
    let registry = Registry::new(&addr, &settings).expect("client");
    let error = registry.list_tags("kairos/opensuse").await.error.expect("HTTPS to an HTTP port fails");
    assert!(error.is_unavailable(), "{error:?}: {error}");
    let message = error.to_string();
    assert!(message.contains("cannot talk https"), "{message}");
    assert!(message.contains(&format!("--registry-plain-http {addr}")), "{message}");
    server.abort();
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // Accepts and holds connections without a word.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let settings = RegistrySettings { request_timeout: Duration::from_millis(300), ..plain_http(&addr, 2) };
    let registry = Registry::new(&addr, &settings).expect("client");
    let started = std::time::Instant::now();
    let error = registry.list_tags("kairos/opensuse").await.error.expect("a timeout");
    assert!(matches!(error, RegistryError::Timeout { .. }), "{error:?}");
    assert!(error.is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    server.abort();
}
