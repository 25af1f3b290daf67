//! The emailer as `hybridlive project email` runs it, killed (SIGKILL, mid-way through a
//! backlog) and started again: every verification, welcome and reset email arrives, each
//! once —
//! but for the one the killed process may have had in flight, which can arrive twice, with
//! the same Message-ID (no SMTP exchange can be undone or committed with a database
//! transaction; projections::email explains the window). Two emailers at once send each
//! email once: two processes (one stands by), and two applying one event at the same moment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::mailpit::Mailpit;
use e2e::spawn_app;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const PEOPLE: usize = 30;

/// `hybridlive project email` over `app`'s database, with its token secret, sending to
/// `smtp_url`; every line it logs is sent on `lines`.
fn emailer(app: &e2e::TestApp, smtp_url: &str, lines: mpsc::UnboundedSender<String>) -> Child {
    let mut child = Command::from(app.binary_beside(env!("CARGO_BIN_EXE_hybridlive")))
        .args(["project", "email"])
        .env("SMTP_URL", smtp_url)
        .env("MAIL_FROM", "Hybrid Live <no-reply@hybridlive.test>")
        .env("RUST_LOG", "warn,projections::email=info")
        .kill_on_drop(true)
        .spawn()
        .expect("the hybridlive binary runs");
    let mut logged = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = logged.next_line().await {
            eprintln!("emailer: {line}");
            let _ = lines.send(line);
        }
    });
    child
}

/// Waits for the next line saying an email was sent.
async fn next_sent(lines: &mut mpsc::UnboundedReceiver<String>) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("the emailer sends within 60 s")
            .expect("the emailer is running");
        if line.contains("Email sent.") {
            return;
        }
    }
}

