//! Presence survives the death of the instance holding a person's stream: with the process
//! killed (SIGKILL, so it tells nobody), the person is offline within 30 s, seen from
//! another instance, and the transition is in their history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::{spawn_app, SseClient};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `hybridlive serve` beside `app`: same database, Redis keys and token secret, the lite
/// read models, no projections. Returns the child and its base URL.
async fn serve_beside(app: &e2e::TestApp) -> (tokio::process::Child, String) {
    let mut child = Command::from(app.binary_beside(env!("CARGO_BIN_EXE_hybridlive")))
        .arg("serve")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("SEAL_INTERVAL_SECS", "0")
        .env("RUST_LOG", "warn,hybridlive=info")
        .kill_on_drop(true)
        .spawn()
        .expect("the hybridlive binary runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("serve starts within 60 s")
            .unwrap()
            .expect("serve exited before serving");
        if line.contains("Serving the HTTP API.") {
            let (_, after) = line
                .split_once("127.0.0.1:")
                .expect("the address is logged");
            let port: String = after.chars().take_while(char::is_ascii_digit).collect();
            break format!("http://127.0.0.1:{port}");
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("serve: {line}");
        }
    });
    (child, addr)
}

async fn presence(app: &e2e::TestApp, of: uuid::Uuid, token: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(&format!("/v1/users/{of}/presence")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_whose_only_stream_was_on_a_killed_instance_is_offline_within_30_s() {
    let app = spawn_app().await;
    let (ada, bob) = (
        app.register("kill_ada").await,
        app.register("kill_bob").await,
    );
    for (who, whom) in [(&ada, &bob), (&bob, &ada)] {
        let response = app
            .call(
                reqwest::Method::PUT,
                &format!("/v1/users/{}/follow", whom.user_id),
                &who.access_token,
            )
            .await;
        assert_eq!(response.status(), 204);
    }
    // Bob may see Ada's presence once the follows are in the read model.
    let deadline = Instant::now() + Duration::from_secs(30);
    while presence(&app, ada.user_id, &bob.access_token).await.0 != 200 {
        assert!(Instant::now() < deadline, "the mutual follow never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        presence(&app, ada.user_id, &bob.access_token).await.1["online"],
        false
    );

    let (mut other, other_base) = serve_beside(&app).await;
    let _stream =
        SseClient::connect(&format!("{other_base}/v1/stream"), &ada.access_token, None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while presence(&app, ada.user_id, &bob.access_token).await.1["online"] != true {
        assert!(Instant::now() < deadline, "Ada never came online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = other.id().expect("serve runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = other.wait().await;
    let killed_at = Instant::now();
    let seen = loop {
        let (status, view) = presence(&app, ada.user_id, &bob.access_token).await;
        assert_eq!(status, 200, "{view}");
        if view["online"] == false {
            break view;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "Ada still online 30 s after her instance was killed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "offline {:?} after the SIGKILL: {seen}",
        killed_at.elapsed()
    );
    assert!(seen["last_seen"].is_string(), "{seen}");

    // Stored by the sweep that saw the presence lapse (each second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let history = loop {
        let response = app
            .http
            .get(app.url(&format!("/v1/users/{}/presence/history", ada.user_id)))
            .bearer_auth(&bob.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let history: Value = response.json().await.unwrap();
        if history["items"].as_array().unwrap().len() >= 2 || Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let statuses: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["online", "offline"], "{history}");
    assert_eq!(history["items"][1]["at"], seen["last_seen"], "{history}");
}
