//! The operations files (`ops/`, docs/operations.md): the Prometheus scrape configuration,
//! the alert rules and the Grafana dashboard are well formed, every PromQL expression in
//! them parses (with a real PromQL parser: a syntax error fails here, not on a dashboard),
//! and every metric they name is exported by a running `serve`, `relay` or `project`
//! process (on the real Kafka), driven by registrations, a login, a post, a like and an
//! SSE connection. And promtool accepts them, and the alerts pass their unit tests
//! (`ops/prometheus/alerts_test.yml`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::json;
use serde_norway::Value as Yaml;
use testkit::TestDb;
use uuid::Uuid;

#[path = "common/processes.rs"]
mod processes;
use processes::{hybridlive, spawn_at};

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// One PromQL expression and where it is written (for the failure messages).
#[derive(Debug)]
struct Query {
    origin: String,
    expr: String,
}

/// The scrape configuration: the three jobs with their targets, and rule files that exist.
fn check_scrape_config() {
    let path = ops_dir().join("prometheus/prometheus.yml");
    let config = yaml(&path);
    let rule_files = config["rule_files"]
        .as_sequence()
        .expect("prometheus.yml has rule_files");
    assert!(!rule_files.is_empty(), "prometheus.yml names no rule file");
    for file in rule_files {
        let file = file.as_str().expect("a rule file is a path");
        // Prometheus resolves them relative to the configuration file.
        let rules = path.parent().unwrap().join(file);
        assert!(rules.is_file(), "rule file {} is missing", rules.display());
    }
    let jobs: BTreeMap<&str, &Yaml> = config["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs")
        .iter()
        .map(|job| (job["job_name"].as_str().expect("every job has a name"), job))
        .collect();
    for name in ["hybridlive-serve", "hybridlive-relay", "hybridlive-project"] {
        let job = jobs
            .get(name)
            .unwrap_or_else(|| panic!("no scrape job {name}"));
        let targets: Vec<&str> = job["static_configs"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no static_configs"))
            .iter()
            .flat_map(|c| c["targets"].as_sequence().into_iter().flatten())
            .map(|t| t.as_str().expect("a target is host:port"))
            .collect();
        assert!(!targets.is_empty(), "{name} has no target");
        for target in targets {
            assert!(
                target.parse::<std::net::SocketAddr>().is_ok()
                    || target
                        .rsplit_once(':')
                        .is_some_and(|(_, port)| port.parse::<u16>().is_ok()),
                "{name}: target {target} is not host:port"
            );
        }
    }
}

/// Every alert rule: a name, an expression, a `for`, a severity and both annotations.
fn alert_queries() -> Vec<Query> {
    let path = ops_dir().join("prometheus/alerts.yml");
    let rules = yaml(&path);
    let mut queries = Vec::new();
    let mut names = BTreeSet::new();
    let groups = rules["groups"]
        .as_sequence()
        .expect("alerts.yml has groups");
    for group in groups {
        let group_name = group["name"].as_str().expect("every group has a name");
        for rule in group["rules"].as_sequence().expect("every group has rules") {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("a rule of {group_name} is not an alert"));
            assert!(names.insert(alert.to_owned()), "alert {alert} twice");
            let for_ = rule["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no `for`"));
            promql_parser::util::parse_duration(for_)
                .unwrap_or_else(|e| panic!("{alert}: `for: {for_}` is not a duration: {e}"));
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{alert}: severity {severity:?}"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|text| !text.trim().is_empty()),
                    "{alert} has no {annotation}"
                );
            }
            queries.push(Query {
                origin: format!("alert {alert}"),
                expr: rule["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{alert} has no expr"))
                    .to_owned(),
            });
        }
    }
    assert!(
        queries.len() >= 3,
        "alerts.yml has {} alerts",
        queries.len()
    );
    queries
}

/// Grafana's interval variables, as Prometheus would see them once Grafana replaced them.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// The dashboard: its structure (as Grafana's schema wants it) and every panel's queries.
fn dashboard_queries() -> Vec<Query> {
    let path = ops_dir().join("grafana/hybridlive.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of Prometheus data sources"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    let mut graphs = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(ids.insert(id), "panel id {id} twice ({title})");
        let grid = &panel["gridPos"];
        for field in ["h", "w", "x", "y"] {
            assert!(grid[field].is_u64(), "panel {title}: gridPos.{field}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "panel {title} overflows the 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert!(
            matches!(
                panel["type"].as_str(),
                Some("timeseries" | "stat" | "gauge" | "table" | "bargauge")
            ),
            "panel {title}: type {}",
            panel["type"]
        );
        let prometheus = |datasource: &serde_json::Value| {
            datasource["type"] == "prometheus" && datasource["uid"] == "${datasource}"
        };
        assert!(
            prometheus(&panel["datasource"]),
            "panel {title}: datasource {}",
            panel["datasource"]
        );
        assert!(
            panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "panel {title} has no unit"
        );
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().expect("every target has a refId");
            assert!(
                ref_ids.insert(ref_id),
                "panel {title}: refId {ref_id} twice"
            );
            assert!(prometheus(&target["datasource"]), "panel {title} {ref_id}");
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("panel {title} {ref_id} has no expr"));
            let expr = without_grafana_variables(expr);
            assert!(
                !expr.contains('$'),
                "panel {title} {ref_id}: unknown variable in {expr}"
            );
            queries.push(Query {
                origin: format!("panel \"{title}\" {ref_id}"),
                expr,
            });
        }
    }
    assert!(graphs >= 10, "the dashboard has {graphs} panels");
    queries
}

