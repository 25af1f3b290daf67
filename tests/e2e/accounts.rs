//! Accounts people can trust: the emails (sent by the emailer to a real SMTP server,
//! Mailpit, and read back through its API), the links they carry, and two-factor login.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::mailpit::{token_in, Mailpit};
use e2e::{spawn_app_configured, TestApp, WorkerOptions};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery staple";
const VERIFY: &str = "Confirm your email address";
const WELCOME: &str = "Welcome to Hybrid Live";
const RESET: &str = "Reset your password";

/// A username (and so an address, `<name>@example.com`) no other test run uses: Mailpit is
/// shared.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn app_with_mail(adjust: impl FnOnce(&mut api::Settings)) -> TestApp {
    spawn_app_configured(
        adjust,
        WorkerOptions {
            mail: true,
            ..WorkerOptions::default()
        },
    )
    .await
}

async fn me(app: &TestApp, token: &str) -> Value {
    let response = app.call(Method::GET, "/v1/me", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn login(app: &TestApp, login: &str, password: &str, otp: Option<&str>) -> reqwest::Response {
    let mut body = json!({"login": login, "password": password});
    if let Some(otp) = otp {
        body["otp"] = json!(otp);
    }
    app.post("/v1/auth/login", body, None).await
}

/// The emails of `address` once the emailer has had time to send a duplicate, if it would.
async fn settled(mailpit: &Mailpit, address: &str, expected: usize) -> Vec<e2e::mailpit::Mail> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = mailpit.to(address).await;
    assert_eq!(mails.len(), expected, "{address}: {mails:?}");
    mails
}

#[tokio::test]
async fn the_verification_and_welcome_emails_arrive_once_each_and_the_link_verifies_the_address() {
    let app = app_with_mail(|_| {}).await;
    let mailpit = Mailpit::new();
    let name = unique("ada");
    let address = format!("{name}@example.com");
    let ada = app.register(&name).await;
    assert_eq!(me(&app, &ada.access_token).await["email_verified"], false);

    let verification = mailpit.expect(&address, VERIFY, WAIT).await;
    mailpit.expect(&address, WELCOME, WAIT).await;
    let (text, html) = mailpit.bodies(&verification).await;
    let token = token_in(&text, "verify_email").expect("a link in the text");
    assert!(html.contains("confirm my address"), "{html}");
    assert!(!text.contains("{") && text.contains(&name), "{text}");

    // Anything but the token refuses, and changes nothing.
    let mut tampered = token.clone().into_bytes();
    tampered[30] = if tampered[30] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in ["", "x", tampered.as_str(), &"A".repeat(5000)] {
        let response = app
            .post("/v1/auth/verify-email", json!({"token": bad}), None)
            .await;
        assert_eq!(
            error_code(response).await,
            (400, "invalid_token".to_owned()),
            "{bad}"
        );
    }
    assert_eq!(me(&app, &ada.access_token).await["email_verified"], false);

    // The link, twice (a second click is harmless).
    for _ in 0..2 {
        let response = app
            .post("/v1/auth/verify-email", json!({"token": token}), None)
            .await;
        assert_eq!(response.status(), 204);
    }
    assert_eq!(me(&app, &ada.access_token).await["email_verified"], true);

    // Once each.
    let mails = settled(&mailpit, &address, 2).await;
    let ids: Vec<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert!(
        ids.iter().any(|id| id.starts_with("verify_email.")),
        "{ids:?}"
    );
    assert!(ids.iter().any(|id| id.starts_with("welcome.")), "{ids:?}");

    // Another person's token does not verify this one.
    let eve = app.register(&unique("eve")).await;
    let response = app
        .post("/v1/auth/verify-email", json!({"token": token}), None)
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(me(&app, &eve.access_token).await["email_verified"], false);
}

#[tokio::test]
async fn a_reset_link_works_once_ends_every_session_and_unknown_addresses_get_the_same_202() {
    let app = app_with_mail(|_| {}).await;
    let mailpit = Mailpit::new();
    let name = unique("bob");
    let address = format!("{name}@example.com");
    let bob = app.register(&name).await;
    mailpit.expect(&address, WELCOME, WAIT).await;

    // The same answer for an account's address and for nobody's.
    let nobody = format!("{}@example.com", unique("nobody"));
    for email in [address.to_uppercase(), nobody.clone()] {
        let response = app
            .post("/v1/auth/password-reset", json!({"email": email}), None)
            .await;
        assert_eq!(response.status(), 202, "{email}");
        assert_eq!(response.text().await.unwrap(), "", "{email}");
    }
    let reset = mailpit.expect(&address, RESET, WAIT).await;
    let (text, _) = mailpit.bodies(&reset).await;
    let token = token_in(&text, "reset_password").expect("a link in the text");

    // A weak password is refused without using the token up.
    let response = app
        .post(
            "/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": "password"}),
            None,
        )
        .await;
    assert_eq!(
        error_code(response).await,
        (422, "weak_password".to_owned())
    );

    let new_password = "a brand new passphrase 2026";
    let response = app
        .post(
            "/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": new_password}),
            None,
        )
        .await;
    assert_eq!(response.status(), 204);

    // Used: refused.
    let response = app
        .post(
            "/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": "yet another passphrase 99"}),
            None,
        )
        .await;
    assert_eq!(
        error_code(response).await,
        (400, "invalid_token".to_owned())
    );

    // Every session ended; only the new password logs in.
    let response = app
        .post(
            "/v1/auth/refresh",
            json!({"refresh_token": bob.refresh_token}),
            None,
        )
        .await;
    assert_eq!(
        error_code(response).await,
        (401, "invalid_refresh_token".to_owned())
    );
    assert_eq!(login(&app, &name, PASSWORD, None).await.status(), 401);
    assert_eq!(login(&app, &name, new_password, None).await.status(), 200);

    // Nothing went to the unknown address; bob got one reset email.
    assert!(mailpit.to(&nobody).await.is_empty());
    let mails = settled(&mailpit, &address, 3).await;
    assert_eq!(mails.iter().filter(|m| m.subject == RESET).count(), 1);
}

