//! The tokens of the links Hybrid Live emails: verify an address, reset a password.
//!
//! A token is stored nowhere. It is `purpose ‖ person ‖ nonce ‖ tag`, base64url, where the
//! tag is an HMAC-SHA256, under a key derived from the server's secret, of the purpose, the
//! person, the nonce and what the token is bound to (the address it verifies). So:
//! - only a holder of the key — the emailer that sends it, the API that checks it — can make
//!   one, and a leak of the database reveals none;
//! - the emailer makes the same token again after a crash (it is a function of the event);
//! - whether a token still works is the account's business, not the token's: a reset token
//!   names its request (the nonce), and the `User` aggregate accepts only its open request,
//!   once, before it expires; a verification token names the address it verifies.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const TAG_BYTES: usize = 32;
const TOKEN_BYTES: usize = 1 + 16 + 16 + TAG_BYTES;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proves the person reads the address they registered with.
    VerifyEmail,
    /// Sets a new password through one reset request.
    ResetPassword,
}

impl Purpose {
    const fn byte(self) -> u8 {
        match self {
            Self::VerifyEmail => 1,
            Self::ResetPassword => 2,
        }
    }
}

/// What a genuine token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub user_id: Uuid,
    /// The reset request (nil for a verification).
    pub nonce: Uuid,
}

/// Makes and checks tokens. `Debug` shows no key.
#[derive(Clone)]
pub struct AccountTokens {
    key: [u8; 32],
}

impl fmt::Debug for AccountTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountTokens { .. }")
    }
}

impl AccountTokens {
    /// Keys derived from the server's secret (the JWT secret), for this use only: a token
    /// can never pass for an access token or the other way round.
    pub fn new(server_secret: &[u8]) -> Self {
        let mut mac = mac(server_secret);
        mac.update(b"hybridlive account tokens v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// The token of `purpose` for `user_id`, request `nonce`, bound to `bound` (the address
    /// a verification verifies; empty for a reset).
    pub fn make(&self, purpose: Purpose, user_id: Uuid, nonce: Uuid, bound: &str) -> String {
        let mut raw = Vec::with_capacity(TOKEN_BYTES);
        raw.push(purpose.byte());
        raw.extend_from_slice(user_id.as_bytes());
        raw.extend_from_slice(nonce.as_bytes());
        let tag = self.keyed(&raw, bound).finalize().into_bytes();
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Who and which request `token` names, if it is of `purpose` and its tag is genuine
    /// for `bound` (the caller learns `bound` from the person the token names: see
    /// [`Self::person`]).
    pub fn open(&self, purpose: Purpose, token: &str, bound: &str) -> Option<Opened> {
        let raw = self.decode(purpose, token)?;
        let (body, tag) = raw.split_at(1 + 16 + 16);
        // Constant-time comparison.
        self.keyed(body, bound).verify_slice(tag).ok()?;
        opened(body)
    }

    /// The person `token` names, unchecked: to look up what it must be bound to before
    /// [`Self::open`]. Never trust it alone.
    pub fn person(&self, purpose: Purpose, token: &str) -> Option<Uuid> {
        let raw = self.decode(purpose, token)?;
        opened(&raw[..1 + 16 + 16]).map(|o| o.user_id)
    }

    fn decode(&self, purpose: Purpose, token: &str) -> Option<Vec<u8>> {
        // Bounded before decoding: a token is 87 characters.
        if token.len() > 100 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        (raw.len() == TOKEN_BYTES && raw[0] == purpose.byte()).then_some(raw)
    }

    fn keyed(&self, body: &[u8], bound: &str) -> HmacSha256 {
        let mut mac = mac(&self.key);
        mac.update(body);
        mac.update(bound.as_bytes());
        mac
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC accepts any key length")
}

fn opened(body: &[u8]) -> Option<Opened> {
    Some(Opened {
        user_id: Uuid::from_slice(&body[1..17]).ok()?,
        nonce: Uuid::from_slice(&body[17..33]).ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tokens() -> AccountTokens {
        AccountTokens::new(b"a server secret of at least thirty-two bytes")
    }

    #[test]
    fn a_token_opens_with_its_purpose_and_binding_only() {
        let (ada, request) = (Uuid::from_u128(0xada), Uuid::from_u128(7));
        let token = tokens().make(Purpose::ResetPassword, ada, request, "");
        assert_eq!(
            tokens().open(Purpose::ResetPassword, &token, ""),
            Some(Opened {
                user_id: ada,
                nonce: request
            })
        );
        assert_eq!(tokens().person(Purpose::ResetPassword, &token), Some(ada));
        assert_eq!(tokens().open(Purpose::VerifyEmail, &token, ""), None);
        assert_eq!(tokens().open(Purpose::ResetPassword, &token, "x"), None);

        let verify = tokens().make(Purpose::VerifyEmail, ada, Uuid::nil(), "ada@example.com");
        assert!(tokens()
            .open(Purpose::VerifyEmail, &verify, "ada@example.com")
            .is_some());
        assert_eq!(
            tokens().open(Purpose::VerifyEmail, &verify, "eve@example.com"),
            None
        );
    }

    #[test]
    fn a_token_is_the_same_when_made_again_and_changes_with_the_key() {
        let ada = Uuid::from_u128(0xada);
        let token = tokens().make(Purpose::VerifyEmail, ada, Uuid::nil(), "a@b.c");
        assert_eq!(
            token,
            tokens().make(Purpose::VerifyEmail, ada, Uuid::nil(), "a@b.c")
        );
        assert_eq!(token.len(), 87);
        let other = AccountTokens::new(b"another server secret of thirty-two bytes");
        assert_eq!(other.open(Purpose::VerifyEmail, &token, "a@b.c"), None);
    }

    #[test]
    fn a_tampered_or_malformed_token_does_not_open() {
        let ada = Uuid::from_u128(0xada);
        let token = tokens().make(Purpose::ResetPassword, ada, Uuid::from_u128(1), "");
        // Another person, same tag.
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[1] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(tokens().open(Purpose::ResetPassword, &forged, ""), None);
        for bad in [
            "",
            "x",
            "!!!!",
            &token[..86],
            &format!("{token}A"),
            &"A".repeat(500),
        ] {
            assert_eq!(
                tokens().open(Purpose::ResetPassword, bad, ""),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(format!("{:?}", tokens()), "AccountTokens { .. }");
    }
}