/// Collects the metric name of every selector.
#[derive(Default)]
struct Selected(BTreeSet<String>);

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        let name = selector
            .name
            .clone()
            .ok_or_else(|| format!("a selector without a metric name: {expr}"))?;
        self.0.insert(name);
        Ok(true)
    }
}

/// Parses every query; returns each metric name with the places that use it. Prometheus's
/// own `up` is left out.
fn metrics_named(queries: &[Query]) -> BTreeMap<String, Vec<String>> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for query in queries {
        let expr = promql_parser::parser::parse(&query.expr)
            .unwrap_or_else(|e| panic!("{}: `{}` does not parse: {e}", query.origin, query.expr));
        let mut selected = Selected::default();
        walk_expr(&mut selected, &expr).unwrap_or_else(|e| panic!("{}: {e}", query.origin));
        assert!(!selected.0.is_empty(), "{} selects no metric", query.origin);
        for name in selected.0 {
            if name != "up" {
                named.entry(name).or_default().push(query.origin.clone());
            }
        }
    }
    named
}

fn all_queries() -> Vec<Query> {
    check_scrape_config();
    let mut queries = dashboard_queries();
    queries.extend(alert_queries());
    queries
}

#[test]
fn the_scrape_config_alert_rules_and_dashboard_are_well_formed_and_their_promql_parses() {
    let named = metrics_named(&all_queries());
    // What the issue asks the dashboard and the alerts to show.
    for wanted in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "eventstore_appended_events_total",
        "eventstore_reader_holdback_seconds",
        "relay_backlog_events",
        "relay_lag_seconds",
        "relay_active",
        "projection_lag_events",
        "projection_lag_seconds",
        "projection_retries_total",
        "projection_dead_lettered_total",
        "sse_connections",
        "sse_slow_clients_dropped_total",
        "read_model_cache_hits_total",
        "emails_sent_total",
    ] {
        assert!(named.contains_key(wanted), "nothing shows {wanted}");
    }
}

#[test]
fn a_promql_syntax_error_is_caught() {
    let broken = [Query {
        origin: "a broken query".into(),
        expr: "sum by (route (rate(http_requests_total[5m]))".into(),
    }];
    let caught = std::panic::catch_unwind(|| metrics_named(&broken));
    assert!(caught.is_err(), "an unbalanced parenthesis parsed");
}

/// Runs `promtool` with `args` in `ops/prometheus/`; its output when it fails.
fn promtool(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(ops_dir().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool did not run ({e}): these checks need Debian's promtool; run \
                 `scripts/services.sh --ops`"
            )
        });
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool {}: {}\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Prometheus' own checks: the scrape configuration and the alert rules load, and the
/// alerts fire (and stay quiet) on the synthetic series of `alerts_test.yml` as each case
/// says. A rule changed so that its case no longer holds fails here.
#[test]
fn promtool_accepts_the_config_and_the_alert_rules_pass_their_unit_tests() {
    promtool(&["check", "config", "prometheus.yml"]).unwrap();
    promtool(&["check", "rules", "alerts.yml"]).unwrap();
    promtool(&["test", "rules", "alerts_test.yml"]).unwrap();
}

