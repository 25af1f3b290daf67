//! The demo page in real headless Chromium, driven over WebDriver: what a person
//! sees after registering, a like made elsewhere reaching a post they have open, two
//! people chatting live, each in a window of their own, the bell of notifications, the
//! links of our emails and two-factor login.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/services.sh --browser`). Without
//! them these tests fail and say so: a browser test that passes without a browser proves
//! nothing.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::mailpit::{token_in, Mailpit};
use e2e::{spawn_app, spawn_app_configured, Session, TestApp, WorkerOptions};

use crate::live::{publish, readable};
use fantoccini::elements::Element;
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
    reraise(outcome);
}

/// [`in_browser`] with two pages: two sessions of one chromedriver, each its own Chromium
/// with its own storage, as two people on two computers.
async fn in_two_browsers<F, Fut>(test: F)
where
    F: FnOnce(Client, Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let driver = ChromeDriver::start().await;
    let first = driver.session().await;
    let second = driver.session().await;
    let outcome = tokio::spawn(test(first.clone(), second.clone())).await;
    let _ = first.close().await;
    let _ = second.close().await;
    drop(driver);
    reraise(outcome);
}

/// Re-raises the panic of a browser test's task.
fn reraise(outcome: Result<(), tokio::task::JoinError>) {
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

/// The element `css` selects, if there is one now.
async fn find(page: &Client, css: &str) -> Option<Element> {
    page.find(Locator::Css(css)).await.ok()
}

/// The rendered text of the element `css` selects; `None` when there is none.
async fn text_of(page: &Client, css: &str) -> Option<String> {
    find(page, css).await?.text().await.ok()
}

/// Polls `probe` until it answers `Ok`, at most `within`; a failure names `what` and the
/// last thing the probe saw.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens the page at `hash` signed in as `who`, with the session the page keeps after
/// logging in, and marks the document so that a reload would show.
async fn open_signed_in(page: &Client, app: &TestApp, who: &Session, hash: &str) {
    page.goto(&app.url("/")).await.unwrap();
    page.execute(
        "sessionStorage.setItem(arguments[0], JSON.stringify(arguments[1]))",
        vec![
            json!(SESSION_KEY),
            json!({
                "user_id": who.user_id,
                "access_token": who.access_token,
                "refresh_token": who.refresh_token,
            }),
        ],
    )
    .await
    .unwrap();
    page.goto(&app.url(&format!("/{hash}"))).await.unwrap();
    page.execute("window.sameDocument = true", vec![])
        .await
        .unwrap();
}

/// Whether the document is the one [`open_signed_in`] marked: live updates, not a reload.
async fn never_reloaded(page: &Client) -> bool {
    page.execute("return window.sameDocument === true", vec![])
        .await
        .unwrap()
        == json!(true)
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

/// Registers through the API with a display name; the session.
async fn register_named(app: &TestApp, username: &str, display_name: &str) -> Session {
    let response = app
        .post(
            "/v1/auth/register",
            json!({"username": username, "email": format!("{username}@example.com"),
                   "password": "correct horse battery staple", "display_name": display_name}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201, "registering {username}");
    let body: Value = response.json().await.unwrap();
    Session {
        user_id: body["user_id"].as_str().unwrap().parse().unwrap(),
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// The message ids of a page's open conversation, top to bottom, with each one's text.
async fn conversation_shown(page: &Client) -> Vec<(String, String)> {
    let mut shown = Vec::new();
    for item in page
        .find_all(Locator::Css("#conversation > li"))
        .await
        .unwrap()
    {
        let id = item.attr("data-message-id").await.unwrap();
        shown.push((id.unwrap_or_default(), item.text().await.unwrap()));
    }
    shown
}

#[tokio::test]
async fn two_windows_chat_live() {
    in_two_browsers(|ada_page, bob_page| async move {
        let app = spawn_app().await;
        let ada = register_named(&app, "chat_ada", "Ada Chat").await;
        let bob = register_named(&app, "chat_bob", "Bob Chat").await;
        let bob_id = bob.user_id.to_string();
        let bobs_post: Value = app
            .post(
                "/v1/posts",
                json!({"title": "Bob's first post", "body_markdown": "hello"}),
                Some(&bob.access_token),
            )
            .await
            .json()
            .await
            .unwrap();
        let bobs_post = bobs_post["post_id"].as_str().unwrap().to_owned();
        // Setup, not under test: the people search has Bob before Ada looks for him.
        eventually(WAIT, "the people search finds chat_bob", || async {
            let found: Value = app
                .http
                .get(app.url("/v1/users/search?q=chat_bob"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            found["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|p| p["user_id"] == bob_id.as_str()))
                .then_some(())
                .ok_or_else(|| found.to_string())
        })
        .await;

        // Bob watches his empty inbox, with his stream connected: from here on, only the
        // live path can bring him anything.
        open_signed_in(&bob_page, &app, &bob, "#/inbox").await;
        eventually(
            WAIT,
            "Bob's inbox shows, empty, with the stream live",
            || async {
                let live = find(&bob_page, "body")
                    .await
                    .unwrap()
                    .attr("data-live")
                    .await
                    .unwrap();
                let empty = displayed(&bob_page, "inbox-empty").await;
                (live.as_deref() == Some("connected")
                    && empty
                    && displayed(&bob_page, "inbox-view").await)
                    .then_some(())
                    .ok_or_else(|| format!("live {live:?}, empty shown {empty}"))
            },
        )
        .await;
        assert!(
            !displayed(&bob_page, "unread-total").await,
            "no unread badge yet"
        );

        // Ada finds Bob, opens his profile and presses Message.
        open_signed_in(&ada_page, &app, &ada, "#/").await;
        eventually(WAIT, "Ada's feed shows", || async {
            displayed(&ada_page, "feed-view")
                .await
                .then_some(())
                .ok_or_else(|| "the feed is hidden".to_owned())
        })
        .await;
        fill(&ada_page, "people-search-form", &[("q", "chat_bob")]).await;
        submit(&ada_page, "people-search-form").await;
        let result = format!("#people-results li[data-user-id='{bob_id}'] a");
        let link = eventually(WAIT, "the search lists Bob", || async {
            find(&ada_page, &result)
                .await
                .ok_or_else(|| "no such result".to_owned())
        })
        .await;
        assert_eq!(link.text().await.unwrap(), "Bob Chat");
        link.click().await.unwrap();
        eventually(
            WAIT,
            "Bob's profile shows with a Message button",
            || async {
                let name = text(&ada_page, "profile-name").await;
                (name == "Bob Chat" && displayed(&ada_page, "profile-message").await)
                    .then_some(())
                    .ok_or(name)
            },
        )
        .await;
        assert_eq!(text(&ada_page, "profile-username").await, "chat_bob");
        assert_eq!(text(&ada_page, "profile-follow").await, "Follow");
        assert!(!displayed(&ada_page, "profile-error").await);
        let post_item = format!("#profile-posts li[data-post-id='{bobs_post}']");
        eventually(WAIT, "Bob's profile lists his post", || async {
            find(&ada_page, &post_item)
                .await
                .map(|_| ())
                .ok_or_else(|| "not listed".to_owned())
        })
        .await;
        ada_page
            .find(Locator::Id("profile-message"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let conversation = eventually(WAIT, "the conversation opens", || async {
            let id = attr(&ada_page, "conversation", "data-conversation-id").await;
            match id {
                Some(id) if !id.is_empty() && displayed(&ada_page, "conversation-view").await => {
                    Ok(id)
                }
                _ => Err(format!("conversation {id:?}")),
            }
        })
        .await;
        eventually(WAIT, "the conversation is named after Bob", || async {
            let title = text(&ada_page, "conversation-title").await;
            title.contains("Bob Chat").then_some(()).ok_or(title)
        })
        .await;

        fill(&ada_page, "message-form", &[("body", "Hello **Bob**")]).await;
        submit(&ada_page, "message-form").await;
        eventually(WAIT, "Ada sees her message", || async {
            let shown = conversation_shown(&ada_page).await;
            (shown.len() == 1 && shown[0].1.contains("Hello Bob"))
                .then_some(())
                .ok_or_else(|| format!("{shown:?}"))
        })
        .await;
        let sent = Instant::now();

        // Bob's open inbox gets the conversation, unread, and the nav its total.
        let item = format!("#inbox li[data-conversation-id='{conversation}']");
        eventually(WAIT, "Bob's inbox shows the message unread", || async {
            let unread = match find(&bob_page, &item).await {
                Some(li) => li.attr("data-unread").await.unwrap(),
                None => None,
            };
            let last = text_of(&bob_page, &format!("{item} .last-message")).await;
            let total = text(&bob_page, "unread-total").await;
            (unread.as_deref() == Some("1")
                && last.as_deref().is_some_and(|t| t.contains("Hello **Bob**"))
                && total == "1"
                && displayed(&bob_page, "unread-total").await)
                .then_some(())
                .ok_or_else(|| format!("unread {unread:?}, last {last:?}, total {total:?}"))
        })
        .await;
        eprintln!(
            "Bob's inbox showed the message {:?} after Ada saw it sent",
            sent.elapsed()
        );
        let title = format!("{item} .title");
        eventually(WAIT, "Bob's inbox names Ada", || async {
            let shown = text_of(&bob_page, &title).await.unwrap_or_default();
            shown.contains("Ada Chat").then_some(()).ok_or(shown)
        })
        .await;

        // Bob opens it: the message, rendered, and nothing left unread.
        find(&bob_page, &format!("{item} a.title"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(
            WAIT,
            "Bob's conversation shows the message, read",
            || async {
                let shown = conversation_shown(&bob_page).await;
                let bold = text_of(&bob_page, "#conversation .message-body strong").await;
                let badge = displayed(&bob_page, "unread-total").await;
                (shown.len() == 1 && bold.as_deref() == Some("Bob") && !badge)
                    .then_some(())
                    .ok_or_else(|| format!("{shown:?}, bold {bold:?}, unread badge shown {badge}"))
            },
        )
        .await;
        eventually(WAIT, "the server has Bob's conversation read", || async {
            let inbox: Value = app
                .call(Method::GET, "/v1/conversations", &bob.access_token)
                .await
                .json()
                .await
                .unwrap();
            (inbox["items"][0]["unread"] == 0)
                .then_some(())
                .ok_or_else(|| inbox.to_string())
        })
        .await;

        // Bob replies; Ada, who has the conversation open, sees it within seconds.
        fill(&bob_page, "message-form", &[("body", "Hi Ada")]).await;
        submit(&bob_page, "message-form").await;
        eventually(WAIT, "Bob sees his reply", || async {
            let shown = conversation_shown(&bob_page).await;
            (shown.len() == 2 && shown[1].1.contains("Hi Ada"))
                .then_some(())
                .ok_or_else(|| format!("{shown:?}"))
        })
        .await;
        let replied = Instant::now();
        let shown = eventually(Duration::from_secs(5), "Ada sees the reply", || async {
            let shown = conversation_shown(&ada_page).await;
            (shown.len() == 2 && shown[1].1.contains("Hi Ada"))
                .then_some(shown.clone())
                .ok_or_else(|| format!("{shown:?}"))
        })
        .await;
        eprintln!("Ada saw the reply {:?} after Bob did", replied.elapsed());
        assert!(
            shown[0].1.contains("Hello Bob"),
            "newest at the bottom: {shown:?}"
        );
        assert_ne!(shown[0].0, shown[1].0);
        assert_eq!(
            find(&ada_page, "#conversation > li:last-child")
                .await
                .unwrap()
                .attr("data-sender-id")
                .await
                .unwrap()
                .as_deref(),
            Some(bob_id.as_str())
        );

        for (who, page) in [("Ada", &ada_page), ("Bob", &bob_page)] {
            assert!(never_reloaded(page).await, "{who}'s page was reloaded");
            for error in ["conversation-error", "inbox-error", "profile-error"] {
                assert!(!displayed(page, error).await, "{who}'s page shows {error}");
            }
            // They do not follow each other: neither may see the other's presence.
            for dot in page.find_all(Locator::Css(".presence")).await.unwrap() {
                assert!(
                    !dot.is_displayed().await.unwrap(),
                    "{who}'s page shows a presence dot"
                );
            }
        }
    })
    .await;
}

/// The groups of the notifications list, top to bottom: each one's text and whether it
/// is marked unread. Read in one script: the list is redrawn whenever a load answers.
async fn notifications_shown(page: &Client) -> Vec<(String, bool)> {
    let shown = page
        .execute(
            "return [...document.querySelectorAll('#notifications > li')].map((li) =>
                [li.querySelector('.title').innerText, li.classList.contains('unread')])",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(shown).unwrap()
}

/// The bell's badge: its count, and whether it is on screen.
async fn bell(page: &Client) -> (Option<String>, bool) {
    (
        attr(page, "notifications-unread", "data-count").await,
        displayed(page, "notifications-unread").await,
    )
}

#[tokio::test]
async fn the_bell_counts_a_follow_and_a_like_live_and_opening_the_list_reads_them() {
    in_browser(|page| async move {
        let app = spawn_app().await;
        let ada = register_named(&app, "bell_ada", "Ada Bell").await;
        let bob = register_named(&app, "bell_bob", "Bob Bell").await;
        let cy = register_named(&app, "bell_cy", "Cy Bell").await;
        let post = publish(&app, &ada.access_token, "Ring the bell").await;

        // Ada's feed, with her stream connected and nothing to tell her yet.
        open_signed_in(&page, &app, &ada, "#/").await;
        eventually(WAIT, "Ada's feed shows with the stream live", || async {
            let live = find(&page, "body")
                .await
                .unwrap()
                .attr("data-live")
                .await
                .unwrap();
            let feed = displayed(&page, "feed-view").await;
            (live.as_deref() == Some("connected") && feed)
                .then_some(())
                .ok_or_else(|| format!("live {live:?}, feed shown {feed}"))
        })
        .await;
        assert!(
            displayed(&page, "nav-notifications").await,
            "the bell shows"
        );
        assert_eq!(bell(&page).await, (Some("0".to_owned()), false));

        // Bob follows her and likes her post, elsewhere: the badge counts two groups.
        let followed = app
            .call(
                Method::PUT,
                &format!("/v1/users/{}/follow", ada.user_id),
                &bob.access_token,
            )
            .await;
        assert_eq!(followed.status(), 204);
        let liked = app
            .call(
                Method::PUT,
                &format!("/v1/posts/{post}/like"),
                &bob.access_token,
            )
            .await;
        assert_eq!(liked.status(), 204);
        let acted = Instant::now();
        eventually(WAIT, "the badge shows 2", || async {
            let seen = bell(&page).await;
            let badge = text(&page, "notifications-unread").await;
            (seen == (Some("2".to_owned()), true) && badge == "2")
                .then_some(())
                .ok_or_else(|| format!("{seen:?}, text {badge:?}"))
        })
        .await;
        eprintln!("the badge showed 2 {:?} after Bob's like", acted.elapsed());
        assert!(never_reloaded(&page).await, "the page was reloaded");

        // Ada opens the list: both groups, newest first and lit as new; the badge goes.
        page.find(Locator::Id("nav-notifications"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(
            WAIT,
            "the list shows both, and the badge is gone",
            || async {
                let shown = notifications_shown(&page).await;
                let seen = bell(&page).await;
                (shown
                    == [
                        ("Bob Bell liked your post".to_owned(), true),
                        ("Bob Bell followed you".to_owned(), true),
                    ]
                    && seen == (Some("0".to_owned()), false)
                    && displayed(&page, "notifications-view").await)
                    .then_some(())
                    .ok_or_else(|| format!("{shown:?}, badge {seen:?}"))
            },
        )
        .await;
        let like_link = find(&page, "#notifications > li[data-kind='like'] a")
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap();
        assert_eq!(
            like_link.as_deref(),
            Some(format!("#/posts/{post}").as_str())
        );
        let follow_link = find(&page, "#notifications > li[data-kind='follow'] a")
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap();
        assert_eq!(
            follow_link.as_deref(),
            Some(format!("#/people/{}", bob.user_id).as_str())
        );
        eventually(WAIT, "the server has them read", || async {
            let page: Value = app
                .call(Method::GET, "/v1/notifications", &ada.access_token)
                .await
                .json()
                .await
                .unwrap();
            (page["unread"] == 0)
                .then_some(())
                .ok_or_else(|| page.to_string())
        })
        .await;

        // With the list open, Cy's like joins the group on top, read as it arrives.
        let liked = app
            .call(
                Method::PUT,
                &format!("/v1/posts/{post}/like"),
                &cy.access_token,
            )
            .await;
        assert_eq!(liked.status(), 204);
        eventually(WAIT, "the like group names Cy first, read", || async {
            let shown = notifications_shown(&page).await;
            let first = shown.first().map(|(text, _)| text.as_str());
            let seen = bell(&page).await;
            (first == Some("Cy Bell and Bob Bell liked your post")
                && shown.len() == 2
                && seen == (Some("0".to_owned()), false))
                .then_some(())
                .ok_or_else(|| format!("{shown:?}, badge {seen:?}"))
        })
        .await;
        eventually(WAIT, "the server has Cy's like read too", || async {
            let page: Value = app
                .call(Method::GET, "/v1/notifications", &ada.access_token)
                .await
                .json()
                .await
                .unwrap();
            (page["unread"] == 0 && page["items"][0]["count"] == 2)
                .then_some(())
                .ok_or_else(|| page.to_string())
        })
        .await;

        assert!(never_reloaded(&page).await, "the page was reloaded");
        for error in ["notifications-error", "feed-error"] {
            assert!(!displayed(&page, error).await, "the page shows {error}");
        }
    })
    .await;
}

/// A username no other run uses (and so an address, `<name>@example.com`): Mailpit is shared.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The token of the link in the newest email to `address` with `subject`.
async fn emailed_token(mailpit: &Mailpit, address: &str, subject: &str, param: &str) -> String {
    let mail = mailpit.expect(address, subject, WAIT).await;
    let (text, _) = mailpit.bodies(&mail).await;
    token_in(&text, param).unwrap_or_else(|| panic!("a {param} link in: {text}"))
}

/// The notice above the views, once it shows: its text and whether it reports an error.
async fn notice(page: &Client) -> (String, bool) {
    eventually(WAIT, "the notice shows", || async {
        if !displayed(page, "notice").await {
            return Err("hidden".to_owned());
        }
        let class = attr(page, "notice", "class").await.unwrap_or_default();
        Ok((
            text(page, "notice-text").await,
            class.split(' ').any(|c| c == "error"),
        ))
    })
    .await
}

/// The page's address without the origin: what the person sees after the host.
async fn address_bar(page: &Client) -> String {
    page.execute(
        "return location.pathname + location.search + location.hash",
        vec![],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap()
    .to_owned()
}

async fn feed_shows(page: &Client) {
    eventually(WAIT, "the feed shows", || async {
        if displayed(page, "auth-error").await {
            return Err(format!("auth error: {}", text(page, "auth-error").await));
        }
        displayed(page, "feed-view")
            .await
            .then_some(())
            .ok_or_else(|| "the feed is hidden".to_owned())
    })
    .await;
}

#[tokio::test]
async fn the_emailed_links_verify_the_address_and_set_a_new_password_on_the_page() {
    in_browser(|page| async move {
        let app = spawn_app_configured(
            |_| {},
            WorkerOptions {
                mail: true,
                ..WorkerOptions::default()
            },
        )
        .await;
        let mailpit = Mailpit::new();
        let name = unique("link");
        let address = format!("{name}@example.com");
        let person = app.register(&name).await;
        let email_verified = || async {
            let me: Value = app
                .call(Method::GET, "/v1/me", &person.access_token)
                .await
                .json()
                .await
                .unwrap();
            me["email_verified"].clone()
        };

        // A link that is not ours: the error, and the token gone from the address bar.
        page.goto(&app.url("/?verify_email=not-a-token#/"))
            .await
            .unwrap();
        let (said, error) = notice(&page).await;
        assert!(error, "a refused link reads as an error: {said}");
        assert!(said.contains("invalid"), "{said}");
        assert_eq!(address_bar(&page).await, "/#/");

        // The real link.
        let token = emailed_token(
            &mailpit,
            &address,
            "Confirm your email address",
            "verify_email",
        )
        .await;
        assert_eq!(email_verified().await, false);
        page.goto(&app.url(&format!("/?verify_email={token}")))
            .await
            .unwrap();
        assert_eq!(
            notice(&page).await,
            ("Your email address is confirmed.".to_owned(), false)
        );
        assert_eq!(address_bar(&page).await, "/");
        assert_eq!(email_verified().await, true);

        // Forgot password: the form asks for a link.
        fill(&page, "forgot-form", &[("email", &address)]).await;
        submit(&page, "forgot-form").await;
        eventually(WAIT, "the forgot form says a link is coming", || async {
            let status = text(&page, "forgot-status").await;
            (status == "If an account has this address, a link is on its way.")
                .then_some(())
                .ok_or(status)
        })
        .await;
        let token =
            emailed_token(&mailpit, &address, "Reset your password", "reset_password").await;

        // The reset link: a form for the new password, then a login with it.
        page.goto(&app.url(&format!("/?reset_password={token}")))
            .await
            .unwrap();
        eventually(WAIT, "the new-password form shows", || async {
            displayed(&page, "reset-form")
                .await
                .then_some(())
                .ok_or_else(|| "hidden".to_owned())
        })
        .await;
        assert_eq!(address_bar(&page).await, "/");
        let new_password = "a brand new passphrase 2026";
        fill(&page, "reset-form", &[("new_password", new_password)]).await;
        submit(&page, "reset-form").await;
        assert_eq!(
            notice(&page).await,
            (
                "Password changed: log in with the new one.".to_owned(),
                false
            )
        );
        assert!(!displayed(&page, "reset-form").await, "the form is done");
        assert!(!displayed(&page, "auth-error").await);
        fill(
            &page,
            "login-form",
            &[("login", &name), ("password", new_password)],
        )
        .await;
        submit(&page, "login-form").await;
        feed_shows(&page).await;
    })
    .await;
}

#[tokio::test]
async fn logging_in_with_two_factor_on_asks_for_a_code_on_the_page_and_takes_a_recovery_code() {
    in_browser(|page| async move {
        let app = spawn_app().await;
        let name = unique("otp");
        let person = app.register(&name).await;
        let setup: Value = app
            .post("/v1/me/2fa", json!({}), Some(&person.access_token))
            .await
            .json()
            .await
            .unwrap();
        let secret: secrecy::SecretString = setup["secret"].as_str().unwrap().to_owned().into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let code = auth::totp::code_at(&secret, now).unwrap();
        let confirmed = app
            .post(
                "/v1/me/2fa/confirm",
                json!({"code": code}),
                Some(&person.access_token),
            )
            .await;
        assert_eq!(confirmed.status(), 200);
        let confirmed: Value = confirmed.json().await.unwrap();
        let recovery = confirmed["recovery_codes"][0].as_str().unwrap().to_owned();

        page.goto(&app.url("/")).await.unwrap();
        assert!(
            !displayed(&page, "otp-field").await,
            "no code field before the server asks for one"
        );
        fill(
            &page,
            "login-form",
            &[
                ("login", &name),
                ("password", "correct horse battery staple"),
            ],
        )
        .await;
        submit(&page, "login-form").await;
        eventually(WAIT, "the page asks for the code", || async {
            let asked = displayed(&page, "otp-field").await;
            let said = text(&page, "auth-error").await;
            (asked && said.contains("code"))
                .then_some(())
                .ok_or_else(|| format!("code field shown {asked}, said {said:?}"))
        })
        .await;
        assert!(displayed(&page, "auth-view").await);

        // A wrong code (five digits: never a code) is refused; the field is emptied.
        fill(&page, "login-form", &[("otp", "99999")]).await;
        submit(&page, "login-form").await;
        eventually(WAIT, "the page refuses the wrong code", || async {
            let said = text(&page, "auth-error").await;
            let otp = find(&page, "#login-form [name=otp]")
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap();
            (said.contains("second-factor") && otp.as_deref() == Some(""))
                .then_some(())
                .ok_or_else(|| format!("said {said:?}, field {otp:?}"))
        })
        .await;

        fill(&page, "login-form", &[("otp", &recovery)]).await;
        submit(&page, "login-form").await;
        feed_shows(&page).await;
        assert!(
            !displayed(&page, "otp-field").await,
            "the code field is hidden again"
        );
    })
    .await;
}
