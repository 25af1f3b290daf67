//! Registration, login, tokens: API.md's auth section over real HTTP, PostgreSQL and Redis.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::spawn_app;
use serde_json::{json, Value};

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn registering_returns_tokens_that_open_the_account() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/auth/register",
            json!({"username": "ada_l", "email": "Ada@Example.com", "password": "correct horse battery", "display_name": "Ada"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert!(
        response.headers()["x-global-position"]
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();

    let me = app.call(reqwest::Method::GET, "/v1/me", token).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user_id"], body["user_id"]);
    assert_eq!(me["username"], "ada_l");
    assert_eq!(me["display_name"], "Ada");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["onboarding"], "pending");
    assert!(
        me["created_at"].as_str().unwrap().ends_with('Z')
            || me["created_at"].as_str().unwrap().contains('+')
    );
}

#[tokio::test]
async fn registration_rules_answer_with_their_codes_and_store_nothing() {
    let app = spawn_app().await;
    app.register("taken").await;
    let before = app.event_count().await;
    let cases = [
        (
            json!({"username": "taken", "email": "other@example.com", "password": "correct horse battery"}),
            409,
            "username_taken",
        ),
        (
            json!({"username": "other", "email": "TAKEN@example.com", "password": "correct horse battery"}),
            409,
            "email_taken",
        ),
        (
            json!({"username": "No", "email": "a@example.com", "password": "correct horse battery"}),
            422,
            "invalid_username",
        ),
        (
            json!({"username": "fine_name", "email": "not-an-email", "password": "correct horse battery"}),
            422,
            "invalid_email",
        ),
        (
            json!({"username": "fine_name", "email": "a@example.com", "password": "short"}),
            422,
            "weak_password",
        ),
        (
            json!({"username": "fine_name", "email": "a@example.com", "password": "password1234"}),
            422,
            "weak_password",
        ),
        (
            json!({"username": "fine_name", "email": "a@example.com", "password": "correct horse battery", "display_name": ""}),
            422,
            "invalid_display_name",
        ),
        (
            json!({"username": "fine_name", "email": "a@example.com", "password": "correct horse battery", "admin": true}),
            400,
            "invalid_request",
        ),
        (
            json!({"username": 42, "email": "a@example.com", "password": "correct horse battery"}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "a@example.com", "password": "correct horse battery"}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let got = error_code(app.post("/v1/auth/register", body.clone(), None).await).await;
        assert_eq!(got, (status, code.to_owned()), "{body}");
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_registrations_of_one_username_give_exactly_one_201() {
    let app = spawn_app().await;
    let attempts = (0..50).map(|n| {
        app.post(
            "/v1/auth/register",
            json!({"username": "popular", "email": format!("p{n}@example.com"), "password": "correct horse battery"}),
            None,
        )
    });
    let responses = futures::future::join_all(attempts).await;
    let mut created = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            _ => assert_eq!(
                error_code(response).await,
                (409, "username_taken".to_owned())
            ),
        }
    }
    assert_eq!(created, 1);
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'user.registered'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(registered, 1);
}

#[tokio::test]
async fn login_by_username_or_email_and_the_same_answer_for_unknown_users_and_wrong_passwords() {
    let app = spawn_app().await;
    app.register("bob_b").await;
    for login in ["bob_b", "bob_b@example.com", "BOB_B@EXAMPLE.COM"] {
        let response = app
            .post(
                "/v1/auth/login",
                json!({"login": login, "password": "correct horse battery staple"}),
                None,
            )
            .await;
        assert_eq!(response.status(), 200, "{login}");
        let body: Value = response.json().await.unwrap();
        assert!(body["access_token"].is_string() && body["refresh_token"].is_string());
    }
    let wrong = app
        .post(
            "/v1/auth/login",
            json!({"login": "bob_b", "password": "not the password"}),
            None,
        )
        .await;
    let unknown = app
        .post(
            "/v1/auth/login",
            json!({"login": "nobody", "password": "not the password"}),
            None,
        )
        .await;
    let wrong = error_code(wrong).await;
    assert_eq!(wrong, (401, "invalid_credentials".to_owned()));
    assert_eq!(error_code(unknown).await, wrong);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_login() {
    let app = spawn_app().await;
    let session = app.register("carol").await;
    let first = app
        .post(
            "/v1/auth/refresh",
            json!({"refresh_token": session.refresh_token}),
            None,
        )
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let newest = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newest, session.refresh_token);
    assert_eq!(
        app.call(
            reqwest::Method::GET,
            "/v1/me",
            first["access_token"].as_str().unwrap()
        )
        .await
        .status(),
        200
    );

    // The old token again: reuse. Refused, and the newest token dies with its family.
    let reuse = app
        .post(
            "/v1/auth/refresh",
            json!({"refresh_token": session.refresh_token}),
            None,
        )
        .await;
    assert_eq!(
        error_code(reuse).await,
        (401, "invalid_refresh_token".to_owned())
    );
    let after = app
        .post("/v1/auth/refresh", json!({"refresh_token": newest}), None)
        .await;
    assert_eq!(
        error_code(after).await,
        (401, "invalid_refresh_token".to_owned())
    );
}

#[tokio::test]
async fn logout_revokes_the_refresh_token() {
    let app = spawn_app().await;
    let session = app.register("dave").await;
    let out = app
        .post(
            "/v1/auth/logout",
            json!({"refresh_token": session.refresh_token}),
            None,
        )
        .await;
    assert_eq!(out.status(), 204);
    let again = app
        .post(
            "/v1/auth/logout",
            json!({"refresh_token": session.refresh_token}),
            None,
        )
        .await;
    assert_eq!(again.status(), 204, "logout is idempotent");
    let refresh = app
        .post(
            "/v1/auth/refresh",
            json!({"refresh_token": session.refresh_token}),
            None,
        )
        .await;
    assert_eq!(
        error_code(refresh).await,
        (401, "invalid_refresh_token".to_owned())
    );
}

fn sign(secret: &[u8], header: &Value, claims: &Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let _ = header;
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn expired_tampered_foreign_and_unsigned_tokens_are_401() {
    let app = spawn_app().await;
    let session = app.register("erin").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| json!({"sub": session.user_id, "roles": ["admin"], "iat": now - 3600, "exp": exp, "iss": "hybridlive", "jti": uuid::Uuid::new_v4()});

    let expired = sign(&app.jwt_secret, &json!({}), &claims(now - 600));
    let foreign = sign(
        b"another-secret-that-is-long-enough-to-use-0123",
        &json!({}),
        &claims(now + 600),
    );
    let mut parts: Vec<String> = session.access_token.split('.').map(str::to_owned).collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["admin"]);
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = parts.join(".");
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!(
        "{none_header}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now + 600)).unwrap())
    );

    for (name, token) in [
        ("expired", expired),
        ("foreign", foreign),
        ("tampered", tampered),
        ("alg none", unsigned),
        ("garbage", "x.y.z".to_owned()),
    ] {
        let response = app.call(reqwest::Method::GET, "/v1/me", &token).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
        assert_eq!(
            error_code(response).await,
            (401, "unauthorized".to_owned()),
            "{name}"
        );
    }
    let missing = app.http.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(error_code(missing).await, (401, "unauthorized".to_owned()));
    // The genuine token still works.
    assert_eq!(
        app.call(reqwest::Method::GET, "/v1/me", &session.access_token)
            .await
            .status(),
        200
    );
}

/// Logs `username` in with `user_agent`; returns the refresh token.
async fn login_from(app: &e2e::TestApp, username: &str, user_agent: &str) -> String {
    let response = app
        .http
        .post(app.url("/v1/auth/login"))
        .header("user-agent", user_agent)
        .json(&json!({"login": username, "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sessions_list_every_login_and_ending_one_revokes_only_its_refresh_tokens() {
    let app = spawn_app().await;
    let ada = app.register("sess_ada").await;
    let bob = app.register("sess_bob").await;
    let laptop = login_from(&app, "sess_ada", "Laptop/1.0").await;
    let phone = login_from(&app, "sess_ada", "Phone/2.0").await;
    let list = |who: &e2e::Session| {
        let request = app
            .http
            .get(app.url("/v1/me/sessions"))
            .bearer_auth(&who.access_token);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    // The registration's login, then the two others, newest first.
    let listed = list(&ada).await;
    let agents: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user_agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 3, "{listed}");
    assert_eq!(&agents[..2], ["Phone/2.0", "Laptop/1.0"], "{listed}");
    let laptop_id = listed["items"][1]["id"].as_str().unwrap().to_owned();
    assert!(listed["items"][1]["created_at"].is_string());
    assert!(listed["items"][1]["last_used_at"].is_string());

    // Nobody ends another person's login; an unknown or malformed id is 404.
    let end = |who: &e2e::Session, id: &str| {
        app.http
            .delete(app.url(&format!("/v1/me/sessions/{id}")))
            .bearer_auth(&who.access_token)
            .send()
    };
    assert_eq!(end(&bob, &laptop_id).await.unwrap().status(), 404);
    assert_eq!(
        end(&ada, &uuid::Uuid::new_v4().to_string())
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(end(&ada, "not-an-id").await.unwrap().status(), 404);
    let unauthenticated = app
        .http
        .get(app.url("/v1/me/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // Ending the laptop's login: its refresh token is refused, the phone's still works.
    assert_eq!(end(&ada, &laptop_id).await.unwrap().status(), 204);
    assert_eq!(end(&ada, &laptop_id).await.unwrap().status(), 404);
    let refresh =
        |token: String| app.post("/v1/auth/refresh", json!({ "refresh_token": token }), None);
    assert_eq!(
        error_code(refresh(laptop).await).await,
        (401, "invalid_refresh_token".to_owned())
    );
    assert_eq!(refresh(phone).await.status(), 200);
    let left = list(&ada).await;
    assert_eq!(left["items"].as_array().unwrap().len(), 2, "{left}");
    assert!(left["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["id"] != laptop_id.as_str()));
    assert_eq!(list(&bob).await["items"].as_array().unwrap().len(), 1);
}
