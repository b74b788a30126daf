//! Every metric the observability/ rules and dashboards query is one Munity
//! really exports: `munity dev` is started, called (register, a meeting
//! with a vote and a join, a live stream, a warehouse ingest) until every
//! family has series, its gateway admin port and a service port are
//! scraped, and each name in the PromQL (histogram `_bucket`, `_sum` and
//! `_count` understood; `munity:` names must be recorded by the rules)
//! is checked; so is each `service="..."` and `group="..."` the dashboards
//! and rules pin.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use munity_platform::auth::with_bearer;
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    notify::v1::{self as notify, notify_client::NotifyClient},
    warehouse::v1::{self as wh, warehouse_client::WarehouseClient},
};
use munity_testkit::{ADMIN_EMAIL, curl, register, register_as, service_token, start_dev};

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability")
}

/// `text` without comments (`#` to the end of the line) and with quoted
/// strings blanked (label values, regexes, templates).
fn code_only(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut quote = None;
        for c in line.chars() {
            match quote {
                Some(q) if c == q => {
                    quote = None;
                    out.push(' ');
                }
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == '#' => break,
                None => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// Identifiers in `text` that name Munity metrics (`munity_...`) or
/// recording rules (`munity:...`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let code = code_only(text);
    let mut names = BTreeSet::new();
    let mut current = String::new();
    for c in code.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("munity_") || current.starts_with("munity:") {
                names.insert(current.trim_end_matches(':').to_owned());
            }
            current.clear();
        }
    }
    names
}

/// `label="value"` equality matchers for `labels` in `text`.
fn pinned_values(text: &str, labels: &[&str]) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for label in labels {
        let needle = format!("{label}=\"");
        for (at, _) in text.match_indices(&needle) {
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &text[at + needle.len()..];
            if let Some(end) = rest.find('"') {
                found.insert(((*label).to_owned(), rest[..end].to_owned()));
            }
        }
    }
    found
}

/// Every PromQL expression of the dashboards (panel targets and variable
/// queries), with the file it is in.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let dir = observability().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                exprs.push((file.clone(), target["expr"].as_str().unwrap().to_owned()));
            }
        }
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            if let Some(query) = variable["query"]["query"].as_str() {
                exprs.push((file.clone(), query.to_owned()));
            }
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    exprs
}

/// A scrape: metric name -> the label sets of its series.
fn parse_exposition(text: &str, into: &mut BTreeMap<String, Vec<BTreeMap<String, String>>>) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut set = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap();
            set.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
        }
        into.entry(name.to_owned()).or_default().push(set);
    }
}

async fn scrape(addresses: &[String]) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut metrics = BTreeMap::new();
    for address in addresses {
        let (status, body) = curl(&[&format!("http://{address}/metrics")]).await;
        assert_eq!(status, 200, "{address}: {body}");
        parse_exposition(&body, &mut metrics);
    }
    metrics
}

/// A histogram's or counter's exported names for a PromQL name.
fn exported(name: &str, metrics: &BTreeMap<String, Vec<BTreeMap<String, String>>>) -> bool {
    metrics.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| metrics.contains_key(&format!("{base}_bucket")))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_rules_and_dashboards_query_is_exported() {
    let rules_text =
        std::fs::read_to_string(observability().join("prometheus/rules/munity.rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(recorded.len() >= 8, "{recorded:?}");
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in metric_names(&rules_text) {
        wanted
            .entry(name)
            .or_default()
            .insert("munity.rules.yml".into());
    }
    let mut pinned = pinned_values(&rules_text, &["service", "group"]);
    for (file, expr) in dashboard_exprs() {
        for name in metric_names(&expr) {
            wanted.entry(name).or_default().insert(file.clone());
        }
        pinned.extend(pinned_values(&expr, &["service", "group"]));
    }

    // --- munity dev, called until every family the rules use has series ---
    let dir = tempfile::tempdir().unwrap();
    let (munity, channel) = start_dev(env!("CARGO_BIN_EXE_munity"), dir.path()).await;
    let (admin, _) = register_as(&channel, "Ops", ADMIN_EMAIL).await;
    let (alice, alice_id) = register(&channel, "Alice").await;
    let (bob, _) = register(&channel, "Bob").await;
    let mut events_client = EventsClient::new(channel.clone());
    let event = events_client
        .create_event(with_bearer(
            munity_testkit::meeting_request("metrics"),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let event_id = event.id.clone();
    events_client
        .vote(with_bearer(
            events::VoteRequest {
                event_id: event_id.clone(),
                option_id: 0,
            },
            &bob,
        ))
        .await
        .unwrap();
    // Joining before voting closes is refused; the answer is counted all the same.
    let _ = events_client
        .join(with_bearer(
            events::JoinRequest {
                event_id: event_id.clone(),
            },
            &bob,
        ))
        .await;
    let producer = service_token(&channel, &admin, "sensors", &["warehouse.produce"]).await;
    WarehouseClient::new(channel.clone())
        .ingest(with_bearer(
            wh::IngestRequest {
                records: vec![wh::Record {
                    id: "r-1".into(),
                    source: "sensors.metrics".into(),
                    time: Some(munity_testkit::in_hours(0)),
                    payload: Some(wh::record::Payload::Data(b"21.5".to_vec())),
                    content_type: "text/plain".into(),
                    ..Default::default()
                }],
            },
            &producer,
        ))
        .await
        .unwrap();
    // A live stream, open while the metrics are read.
    let _stream = NotifyClient::new(channel.clone())
        .subscribe(with_bearer(
            notify::SubscribeRequest {
                topics: vec![format!("user:{alice_id}")],
                resume: vec![],
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();

    let targets = vec![
        munity.address("gateway_admin").to_owned(),
        munity.address("users").to_owned(),
    ];
    let started = Instant::now();
    let (metrics, missing) = loop {
        let metrics = scrape(&targets).await;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(name, _)| {
                if name.starts_with("munity:") {
                    !recorded.contains(*name)
                } else {
                    !exported(name, &metrics)
                }
            })
            .map(|(name, files)| format!("{name} (in {files:?})"))
            .collect();
        // Consumers report their lag after their first batch: moments.
        if missing.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break (metrics, missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "queried but not exported by munity dev: {missing:#?}\nexported: {:#?}",
        metrics.keys().collect::<Vec<_>>()
    );
    assert!(
        wanted.keys().filter(|n| n.starts_with("munity_")).count() >= 15,
        "{wanted:?}"
    );

    // The label values the queries pin exist.
    for (label, value) in &pinned {
        let seen = metrics
            .values()
            .flatten()
            .any(|series| series.get(label) == Some(value));
        assert!(seen, "no series has {label}=\"{value}\"");
    }
}

#[test]
fn the_name_scanner_reads_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(munity_x_seconds_bucket{service="munity_not_a_metric",method!~"A|B"}[5m]))) / munity:y:rate5m # munity_comment"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["munity:y:rate5m", "munity_x_seconds_bucket"]
    );
    assert_eq!(
        pinned_values(expr, &["service", "method"])
            .into_iter()
            .collect::<Vec<_>>(),
        [("service".to_owned(), "munity_not_a_metric".to_owned())]
    );
}