#[tokio::test]
async fn an_expired_or_replaced_reset_link_is_refused() {
    let app = app_with_mail(|settings| {
        settings.password_reset_ttl = Duration::from_secs(4);
    })
    .await;
    let mailpit = Mailpit::new();
    let name = unique("cy");
    let address = format!("{name}@example.com");
    app.register(&name).await;

    // Expired.
    request_reset(&app, &address).await;
    let first = reset_tokens(&mailpit, &address, 1).await.remove(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        error_code(confirm(&app, &first).await).await,
        (400, "invalid_token".to_owned())
    );

    // Replaced by a newer request: only the newest works.
    request_reset(&app, &address).await;
    request_reset(&app, &address).await;
    let all = reset_tokens(&mailpit, &address, 3).await;
    assert_eq!(
        all.len(),
        3,
        "three requests, three emails (the limit is 3 an hour)"
    );
    let (older, newest) = (&all[1], &all[2]);
    assert_ne!(older, newest);
    assert_eq!(
        error_code(confirm(&app, older).await).await,
        (400, "invalid_token".to_owned())
    );
    assert_eq!(confirm(&app, newest).await.status(), 204);

    // A fourth request within the hour is answered alike and sends nothing.
    request_reset(&app, &address).await;
    let mails = settled(&mailpit, &address, 5).await; // verification, welcome, 3 resets
    assert_eq!(mails.iter().filter(|m| m.subject == RESET).count(), 3);
}

async fn request_reset(app: &TestApp, address: &str) {
    let response = app
        .post("/v1/auth/password-reset", json!({"email": address}), None)
        .await;
    assert_eq!(response.status(), 202);
}

async fn confirm(app: &TestApp, token: &str) -> reqwest::Response {
    app.post(
        "/v1/auth/password-reset/confirm",
        json!({"token": token, "new_password": "a brand new passphrase 2026"}),
        None,
    )
    .await
}

