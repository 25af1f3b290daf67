//! The demo page in real headless Chromium, driven over WebDriver: what a person
//! sees after registering, and a like made elsewhere reaching a post they have open.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/services.sh --browser`). Without
//! them these tests fail and say so: a browser test that passes without a browser proves
//! nothing.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::spawn_app;

use crate::live::{publish, readable};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::Method;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const SESSION_KEY: &str = "hybridlive.session";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// chromedriver on a free port of 127.0.0.1, in a process group of its own so that dropping
/// it also ends the browsers it started, whatever the test did.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and \
                 chromium-driver; run `scripts/services.sh --browser`"
            );
        }
        // The port is free when chosen; another process may take it before chromedriver
        // binds it, so try again with another.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port on 127.0.0.1")
                .port();
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts");
            let mut driver = ChromeDriver {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            if driver.ready().await {
                return driver;
            }
        }
        panic!("chromedriver did not become ready on 127.0.0.1");
    }

    /// Waits for `GET /status` to say ready; false when chromedriver exited or took too long.
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        let http = reqwest::Client::new();
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if let Ok(response) = http.get(format!("{}/status", self.url)).send().await {
                if let Ok(status) = response.json::<Value>().await {
                    if status["value"]["ready"] == true {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// A new headless Chromium session.
    async fn session(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    // This machine has no network but loopback: keep Chromium from trying.
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-quic",
                ],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver opens a headless Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The browsers chromedriver started share its process group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `test` with a fresh browser page, then ends the browser session whether the test
/// passed or panicked (and re-raises the panic).
async fn in_browser<F, Fut>(test: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let driver = ChromeDriver::start().await;
    let page = driver.session().await;
    let outcome = tokio::spawn(test(page.clone())).await;
    let _ = page.close().await;
    drop(driver);
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the browser test did not finish: {error}"),
        }
    }
}

/// Whether the element is displayed, as WebDriver judges it (false when it is not there).
async fn displayed(page: &Client, id: &str) -> bool {
    match page.find(Locator::Id(id)).await {
        Ok(element) => element.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

async fn text(page: &Client, id: &str) -> String {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn attr(page: &Client, id: &str, name: &str) -> Option<String> {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .attr(name)
        .await
        .unwrap()
}

async fn fill(page: &Client, form: &str, fields: &[(&str, &str)]) {
    for (name, value) in fields {
        page.find(Locator::Css(&format!("#{form} [name={name}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
}

async fn submit(page: &Client, form: &str) {
    page.find(Locator::Css(&format!("#{form} button[type=submit]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Records every change of the spinner's rendered visibility with the page's clock:
/// onboarding may finish sooner than one WebDriver round trip, so polling alone could
/// miss a spinner that was shown.
const WATCH_SPINNER: &str = r"
    const spinner = document.getElementById('onboarding-spinner');
    window.spinnerLog = [];
    const record = () => {
        const shown = spinner.checkVisibility();
        const last = window.spinnerLog[window.spinnerLog.length - 1];
        if (!last || last.shown !== shown) window.spinnerLog.push({ shown, at: performance.now() });
    };
    new MutationObserver(record).observe(spinner, { attributes: true });
    record();
";

#[tokio::test]
async fn the_demo_page_and_its_assets_are_served_under_a_same_origin_content_security_policy() {
    let app = spawn_app().await;
    for (path, content_type, needle) in [
        ("/", "text/html; charset=utf-8", "id=\"onboarding-spinner\""),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "new EventSource(",
        ),
        ("/app.css", "text/css; charset=utf-8", ".spinner"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
}

#[tokio::test]
async fn the_demo_page_registers_shows_the_spinner_and_hides_it_on_onboarding_completed() {
    in_browser(|page| async move {
        let app = spawn_app().await;
        page.goto(&app.url("/")).await.unwrap();
        assert!(
            displayed(&page, "auth-view").await,
            "the page opens on the sign-up form"
        );
        assert!(!displayed(&page, "onboarding-spinner").await);
        page.execute(WATCH_SPINNER, vec![]).await.unwrap();

        fill(
            &page,
            "register-form",
            &[
                ("username", "dora"),
                ("email", "dora@example.com"),
                ("password", "correct horse battery staple"),
                ("display_name", "Dora Demo"),
            ],
        )
        .await;
        let submitted = Instant::now();
        submit(&page, "register-form").await;

        // Until the feed shows: the spinner should be on screen, never the error.
        let mut spinner_polled_visible = false;
        loop {
            spinner_polled_visible |= displayed(&page, "onboarding-spinner").await;
            if displayed(&page, "feed-view").await {
                break;
            }
            assert!(
                !displayed(&page, "onboarding-error").await,
                "onboarding failed: {}",
                text(&page, "onboarding-error").await
            );
            assert!(
                !displayed(&page, "auth-error").await,
                "registration refused: {}",
                text(&page, "auth-error").await
            );
            assert!(
                submitted.elapsed() < Duration::from_secs(10),
                "the feed did not show within 10 s of registering"
            );
            tokio::time::sleep(POLL).await;
        }
        let feed_after = submitted.elapsed();
        assert!(
            !displayed(&page, "onboarding-spinner").await,
            "the spinner is still shown beside the feed"
        );

        let log = page
            .execute("return window.spinnerLog", vec![])
            .await
            .unwrap();
        let log = log.as_array().unwrap();
        let at = |entry: &Value| entry["at"].as_f64().unwrap();
        let shown = log
            .iter()
            .find(|entry| entry["shown"] == true)
            .unwrap_or_else(|| panic!("the spinner was never displayed: {log:?}"));
        let hidden = log
            .iter()
            .find(|entry| entry["shown"] == false && at(entry) > at(shown))
            .unwrap_or_else(|| panic!("the spinner was never hidden again: {log:?}"));
        eprintln!(
            "spinner shown for {:.0} ms (seen by polling too: {spinner_polled_visible}); \
             feed visible {feed_after:?} after submitting",
            at(hidden) - at(shown)
        );

        // The page's own session says what the server thinks of this user.
        let token = page
            .execute(
                "return JSON.parse(sessionStorage.getItem(arguments[0])).access_token",
                vec![json!(SESSION_KEY)],
            )
            .await
            .unwrap();
        let me = app
            .call(Method::GET, "/v1/me", token.as_str().unwrap())
            .await;
        assert_eq!(me.status(), 200);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["username"], "dora");
        assert_eq!(me["onboarding"], "completed");
        assert!(
            text(&page, "whoami").await.contains("Dora Demo"),
            "the header names the user"
        );
    })
    .await;
}

#[tokio::test]
async fn a_like_made_elsewhere_changes_the_count_on_the_page_within_3_s() {
    in_browser(|page| async move {
        let app = spawn_app().await;
        let author = app.register("author").await;
        let viewer = app.register("viewer").await;
        let fans = [app.register("fan_one").await, app.register("fan_two").await];
        let post = publish(&app, &author.access_token, "Live likes").await;
        readable(&app, &viewer.access_token, &post).await;

        // The viewer's session, as the page keeps it after logging in; then the post's URL.
        page.goto(&app.url("/")).await.unwrap();
        page.execute(
            "sessionStorage.setItem(arguments[0], JSON.stringify(arguments[1]))",
            vec![
                json!(SESSION_KEY),
                json!({
                    "user_id": viewer.user_id,
                    "access_token": viewer.access_token,
                    "refresh_token": viewer.refresh_token,
                }),
            ],
        )
        .await
        .unwrap();
        page.goto(&app.url(&format!("/#/posts/{post}")))
            .await
            .unwrap();

        let deadline = Instant::now() + WAIT;
        loop {
            let count = text(&page, "like-count").await;
            let live = attr(&page, "post-view", "data-live").await;
            if count == "0" && live.as_deref() == Some("connected") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the post view never showed 0 likes with its stream connected \
                 (count {count:?}, live {live:?}, error {:?})",
                text(&page, "post-error").await
            );
            tokio::time::sleep(POLL).await;
        }
        assert!(displayed(&page, "post-view").await);
        assert_eq!(text(&page, "post-title").await, "Live likes");
        // `*Live likes* body`, rendered by the server and sanitised.
        assert!(text(&page, "post-body").await.contains("Live likes body"));

        for fan in &fans {
            let liked = app
                .call(
                    Method::PUT,
                    &format!("/v1/posts/{post}/like"),
                    &fan.access_token,
                )
                .await;
            assert_eq!(liked.status(), 204);
        }
        let last_like = Instant::now();
        loop {
            let count = text(&page, "like-count").await;
            if count == "2" {
                break;
            }
            assert!(
                last_like.elapsed() <= Duration::from_secs(3),
                "the page still shows {count:?} likes 3 s after the last like"
            );
            tokio::time::sleep(POLL).await;
        }
        let took = last_like.elapsed();
        assert!(took <= Duration::from_secs(3), "took {took:?}");
        eprintln!("the page showed 2 likes {took:?} after the last like was answered");
    })
    .await;
}