/// `PEOPLE` people registered, each with a password reset asked: their verification,
/// welcome and reset emails are all due (a backlog) when this returns.
async fn backlog(app: &e2e::TestApp) -> Vec<(uuid::Uuid, String)> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let mut people = Vec::new();
    for i in 0..PEOPLE {
        let name = format!("m{run}_{i}");
        let session = app.register(&name).await;
        people.push((session.user_id, format!("{name}@example.com")));
    }
    for (_, address) in &people {
        let response = app
            .post(
                "/v1/auth/password-reset",
                serde_json::json!({ "email": address }),
                None,
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    // Every welcome (onboarding completed) and every reset is due before the emailer
    // starts: a backlog.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (user, _) in &people {
        for event_type in ["onboarding.completed", "user.password_reset_requested"] {
            loop {
                let recorded: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = $2",
                )
                .bind(user.to_string())
                .bind(event_type)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
                if recorded == 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{user}: {event_type} within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    people
}

/// Waits until every one of `people`'s three emails arrived, then a little longer for a
/// copy to show; returns the emails that arrived more than once, with their copies.
async fn arrived(mailpit: &Mailpit, people: &[(uuid::Uuid, String)]) -> Vec<(String, usize)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while mailpit_distinct(mailpit, people).await < 3 * PEOPLE {
        assert!(
            Instant::now() < deadline,
            "every email arrived within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Time for a duplicate to show, if an emailer were to send one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut repeated = Vec::new();
    for (_, address) in people {
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for mail in mailpit.to(address).await {
            *by_id.entry(mail.message_id).or_default() += 1;
        }
        let kinds: Vec<&str> = by_id
            .keys()
            .map(|id| id.split('.').next().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            vec!["password_reset", "verify_email", "welcome"],
            "{address}: {by_id:?}"
        );
        repeated.extend(by_id.into_iter().filter(|(_, copies)| *copies > 1));
    }
    repeated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_email_arrives_once_when_the_emailer_is_killed_mid_way_and_restarted() {
    let app = spawn_app().await;
    let mailpit = Mailpit::new();
    let people = backlog(&app).await;

    // Killed after a third of the emails went out.
    let smtp_url = testkit::mail_servers().0;
    let (lines, mut logged) = mpsc::unbounded_channel();
    let mut first = emailer(&app, &smtp_url, lines.clone());
    for _ in 0..PEOPLE {
        next_sent(&mut logged).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before_restart = mailpit_total(&mailpit, &people).await;
    assert!(
        before_restart < 3 * PEOPLE,
        "the kill came before the end ({before_restart})"
    );

    let mut second = emailer(&app, &smtp_url, lines);
    let repeated = arrived(&mailpit, &people).await;
    second.start_kill().unwrap();
    eprintln!(
        "{} emails before the kill; repeated after the restart: {repeated:?}",
        before_restart
    );
    assert!(
        repeated.len() <= 1 && repeated.iter().all(|(_, copies)| *copies == 2),
        "only the email in flight at the kill may arrive twice: {repeated:?}"
    );
}

/// Two emailers at once, as a deployment scaled out runs them (here on the log: one holds
/// the projection's lease and the other stands by, taking over if it dies): every email
/// arrives, none twice, and the standby sends none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_emailers_at_once_send_every_email_once() {
    let app = spawn_app().await;
    let mailpit = Mailpit::new();
    let people = backlog(&app).await;
    let smtp_url = testkit::mail_servers().0;
    let (lines, mut logged) = mpsc::unbounded_channel();
    let mut first = emailer(&app, &smtp_url, lines);
    next_sent(&mut logged).await;
    let (lines, mut standby) = mpsc::unbounded_channel();
    let mut second = emailer(&app, &smtp_url, lines);
    let repeated = arrived(&mailpit, &people).await;
    first.start_kill().unwrap();
    second.start_kill().unwrap();
    assert!(repeated.is_empty(), "sent more than once: {repeated:?}");
    // The second stood by while the first held the lease: it sent nothing.
    let mut sent_by_second = 0;
    while let Ok(line) = standby.try_recv() {
        sent_by_second += usize::from(line.contains("Email sent."));
    }
    assert_eq!(
        sent_by_second, 0,
        "the standby emailer sent while the first was active"
    );
}

/// Two emailers applying one event at the same moment — a Kafka rebalance hands the batch
/// the first had not committed to the second, or `dlq retry` runs beside the worker: the
/// second waits on the first's key (`mail.sent`), then finds it and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_emailers_applying_one_event_at_once_send_its_email_once() {
    use projections::{EmailProjection, EmailSettings, Projection};

    let db = testkit::TestDb::new().await;
    let mailpit = Mailpit::new();
    let name = format!("twice{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    store::PgEventStore::new(db.pool.clone())
        .append(&testkit::social::registration(&name))
        .await
        .unwrap();
    let reader = store::LogReader::new(db.pool.clone());
    let mut recorded = testkit::read_log(&reader, store::LogPosition::START, 1).await;
    // The address is sealed in the log; the runner opens it before a projection sees it.
    store::Keyring::new(db.pool.clone())
        .open(&mut recorded)
        .await
        .unwrap();
    let registered = recorded[0].decode().unwrap();
    let settings = EmailSettings {
        smtp_url: testkit::mail_servers().0.into(),
        from: "Hybrid Live <no-reply@hybridlive.test>".into(),
        public_url: "http://hybridlive.test".into(),
        tokens: auth::account_token::AccountTokens::new(b"a server secret of thirty-two bytes"),
        max_age: Duration::from_secs(3600),
    };
    let emailers =
        [(); 2].map(|()| EmailProjection::new(db.pool.clone(), settings.clone()).unwrap());
    let (first, second) = tokio::join!(
        emailers[0].apply(&registered),
        emailers[1].apply(&registered)
    );
    first.unwrap();
    second.unwrap();

    let address = format!("{name}@example.com");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mailpit.to(&address).await.is_empty() {
        assert!(Instant::now() < deadline, "the email arrived within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids: Vec<String> = mailpit
        .to(&address)
        .await
        .into_iter()
        .map(|mail| mail.message_id)
        .collect();
    assert_eq!(ids.len(), 1, "sent once: {ids:?}");
    assert!(ids[0].starts_with("verify_email."), "{ids:?}");
}

async fn mailpit_total(mailpit: &Mailpit, people: &[(uuid::Uuid, String)]) -> usize {
    let mut total = 0;
    for (_, address) in people {
        total += mailpit.to(address).await.len();
    }
    total
}

async fn mailpit_distinct(mailpit: &Mailpit, people: &[(uuid::Uuid, String)]) -> usize {
    let mut total = 0;
    for (_, address) in people {
        let mut ids: Vec<String> = mailpit
            .to(address)
            .await
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        ids.sort();
        ids.dedup();
        total += ids.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_smtp_server_is_retried_with_backoff_never_skipped_or_dead_lettered() {
    let app = spawn_app().await;
    let mailpit = Mailpit::new();
    let name = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let address = format!("{name}@example.com");
    app.register(&name).await;
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (lines, mut logged) = mpsc::unbounded_channel();
    let mut down = emailer(&app, &format!("smtp://127.0.0.1:{closed}"), lines.clone());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut failures = 0;
    while let Ok(line) = logged.try_recv() {
        if line.contains("SMTP") {
            failures += 1;
        }
    }
    assert!(
        down.try_wait().unwrap().is_none(),
        "the emailer keeps running"
    );
    // Retried, with backoff: more than once, far fewer than a busy loop would.
    assert!(
        (2..=20).contains(&failures),
        "{failures} failed attempts logged in 8 s"
    );
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = 'email'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM mail.sent")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!((dead, recorded), (0, 0));
    assert!(mailpit.to(&address).await.is_empty());
    down.start_kill().unwrap();
    down.wait().await.unwrap();

    // The server is back: the emails go out.
    let mut up = emailer(&app, &testkit::mail_servers().0, lines);
    mailpit
        .expect(
            &address,
            "Confirm your email address",
            Duration::from_secs(30),
        )
        .await;
    mailpit
        .expect(&address, "Welcome to Hybrid Live", Duration::from_secs(30))
        .await;
    up.start_kill().unwrap();
}