/// The tokens of the first `count` reset emails to `address`, oldest first.
async fn reset_tokens(mailpit: &Mailpit, address: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let resets: Vec<_> = mailpit
            .to(address)
            .await
            .into_iter()
            .filter(|m| m.subject == RESET)
            .collect();
        if resets.len() >= count {
            let mut tokens = Vec::new();
            for mail in &resets {
                let (text, _) = mailpit.bodies(mail).await;
                tokens.push(token_in(&text, "reset_password").unwrap());
            }
            return tokens;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} reset emails to {address}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A code of `secret` for a time step at least one step after `after` (waiting for it, as
/// a person would for their app's next code): each step's code is accepted once.
async fn next_code(secret: &str, after: u64) -> (String, u64) {
    let seed: secrecy::SecretString = secret.to_owned().into();
    loop {
        let now = now_secs();
        let step = now / auth::totp::STEP_SECS;
        if step > after {
            return (auth::totp::code_at(&seed, now).unwrap(), step);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn two_factor_login_needs_a_current_code_or_an_unused_recovery_code() {
    let app = spawn_app_configured(|_| {}, WorkerOptions::default()).await;
    let name = unique("dee");
    let dee = app.register(&name).await;

    // Confirming needs a seed offered, and a code of it.
    let response = app
        .post(
            "/v1/me/2fa/confirm",
            json!({"code": "123456"}),
            Some(&dee.access_token),
        )
        .await;
    assert_eq!(
        error_code(response).await,
        (422, "two_factor_not_started".to_owned())
    );
    let response = app
        .post("/v1/me/2fa", json!({}), Some(&dee.access_token))
        .await;
    assert_eq!(response.status(), 200);
    let setup: Value = response.json().await.unwrap();
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let uri = setup["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Hybrid%20Live:") && uri.contains(&secret),
        "{uri}"
    );
    let response = app
        .post(
            "/v1/me/2fa/confirm",
            json!({"code": "000000"}),
            Some(&dee.access_token),
        )
        .await;
    let wrong = error_code(response).await;
    let current = auth::totp::code_at(&secret.clone().into(), now_secs()).unwrap();
    if current != "000000" {
        assert_eq!(wrong, (422, "invalid_code".to_owned()));
    }
    assert_eq!(me(&app, &dee.access_token).await["two_factor"], false);
    // Without two-factor login, the password alone logs in.
    assert_eq!(login(&app, &name, PASSWORD, None).await.status(), 200);

    let (code, confirmed_step) = next_code(&secret, 0).await;
    let response = app
        .post(
            "/v1/me/2fa/confirm",
            json!({"code": code}),
            Some(&dee.access_token),
        )
        .await;
    assert_eq!(response.status(), 200);
    let recovery: Vec<String> = response.json::<Value>().await.unwrap()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(me(&app, &dee.access_token).await["two_factor"], true);
    let response = app
        .post("/v1/me/2fa", json!({}), Some(&dee.access_token))
        .await;
    assert_eq!(
        error_code(response).await,
        (409, "two_factor_on".to_owned())
    );

    // No code, a wrong one, or the confirming code again: refused.
    assert_eq!(
        error_code(login(&app, &name, PASSWORD, None).await).await,
        (401, "otp_required".to_owned())
    );
    assert_eq!(
        error_code(login(&app, &name, PASSWORD, Some("99999")).await).await,
        (401, "invalid_otp".to_owned())
    );
    assert_eq!(
        error_code(login(&app, &name, PASSWORD, Some(&code)).await).await,
        (401, "invalid_otp".to_owned())
    );
    // A wrong password with a good code is the usual refusal.
    let (code, step) = next_code(&secret, confirmed_step).await;
    assert_eq!(
        error_code(login(&app, &name, "not the password at all", Some(&code)).await).await,
        (401, "invalid_credentials".to_owned())
    );
    // The next step's code: accepted once, also by two logins at the same moment.
    let (first, second) = tokio::join!(
        login(&app, &name, PASSWORD, Some(&code)),
        login(&app, &name, PASSWORD, Some(&code))
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 401],
        "one of two concurrent logins with one code"
    );
    assert_eq!(
        error_code(login(&app, &name, PASSWORD, Some(&code)).await).await,
        (401, "invalid_otp".to_owned())
    );

    // A recovery code: accepted once, however it is typed.
    let typed = recovery[3].to_uppercase().replace('-', " ");
    assert_eq!(
        login(&app, &name, PASSWORD, Some(&typed)).await.status(),
        200
    );
    assert_eq!(
        error_code(login(&app, &name, PASSWORD, Some(&recovery[3])).await).await,
        (401, "invalid_otp".to_owned())
    );
    assert_eq!(
        login(&app, &name, PASSWORD, Some(&recovery[4]))
            .await
            .status(),
        200
    );

    // Turning it off takes a code too.
    let off = |code: String| {
        let app = &app;
        let token = dee.access_token.clone();
        async move {
            app.http
                .delete(app.url("/v1/me/2fa"))
                .bearer_auth(token)
                .json(&json!({"code": code}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        error_code(off("123".to_owned()).await).await,
        (401, "invalid_otp".to_owned())
    );
    let (code, _) = next_code(&secret, step).await;
    assert_eq!(off(code).await.status(), 204);
    assert_eq!(me(&app, &dee.access_token).await["two_factor"], false);
    assert_eq!(login(&app, &name, PASSWORD, None).await.status(), 200);
    assert_eq!(
        error_code(off(recovery[5].clone()).await).await,
        (409, "two_factor_off".to_owned())
    );

    // The seed and the recovery codes were credentials, never event payloads, and are gone.
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM credentials WHERE stream_id = $1 ORDER BY kind")
            .bind(dee.user_id.to_string())
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(kinds, vec!["password".to_owned()]);
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%' \
            OR payload::text LIKE '%' || $2 || '%'",
    )
    .bind(&secret)
    .bind(&recovery[0])
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
}
