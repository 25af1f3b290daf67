//! Access tokens: round trip, expiry, tampering, algorithm pinning, issuer, secret checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::jwt::{check_secret, is_default_secret, DEFAULT_ACCESS_TTL, DEV_SECRET};
use auth::{AccessClaims, JwtKeys, SecretError, TokenError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const ISSUER: &str = "hybrid-live-test";

fn keys() -> JwtKeys {
    JwtKeys::new(SECRET, DEFAULT_ACCESS_TTL, ISSUER)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(exp: u64) -> AccessClaims {
    AccessClaims {
        sub: Uuid::new_v4(),
        roles: vec!["auditor".into()],
        iat: now(),
        exp,
        iss: ISSUER.into(),
        jti: Uuid::new_v4(),
    }
}

/// Signs arbitrary claims, the way an attacker or a misconfigured peer would.
fn sign(alg: Algorithm, claims: &impl serde::Serialize, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn assert_invalid(result: Result<AccessClaims, TokenError>) -> jsonwebtoken::errors::Error {
    match result {
        Err(TokenError::Invalid(e)) => e,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[test]
fn an_issued_token_verifies_with_its_user_roles_issuer_and_lifetime() {
    let keys = keys();
    let user_id = Uuid::new_v4();
    let roles = vec!["auditor".to_string(), "admin".to_string()];

    let (token, expires_in) = keys.issue(user_id, &roles).unwrap();
    let claims = keys.verify(&token).unwrap();

    assert_eq!(expires_in, 15 * 60);
    assert_eq!(claims.sub, user_id);
    assert_eq!(claims.roles, roles);
    assert!(claims.has_role("admin") && !claims.has_role("moderator"));
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.exp - claims.iat, expires_in);
    assert!(claims.iat.abs_diff(now()) <= 2);
    assert!(!claims.jti.is_nil());
}

#[test]
fn the_lifetime_is_configurable_and_every_token_has_its_own_id() {
    let keys = JwtKeys::new(SECRET, Duration::from_secs(60), ISSUER);
    let (first, expires_in) = keys.issue(Uuid::new_v4(), &[]).unwrap();
    let (second, _) = keys.issue(Uuid::new_v4(), &[]).unwrap();

    assert_eq!(expires_in, 60);
    let (first, second) = (keys.verify(&first).unwrap(), keys.verify(&second).unwrap());
    assert_eq!(first.exp - first.iat, 60);
    assert!(first.roles.is_empty());
    assert_ne!(first.jti, second.jti);
}

#[test]
fn an_expired_token_is_refused_as_expired() {
    let token = sign(Algorithm::HS256, &claims(now() - 60), SECRET);

    assert!(matches!(keys().verify(&token), Err(TokenError::Expired)));
}

#[test]
fn a_token_expired_within_the_five_second_leeway_is_still_accepted() {
    let token = sign(Algorithm::HS256, &claims(now() - 2), SECRET);

    assert!(keys().verify(&token).is_ok());
}

#[test]
fn a_token_with_a_tampered_signature_is_refused() {
    let (token, _) = keys().issue(Uuid::new_v4(), &[]).unwrap();
    let (message, signature) = token.rsplit_once('.').unwrap();
    // Change the first signature character: the last one partly encodes padding bits.
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{message}.{first}{}", &signature[1..]);

    let e = assert_invalid(keys().verify(&tampered));
    assert_eq!(*e.kind(), ErrorKind::InvalidSignature);
}

#[test]
fn a_token_with_a_tampered_payload_is_refused() {
    let keys = keys();
    let user_id = Uuid::new_v4();
    let (token, _) = keys.issue(user_id, &[]).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["admin"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );

    let e = assert_invalid(keys.verify(&forged));
    assert_eq!(*e.kind(), ErrorKind::InvalidSignature);
}

#[test]
fn an_unsigned_token_with_alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now() + 600)).unwrap());

    assert_invalid(keys().verify(&format!("{header}.{payload}.")));
    assert_invalid(keys().verify(&format!("{header}.{payload}")));
}

#[test]
fn a_token_signed_with_another_secret_is_refused() {
    let token = sign(
        Algorithm::HS256,
        &claims(now() + 600),
        b"another-secret-another-secret-another-secret",
    );

    let e = assert_invalid(keys().verify(&token));
    assert_eq!(*e.kind(), ErrorKind::InvalidSignature);
}

#[test]
fn a_token_signed_with_hs512_and_the_same_secret_is_refused() {
    let token = sign(Algorithm::HS512, &claims(now() + 600), SECRET);

    let e = assert_invalid(keys().verify(&token));
    assert_eq!(*e.kind(), ErrorKind::InvalidAlgorithm);
}

#[test]
fn a_token_from_another_issuer_is_refused() {
    let mut foreign = claims(now() + 600);
    foreign.iss = "someone-else".into();
    let token = sign(Algorithm::HS256, &foreign, SECRET);

    let e = assert_invalid(keys().verify(&token));
    assert_eq!(*e.kind(), ErrorKind::InvalidIssuer);
}

#[test]
fn a_token_without_expiry_or_subject_is_refused() {
    let no_exp = json!({ "sub": Uuid::new_v4(), "roles": [], "iat": now(), "iss": ISSUER, "jti": Uuid::new_v4() });
    let no_sub = json!({ "roles": [], "iat": now(), "exp": now() + 600, "iss": ISSUER, "jti": Uuid::new_v4() });

    assert_invalid(keys().verify(&sign(Algorithm::HS256, &no_exp, SECRET)));
    assert_invalid(keys().verify(&sign(Algorithm::HS256, &no_sub, SECRET)));
}

#[test]
fn garbage_is_an_invalid_token() {
    assert_invalid(keys().verify(""));
    assert_invalid(keys().verify("not.a.jwt"));
    assert_invalid(keys().verify("Bearer abc"));
}

#[test]
fn the_dev_secret_and_short_secrets_are_refused_outside_dev() {
    assert!(is_default_secret(DEV_SECRET));
    assert!(!is_default_secret(SECRET));
    assert_eq!(check_secret(DEV_SECRET), Err(SecretError::Default));
    assert_eq!(
        check_secret(&[7u8; 31]),
        Err(SecretError::TooShort { len: 31, min: 32 })
    );
    assert_eq!(check_secret(&[7u8; 32]), Ok(()));
    assert!(DEV_SECRET.len() >= 32, "dev must work with the length rule");
}

#[test]
fn debug_output_does_not_reveal_the_secret() {
    let printed = format!("{:?}", keys());

    assert!(!printed.contains("0123456789abcdef"), "{printed}");
    assert!(printed.contains("redacted"));
}
