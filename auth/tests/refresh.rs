//! Refresh tokens against a real Redis, one key prefix per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use auth::{RefreshError, RefreshTokens};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(120);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A store under a fresh prefix, so tests never see each other's keys.
struct Fixture {
    tokens: RefreshTokens,
    conn: ConnectionManager,
    prefix: String,
}

impl Fixture {
    async fn new(ttl: Duration) -> Self {
        let client = redis::Client::open(redis_url()).unwrap();
        let conn = client.get_connection_manager().await.unwrap();
        let prefix = format!("test:{}:", Uuid::new_v4());
        Self {
            tokens: RefreshTokens::new(conn.clone(), prefix.clone(), ttl),
            conn,
            prefix,
        }
    }

    async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn.clone();
        conn.keys(format!("{}*", self.prefix)).await.unwrap()
    }

    /// Leftovers of a failed test expire with their TTL anyway.
    async fn cleanup(self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let mut conn = self.conn.clone();
            let () = conn.del(keys).await.unwrap();
        }
    }
}

#[tokio::test]
async fn issue_then_rotate_then_rotate_again_chains_tokens_for_the_same_user() {
    let f = Fixture::new(TTL).await;
    let user_id = Uuid::new_v4();

    let first = f.tokens.issue(user_id, "test-agent").await.unwrap();
    let second = f.tokens.rotate(&first).await.unwrap();
    let third = f.tokens.rotate(&second.token).await.unwrap();

    assert_eq!(second.user_id, user_id);
    assert_eq!(third.user_id, user_id);
    assert_ne!(first, second.token);
    assert_ne!(second.token, third.token);
    assert_eq!(first.len(), 43, "256 bits in unpadded base64url");
    assert!(first
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    f.cleanup().await;
}

#[tokio::test]
async fn reusing_a_rotated_token_is_reused_and_then_the_newest_token_is_invalid_too() {
    let f = Fixture::new(TTL).await;
    let first = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    let second = f.tokens.rotate(&first).await.unwrap();

    let reuse = f.tokens.rotate(&first).await;
    let newest = f.tokens.rotate(&second.token).await;

    assert!(matches!(reuse, Err(RefreshError::Reused)), "{reuse:?}");
    assert!(matches!(newest, Err(RefreshError::Invalid)), "{newest:?}");
    // The family stays revoked: presenting the stolen token again changes nothing.
    let again = f.tokens.rotate(&first).await;
    assert!(matches!(again, Err(RefreshError::Invalid)), "{again:?}");
    f.cleanup().await;
}

#[tokio::test]
async fn revoke_makes_the_family_current_token_invalid_and_is_idempotent() {
    let f = Fixture::new(TTL).await;
    let first = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    let current = f.tokens.rotate(&first).await.unwrap().token;

    f.tokens.revoke(&current).await.unwrap();
    f.tokens.revoke(&current).await.unwrap();

    let refreshed = f.tokens.rotate(&current).await;
    assert!(
        matches!(refreshed, Err(RefreshError::Invalid)),
        "{refreshed:?}"
    );
    let old = f.tokens.rotate(&first).await;
    assert!(matches!(old, Err(RefreshError::Invalid)), "{old:?}");
    f.cleanup().await;
}

#[tokio::test]
async fn revoking_one_login_leaves_the_users_other_logins_working() {
    let f = Fixture::new(TTL).await;
    let user_id = Uuid::new_v4();
    let laptop = f.tokens.issue(user_id, "test-agent").await.unwrap();
    let phone = f.tokens.issue(user_id, "test-agent").await.unwrap();

    f.tokens.revoke(&laptop).await.unwrap();

    assert!(matches!(
        f.tokens.rotate(&laptop).await,
        Err(RefreshError::Invalid)
    ));
    assert_eq!(f.tokens.rotate(&phone).await.unwrap().user_id, user_id);
    f.cleanup().await;
}

#[tokio::test]
async fn logout_with_an_unknown_or_malformed_token_is_ok() {
    let f = Fixture::new(TTL).await;

    f.tokens
        .revoke("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap();
    f.tokens.revoke("not a token").await.unwrap();
    f.tokens.revoke("").await.unwrap();

    assert!(
        f.keys().await.is_empty(),
        "logout of nothing writes nothing"
    );
    f.cleanup().await;
}

#[tokio::test]
async fn an_unknown_or_malformed_token_is_invalid() {
    let f = Fixture::new(TTL).await;
    let issued = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    // Same shape as a real token, never issued.
    let unknown: String = issued
        .chars()
        .map(|c| if c == 'x' { 'y' } else { 'x' })
        .collect();

    for token in [
        unknown.as_str(),
        "",
        "not a token",
        &issued[..42],
        &format!("{issued}="),
    ] {
        let result = f.tokens.rotate(token).await;
        assert!(
            matches!(result, Err(RefreshError::Invalid)),
            "{token:?}: {result:?}"
        );
    }
    f.cleanup().await;
}

#[tokio::test]
async fn an_expired_token_is_invalid() {
    let f = Fixture::new(Duration::from_millis(300)).await;
    let token = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();

    tokio::time::sleep(Duration::from_millis(700)).await;

    let result = f.tokens.rotate(&token).await;
    assert!(matches!(result, Err(RefreshError::Invalid)), "{result:?}");
    assert!(f.keys().await.is_empty(), "expired keys are gone");
}

#[tokio::test]
async fn twenty_concurrent_rotations_of_one_token_succeed_exactly_once_and_revoke_the_family() {
    let f = Fixture::new(TTL).await;
    let token = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();

    let results = futures::future::join_all((0..20).map(|_| {
        let tokens = f.tokens.clone();
        let token = token.clone();
        tokio::spawn(async move { tokens.rotate(&token).await })
    }))
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();

    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let reused = results
        .iter()
        .filter(|r| matches!(r, Err(RefreshError::Reused)))
        .count();
    let invalid = results
        .iter()
        .filter(|r| matches!(r, Err(RefreshError::Invalid)))
        .count();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(reused, 1, "the first loser detects the reuse: {results:?}");
    assert_eq!(
        invalid, 18,
        "later losers find the family revoked: {results:?}"
    );
    // The secure outcome: the winner's token died with its family.
    let winner = f.tokens.rotate(&winners[0].token).await;
    assert!(matches!(winner, Err(RefreshError::Invalid)), "{winner:?}");
    f.cleanup().await;
}

#[tokio::test]
async fn every_stored_key_expires_within_the_configured_ttl() {
    let ttl = Duration::from_secs(3600);
    let f = Fixture::new(ttl).await;
    let first = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    let second = f.tokens.rotate(&first).await.unwrap();
    f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    f.tokens.revoke(&second.token).await.unwrap();

    let keys = f.keys().await;
    // Two tokens and a family for the first login, one token and a family for the second;
    // a session and a session list for each.
    assert_eq!(keys.len(), 9, "{keys:?}");
    let mut conn = f.conn.clone();
    for key in &keys {
        let ttl_left: i64 = conn.ttl(key).await.unwrap();
        assert!(
            ttl_left > 3500 && ttl_left <= 3600,
            "{key} has TTL {ttl_left}"
        );
    }
    f.cleanup().await;
}

#[tokio::test]
async fn redis_never_holds_a_raw_token() {
    let f = Fixture::new(TTL).await;
    let first = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    let second = f.tokens.rotate(&first).await.unwrap().token;
    let raw = [first, second];

    let keys = f.keys().await;
    assert!(!keys.is_empty());
    let mut conn = f.conn.clone();
    for key in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let dump = String::from_utf8_lossy(&dump);
        for token in &raw {
            assert!(!key.contains(token.as_str()), "key {key} holds a token");
            assert!(
                !dump.contains(token.as_str()),
                "value of {key} holds a token"
            );
        }
    }
    f.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_unavailable_not_invalid() {
    // A port with nothing listening: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_millis(500)));
    let conn = ConnectionManager::new_lazy_with_config(client, config).unwrap();
    let tokens = RefreshTokens::new(conn, "test:down:".into(), TTL);
    let well_formed = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    let issued = tokens.issue(Uuid::new_v4(), "test-agent").await;
    let rotated = tokens.rotate(well_formed).await;
    let revoked = tokens.revoke(well_formed).await;

    assert!(
        matches!(issued, Err(RefreshError::Unavailable(_))),
        "{issued:?}"
    );
    assert!(
        matches!(rotated, Err(RefreshError::Unavailable(_))),
        "{rotated:?}"
    );
    assert!(
        matches!(revoked, Err(RefreshError::Unavailable(_))),
        "{revoked:?}"
    );
}

#[tokio::test]
async fn debug_output_does_not_reveal_tokens() {
    let f = Fixture::new(TTL).await;
    let first = f.tokens.issue(Uuid::new_v4(), "test-agent").await.unwrap();
    let rotated = f.tokens.rotate(&first).await.unwrap();

    let printed = format!("{rotated:?} {:?}", f.tokens);
    assert!(!printed.contains(&rotated.token), "{printed}");
    assert!(printed.contains("redacted"));
    f.cleanup().await;
}

#[tokio::test]
async fn sessions_list_each_live_login_and_revoking_one_ends_only_its_tokens() {
    let f = Fixture::new(TTL).await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let laptop = f.tokens.issue(user, "Firefox on a laptop").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let phone = f.tokens.issue(user, &"x".repeat(1000)).await.unwrap();
    let theirs = f.tokens.issue(other, "someone else").await.unwrap();
    let listed = f.tokens.sessions(user).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Newest first; a long user agent is cut.
    assert_eq!(listed[0].user_agent.len(), 256);
    assert_eq!(listed[1].user_agent, "Firefox on a laptop");
    assert_eq!(listed[1].created_ms, listed[1].last_used_ms);
    // A rotation is a use, and keeps the login.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let laptop = f.tokens.rotate(&laptop).await.unwrap().token;
    let listed = f.tokens.sessions(user).await.unwrap();
    let laptop_session = listed
        .iter()
        .find(|s| s.user_agent.starts_with("Firefox"))
        .unwrap();
    assert!(laptop_session.last_used_ms > laptop_session.created_ms);
    // Nobody revokes another person's login, or one that does not exist.
    let their_session = f.tokens.sessions(other).await.unwrap()[0].id;
    assert!(!f.tokens.revoke_session(user, their_session).await.unwrap());
    assert!(!f.tokens.revoke_session(user, Uuid::new_v4()).await.unwrap());
    assert!(f.tokens.rotate(&theirs).await.is_ok());
    // Revoking the laptop's login ends its tokens, not the phone's.
    assert!(f
        .tokens
        .revoke_session(user, laptop_session.id)
        .await
        .unwrap());
    assert!(!f
        .tokens
        .revoke_session(user, laptop_session.id)
        .await
        .unwrap());
    assert!(matches!(
        f.tokens.rotate(&laptop).await,
        Err(RefreshError::Invalid)
    ));
    assert!(f.tokens.rotate(&phone).await.is_ok());
    let left = f.tokens.sessions(user).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].id, laptop_session.id);
    // A logout drops the login from the list too.
    let fresh = f.tokens.issue(user, "tablet").await.unwrap();
    assert_eq!(f.tokens.sessions(user).await.unwrap().len(), 2);
    f.tokens.revoke(&fresh).await.unwrap();
    assert_eq!(f.tokens.sessions(user).await.unwrap().len(), 1);
    f.cleanup().await;
}
