//! No secret in the log: a password hash is a credential, stored beside the registration's
//! event and nowhere else; the hashes old events hold are redacted in every listing and
//! export. (Every end-to-end test also checks its whole log: `e2e::assert_no_secret_in_log`.)

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use e2e::{database_rows, spawn_app};

const PASSWORD: &str = "cobalt lantern orchard 4711";

#[tokio::test]
async fn a_password_hash_is_a_credential_and_nowhere_else() {
    let app = spawn_app().await;
    let registered = app
        .post(
            "/v1/auth/register",
            json!({"username": "pia", "email": "pia@example.org", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(registered.status(), 201);
    let login = |password: &str| {
        app.post(
            "/v1/auth/login",
            json!({"login": "pia", "password": password}),
            None,
        )
    };
    assert_eq!(login(PASSWORD).await.status(), 200);
    assert_eq!(login("cobalt lantern orchard 4712").await.status(), 401);

    let hash: String = sqlx::query_scalar(
        "SELECT secret FROM credentials WHERE stream_type = 'user' AND kind = 'password'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // The saga's events follow the registration: wait for them before reading everything.
    wait_for_event(&app.db.pool, "onboarding.completed").await;
    let rows = database_rows(&app.db, &["public.credentials"]).await;
    assert!(rows.iter().any(|(table, _)| table == "public.events"));
    for (table, row) in rows {
        assert!(!row.contains(&hash), "the hash is in {table}: {row}");
        assert!(!row.contains(PASSWORD), "the password is in {table}: {row}");
        assert!(!row.contains("$argon2"), "a hash is in {table}: {row}");
    }
}

#[tokio::test]
async fn the_hash_an_old_registration_holds_is_redacted_in_listings_and_exports() {
    let app = spawn_app().await;
    let auditor = app.register_with_role("audra", "auditor").await;
    let old_hash = "$argon2id$v=19$m=19456,t=2,p=1$b2xkc2FsdA$b2xkIGhhc2ggb2YgYm9i";
    let bob = Uuid::now_v7();
    // As the release before credentials wrote it.
    let registered = json!({"user_id": bob, "username": "bob", "email": "bob@example.org",
        "display_name": "Bob", "password_hash": old_hash});
    testkit::insert_as_before(
        &app.db.pool,
        ("user", &bob.to_string()),
        ("user.registered", 2),
        &registered,
    )
    .await;

    let path = format!("/v1/audit/streams/user/{bob}");
    let mut history = Value::Null;
    for _ in 0..100 {
        let response = app
            .call(reqwest::Method::GET, &path, &auditor.access_token)
            .await;
        history = response.json().await.unwrap();
        if history["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = &history["items"][0];
    assert_eq!(event["payload"]["password_hash"], "[redacted]", "{history}");
    assert_eq!(event["payload"]["username"], "bob");
    assert_eq!(event["redacted"], json!(["password_hash"]));

    // The export shows events below the watermark, which other tests' transactions can hold
    // back for a moment.
    let mut export = String::new();
    for _ in 0..300 {
        let response = app
            .call(
                reqwest::Method::GET,
                "/v1/audit/export",
                &auditor.access_token,
            )
            .await;
        assert_eq!(response.status(), 200);
        export = response.text().await.unwrap();
        if export.contains(&bob.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        export.contains(&bob.to_string()),
        "the export lists bob's registration"
    );
    assert!(!export.contains(old_hash), "{export}");
    let listing = app
        .call(
            reqwest::Method::GET,
            "/v1/audit/events?limit=1000",
            &auditor.access_token,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(old_hash), "{listing}");

    // The stored row still holds it, and the chain still verifies.
    let verify = app
        .call(
            reqwest::Method::GET,
            "/v1/audit/verify",
            &auditor.access_token,
        )
        .await;
    let verify: Value = verify.json().await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
}

async fn wait_for_event(pool: &sqlx::PgPool, event_type: &str) {
    for _ in 0..300 {
        let found: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE event_type = $1)")
                .bind(event_type)
                .fetch_one(pool)
                .await
                .unwrap();
        if found {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {event_type} event");
}

/// Strings no other test writes: wherever one shows up, it came from this test's person.
const ZORA: [&str; 5] = [
    "zoraquill",
    "zora.quillfeather@example.org",
    "Zora Quillfeather",
    "Ultramarine kestrel lighthouse",
    "Periwinkle anchor chowder",
];

#[tokio::test]
async fn personal_data_is_sealed_in_the_log_and_open_to_every_reader() {
    let app = spawn_app().await;
    let [username, email, display_name, title, comment] = ZORA;
    let registered = app
        .post(
            "/v1/auth/register",
            json!({"username": username, "email": email, "password": "cobalt lantern orchard 4711",
                   "display_name": display_name}),
            None,
        )
        .await;
    assert_eq!(registered.status(), 201);
    let zora: Value = registered.json().await.unwrap();
    let token = zora["access_token"].as_str().unwrap();
    let post = app
        .post(
            "/v1/posts",
            json!({"title": title, "body_markdown": title}),
            Some(token),
        )
        .await;
    assert_eq!(post.status(), 201);
    let post_id = post.json::<Value>().await.unwrap()["post_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let commented = app
        .post(
            &format!("/v1/posts/{post_id}/comments"),
            json!({"body": comment}),
            Some(token),
        )
        .await;
    assert_eq!(commented.status(), 201);

    // The readers open it: the aggregate (/v1/me), the projections (post, comments).
    let me: Value = app
        .call(reqwest::Method::GET, "/v1/me", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["username"].as_str(), me["email"].as_str()),
        (Some(username), Some(email))
    );
    let mut shown = (Value::Null, Value::Null);
    for _ in 0..300 {
        shown = (
            get_json(&app, &format!("/v1/posts/{post_id}"), token).await,
            get_json(&app, &format!("/v1/posts/{post_id}/comments"), token).await,
        );
        // Both read in this round: the post may be applied between the two reads.
        if shown.0["title"].is_string()
            && shown.1["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown.0["title"], title, "{shown:?}");
    assert_eq!(shown.1["items"][0]["body"], comment, "{shown:?}");

    // The log holds none of it in the clear; each event names its person's key.
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for text in &log {
        for personal in ZORA {
            assert!(
                !text.contains(personal),
                "{personal} in the clear in the log: {text}"
            );
        }
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE subject = $1::uuid")
        .bind(zora["user_id"].as_str().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(keys, 1);
}

async fn get_json(app: &e2e::TestApp, path: &str, token: &str) -> Value {
    let response = app.call(reqwest::Method::GET, path, token).await;
    response.json().await.unwrap_or(Value::Null)
}

/// `DELETE /v1/me`: a malformed or incomplete body is a 400 and erases nothing; two
/// erasures at once both end with the person erased, one 204 and no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasing_twice_at_once_or_with_a_bad_body_is_safe() {
    let app = spawn_app().await;
    let session = app.register("erase_twice").await;
    let erase = |body: String| {
        app.http
            .delete(app.url("/v1/me"))
            .bearer_auth(&session.access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for bad in [
        "{",
        "{}",
        r#"{"password": 7}"#,
        r#"{"password": "x", "extra": 1}"#,
    ] {
        assert_eq!(erase(bad.to_owned()).await.unwrap().status(), 400, "{bad}");
    }
    assert_eq!(
        app.call(reqwest::Method::GET, "/v1/me", &session.access_token)
            .await
            .status(),
        200,
        "a bad body erased nothing"
    );
    let good = json!({"password": "correct horse battery staple"}).to_string();
    let (a, b) = tokio::join!(erase(good.clone()), erase(good));
    let statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    assert!(statuses.contains(&204), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [204, 401].contains(s)),
        "{statuses:?}"
    );
    let erased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'user.erased' AND stream_id = $1",
    )
    .bind(session.user_id.to_string())
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(erased, 1);
}
