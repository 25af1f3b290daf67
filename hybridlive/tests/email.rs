//! The emailer as `hybridlive project email` runs it, killed (SIGKILL, mid-way through a
//! backlog) and started again: every verification, welcome and reset email arrives, each
//! once —
//! but for the one the killed process may have had in flight, which can arrive twice, with
//! the same Message-ID (no SMTP exchange can be undone or committed with a database
//! transaction; projections::email explains the window).
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
/// Mailpit; each "Email sent." line it logs is sent on `sent`.
fn emailer(app: &e2e::TestApp, sent: mpsc::UnboundedSender<()>) -> Child {
    let (smtp_url, _) = testkit::mail_servers();
    let mut child = Command::from(app.binary_beside(env!("CARGO_BIN_EXE_hybridlive")))
        .args(["project", "email"])
        .env("SMTP_URL", smtp_url)
        .env("MAIL_FROM", "Hybrid Live <no-reply@hybridlive.test>")
        .env("RUST_LOG", "warn,projections::email=info")
        .kill_on_drop(true)
        .spawn()
        .expect("the hybridlive binary runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Email sent.") {
                let _ = sent.send(());
            } else {
                eprintln!("emailer: {line}");
            }
        }
    });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_email_arrives_once_when_the_emailer_is_killed_mid_way_and_restarted() {
    let app = spawn_app().await;
    let mailpit = Mailpit::new();
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

    // Killed after a third of the emails went out.
    let (sent, mut sent_lines) = mpsc::unbounded_channel();
    let mut first = emailer(&app, sent.clone());
    for _ in 0..PEOPLE {
        tokio::time::timeout(Duration::from_secs(60), sent_lines.recv())
            .await
            .expect("the emailer sends within 60 s");
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before_restart = mailpit_total(&mailpit, &people).await;
    assert!(
        before_restart < 3 * PEOPLE,
        "the kill came before the end ({before_restart})"
    );

    let mut second = emailer(&app, sent);
    let deadline = Instant::now() + Duration::from_secs(120);
    while mailpit_distinct(&mailpit, &people).await < 3 * PEOPLE {
        assert!(
            Instant::now() < deadline,
            "every email arrived within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Time for a duplicate to show, if the restarted emailer were to send one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.start_kill().unwrap();

    let mut repeated = Vec::new();
    for (_, address) in &people {
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
    eprintln!(
        "{} emails before the kill; repeated after the restart: {repeated:?}",
        before_restart
    );
    assert!(
        repeated.len() <= 1 && repeated.iter().all(|(_, copies)| *copies == 2),
        "only the email in flight at the kill may arrive twice: {repeated:?}"
    );
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
