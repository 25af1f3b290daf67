//! Two-factor login: time-based one-time codes (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps,
//! what every authenticator app reads from an `otpauth://` URI) and recovery codes.
//!
//! A code is accepted one step early or late (clock skew); [`check_code`] returns the step it
//! matched, so the caller can accept each step once. Recovery codes are 80 random bits each,
//! stored only as their SHA-256 (a fast hash is enough for random codes of that length; a
//! password needs Argon2 because people choose it).

use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, TOTP};

/// Seconds per code.
pub const STEP_SECS: u64 = 30;
/// Recovery codes given when two-factor login is turned on.
pub const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "Hybrid Live";
/// Lowercase RFC 4648 base32 without padding: no 0/1/8/9, so no O/0 or I/1 confusion.
const CODE_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new random seed (160 bits, RFC 4226's recommendation), base32 as apps take it.
pub fn new_seed() -> SecretString {
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    match Secret::Raw(bytes.to_vec()).to_encoded() {
        Secret::Encoded(seed) => seed.into(),
        Secret::Raw(_) => unreachable!("to_encoded encodes"),
    }
}

fn totp(seed: &SecretString, account: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(seed.expose_secret().to_owned())
        .to_bytes()
        .ok()?;
    // The label may not hold ':'; a username never does.
    TOTP::new(
        Algorithm::SHA1,
        6,
        // No skew here: `check_code` tries each step itself, to learn which one matched.
        0,
        STEP_SECS,
        bytes,
        Some(ISSUER.to_owned()),
        account.replace(':', ""),
    )
    .ok()
}

/// The `otpauth://totp/…` URI an authenticator app scans (as a QR code) or takes typed in.
pub fn otpauth_uri(seed: &SecretString, account: &str) -> Option<String> {
    totp(seed, account).map(|t| t.get_url())
}

/// The code of `seed` at unix time `at` (tests and the demo use it as an app would).
pub fn code_at(seed: &SecretString, at: u64) -> Option<String> {
    totp(seed, "").map(|t| t.generate(at))
}

/// The time step (unix time / 30) whose code `code` is, among the steps one before to one
/// after `now`; `None` if it is none of them or not six digits.
pub fn check_code(seed: &SecretString, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(seed, "")?;
    let current = now / STEP_SECS;
    // totp-rs compares in constant time.
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|step| totp.check(code, step * STEP_SECS))
}

/// [`RECOVERY_CODES`] new recovery codes (`xxxx-xxxx-xxxx-xxxx`) and what to store: their
/// hashes, one per line.
pub fn new_recovery_codes() -> (Vec<String>, SecretString) {
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 16];
            OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    let hashes = codes
        .iter()
        .map(|c| recovery_hash(c))
        .collect::<Vec<_>>()
        .join("\n");
    (codes, hashes.into())
}

/// The stored hash `code` matches among `hashes` (as [`new_recovery_codes`] stored them),
/// if any: the caller then records it as used. Case, spaces and dashes do not matter.
pub fn recovery_code_hash(hashes: &SecretString, code: &str) -> Option<String> {
    let wanted = recovery_hash(code);
    hashes
        .expose_secret()
        .lines()
        .any(|h| h == wanted)
        .then_some(wanted)
}

fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    let digest = Sha256::digest(normal.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// RFC 6238 appendix B's SHA-1 seed ("12345678901234567890"), base32.
    fn rfc_seed() -> SecretString {
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".to_owned().into()
    }

    #[test]
    fn codes_are_rfc_6238s() {
        // Appendix B: 94287082 at 59 s, 07081804 at 1111111109 (8 digits; we use the last 6).
        assert_eq!(code_at(&rfc_seed(), 59).unwrap(), "287082");
        assert_eq!(code_at(&rfc_seed(), 1_111_111_109).unwrap(), "081804");
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_names_its_step() {
        let seed = new_seed();
        let now = 1_800_000_015;
        let step = now / STEP_SECS;
        for offset in [-1i64, 0, 1] {
            let at = (step as i64 + offset) as u64 * STEP_SECS;
            let code = code_at(&seed, at).unwrap();
            assert_eq!(check_code(&seed, &code, now), Some(at / STEP_SECS));
        }
        let stale = code_at(&seed, now - 2 * STEP_SECS).unwrap();
        let current = code_at(&seed, now).unwrap();
        if stale != current {
            assert_eq!(check_code(&seed, &stale, now), None);
        }
        for bad in ["", "12345", "1234567", "abcdef"] {
            assert_eq!(check_code(&seed, bad, now), None);
        }
    }

    #[test]
    fn the_uri_names_the_issuer_and_the_account() {
        let uri = otpauth_uri(&rfc_seed(), "ada").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Hybrid%20Live:ada?"),
            "{uri}"
        );
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
    }

    #[test]
    fn recovery_codes_match_their_hash_only() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 19);
        for code in &codes {
            assert!(recovery_code_hash(&hashes, code).is_some());
            assert!(recovery_code_hash(&hashes, &code.to_uppercase().replace('-', " ")).is_some());
        }
        assert!(!hashes.expose_secret().contains(&codes[0]));
        assert_eq!(recovery_code_hash(&hashes, "aaaa-aaaa-aaaa-aaaa"), None);
    }
}