/// The metric families of a Prometheus text exposition, with their types.
fn families(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Whether `name`, as a query selects it, is a series of one of `families`: a counter or
/// gauge by its name, a histogram's `_bucket`, `_sum` or `_count` (a summary's `_sum`
/// and `_count`) by its family.
fn exported(name: &str, families: &HashMap<String, String>) -> bool {
    if families
        .get(name)
        .is_some_and(|kind| kind != "histogram" && kind != "summary")
    {
        return true;
    }
    let family_of = |suffix: &str, kinds: &[&str]| {
        name.strip_suffix(suffix)
            .and_then(|family| families.get(family))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    };
    family_of("_bucket", &["histogram"])
        || family_of("_sum", &["histogram", "summary"])
        || family_of("_count", &["histogram", "summary"])
}

async fn scrape(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Registers `username` and returns its access token and user id.
async fn register(http: &reqwest::Client, base: &str, username: &str) -> (String, String) {
    let response = http
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({
            "username": username,
            "email": format!("{username}@example.com"),
            "password": "correct horse battery staple",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "registering {username}");
    let body: serde_json::Value = response.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["user_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported_by_serve_relay_or_project() {
    let named = metrics_named(&all_queries());
    let db = TestDb::new().await;
    let run = Uuid::new_v4().simple().to_string();
    let topics = testkit::kafka::TestTopics::new();
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let smtp_url = std::env::var("SMTP_URL").unwrap_or_else(|_| "smtp://127.0.0.1:1025".into());
    let (_relay, relay) = spawn_at(
        hybridlive(&db, &["relay"])
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("KAFKA_TOPIC_PREFIX", &topics.prefix),
        "Serving /metrics.",
    )
    .await;
    let (_project, project) = spawn_at(
        hybridlive(&db, &["project", "all"])
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("KAFKA_TOPIC_PREFIX", &topics.prefix)
            .env("REDIS_PREFIX", format!("test:{run}:"))
            .env("JWT_SECRET", &secret)
            .env("SMTP_URL", &smtp_url)
            .env("MAIL_FROM", "Hybrid Live <no-reply@hybridlive.test>"),
        "Serving /metrics.",
    )
    .await;
    let (_serve, serve) = spawn_at(
        hybridlive(&db, &["serve"])
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", &secret)
            .env("SEAL_INTERVAL_SECS", "0")
            .env("REDIS_PREFIX", format!("test:{run}:")),
        "Serving the HTTP API.",
    )
    .await;

    // Traffic a user makes: registrations, a login (and a failed one), a post, a like, a
    // follow, the feed, and an SSE connection held open while the processes are scraped.
    let http = reqwest::Client::new();
    let base = format!("http://{serve}");
    let suffix = &run[..8];
    let (alice, alice_id) = register(&http, &base, &format!("alice{suffix}")).await;
    let (bob, _) = register(&http, &base, &format!("bob{suffix}")).await;
    let login = http
        .post(format!("{base}/v1/auth/login"))
        .json(
            &json!({"login": format!("alice{suffix}"), "password": "correct horse battery staple"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let refused = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"login": format!("alice{suffix}"), "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let follow = http
        .put(format!("{base}/v1/users/{alice_id}/follow"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert!(follow.status().is_success(), "follow: {}", follow.status());
    let published = http
        .post(format!("{base}/v1/posts"))
        .bearer_auth(&alice)
        .json(
            &json!({"title": "Dashboards", "body_markdown": "Every metric **named** is exported."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let post: serde_json::Value = published.json().await.unwrap();
    let post_id = post["post_id"].as_str().unwrap();
    let like = http
        .put(format!("{base}/v1/posts/{post_id}/like"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert!(like.status().is_success(), "like: {}", like.status());
    let feed = http
        .get(format!("{base}/v1/feed"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let stream = http
        .get(format!("{base}/v1/stream"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // The relay publishes the events and the projections apply them from Kafka: scrape
    // until every named metric is exported somewhere (a minute at most).
    let start = Instant::now();
    let (missing, texts) = loop {
        let texts = [
            ("serve", scrape(&serve).await),
            ("relay", scrape(&relay).await),
            ("project", scrape(&project).await),
        ];
        let exported_by: Vec<(&str, HashMap<String, String>)> = texts
            .iter()
            .map(|(process, text)| (*process, families(text)))
            .collect();
        let missing: Vec<(&String, &Vec<String>)> = named
            .iter()
            .filter(|(name, _)| {
                !exported_by
                    .iter()
                    .any(|(_, families)| exported(name, families))
            })
            .collect();
        if missing.is_empty() || start.elapsed() > Duration::from_secs(60) {
            break (missing, texts);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let exports: Vec<String> = texts
        .iter()
        .map(|(process, text)| {
            let mut names: Vec<String> = families(text).into_keys().collect();
            names.sort();
            format!("{process}: {}", names.join(" "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics named in ops/ but exported by no process:\n{}\n\nexported:\n{}",
        missing
            .iter()
            .map(|(name, places)| format!("  {name} (in {})", places.join(", ")))
            .collect::<Vec<_>>()
            .join("\n"),
        exports.join("\n")
    );
    // The SSE connection is counted while open, and the HTTP series carry route templates.
    let serve_text = &texts[0].1;
    assert!(
        serve_text
            .lines()
            .any(|l| l.starts_with("sse_connections 1")),
        "{serve_text}"
    );
    assert!(
        serve_text.contains("route=\"/v1/posts/{post_id}/like\""),
        "{serve_text}"
    );
    drop(stream);
}
