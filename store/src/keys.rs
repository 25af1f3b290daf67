//! Crypto-shredding (DESIGN §8a): every person has a data key (`data_keys`), stored wrapped
//! under the process's key-encryption key (KEK, `KEY_ENCRYPTION_KEY`). The personal fields of
//! an event (`event_schemas::personal`) are sealed with the subject's data key when the event
//! is appended, and opened by the readers that decode events; the hash chain covers the
//! sealed form, so it never changes. Erasing a person deletes their key: what the log holds
//! of them is ciphertext no one can open, and opens to `"[erased]"`.
//!
//! - Sealing: XChaCha20-Poly1305 (`chacha20poly1305`, RustCrypto), a random 192-bit nonce per
//!   value, the subject's id and the field's name as associated data (a value cannot be
//!   moved to another person or field). Wire form: `sealed:v1:` + base64url(nonce ‖
//!   ciphertext).
//! - Wrapping: the same AEAD under the KEK, the subject's id as associated data; each row
//!   names the KEK it is wrapped under (`kek_id`, a fingerprint), so a process holding the
//!   new and the previous KEK reads both while [`Keyring::rewrap`] rotates them.
//! - The KEKs are the process's configuration, installed once ([`install`]) like a metrics
//!   recorder; a [`Keyring`] per pool caches unwrapped keys for [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use event_schemas::personal::{personal_fields, PersonalFields, ERASED, SEALED_PREFIX};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::append::{NewEvent, RecordedEvent, StoreError};

/// How long a [`Keyring`] keeps an unwrapped key (or the absence of one): the longest another
/// process may still open a person's data after their erasure.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// The KEK `hybridlive dev` uses when `KEY_ENCRYPTION_KEY` is unset. Published, hence
/// worthless: `serve` refuses it.
pub const DEV_KEY_ENCRYPTION_KEY: &str = "aHlicmlkbGl2ZSBkZXZlbG9wbWVudCBrZWsgMDAwMDA=";

const NONCE: usize = 24;

/// A key-encryption key: 32 bytes, given in base64.
pub struct Kek {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key-encryption key is 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    Malformed,
    #[error("the key-encryption keys are installed already, and differ")]
    AlreadyInstalled,
}

impl Kek {
    /// # Errors
    /// [`KeyError::Malformed`] unless `base64` holds exactly 32 bytes.
    pub fn from_base64(base64: &SecretString) -> Result<Self, KeyError> {
        let bytes = SecretBox::new(Box::new(
            STANDARD
                .decode(base64.expose_secret().trim())
                .map_err(|_| KeyError::Malformed)?,
        ));
        let key: &[u8] = bytes.expose_secret();
        if key.len() != 32 {
            return Err(KeyError::Malformed);
        }
        let digest = Sha256::digest(key);
        Ok(Self {
            id: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
        })
    }

    /// A fingerprint of the key (not secret): which KEK a data key is wrapped under.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_development_key(&self) -> bool {
        Self::from_base64(&SecretString::from(DEV_KEY_ENCRYPTION_KEY))
            .is_ok_and(|dev| dev.id == self.id)
    }
}

/// The installed KEKs: the current one wraps new keys; the previous one, during a rotation,
/// still unwraps the keys not yet rewrapped.
#[derive(Debug)]
struct Keks {
    current: Kek,
    previous: Option<Kek>,
}

static KEKS: OnceLock<Keks> = OnceLock::new();

/// Installs the process's KEKs; installing the same ones again is a no-op.
///
/// # Errors
/// [`KeyError::AlreadyInstalled`] when other keys are installed.
pub fn install(current: Kek, previous: Option<Kek>) -> Result<(), KeyError> {
    let ids = (current.id.clone(), previous.as_ref().map(|k| k.id.clone()));
    let installed = KEKS.get_or_init(|| Keks { current, previous });
    if (
        installed.current.id.clone(),
        installed.previous.as_ref().map(|k| k.id.clone()),
    ) == ids
    {
        Ok(())
    } else {
        Err(KeyError::AlreadyInstalled)
    }
}

/// The id of the installed current KEK, if any.
pub fn installed() -> Option<&'static str> {
    KEKS.get().map(|k| k.current.id())
}

fn keks() -> Result<&'static Keks, StoreError> {
    KEKS.get().ok_or_else(|| {
        StoreError::Corrupt(
            "the log holds sealed personal data, but no key-encryption key is configured \
             (KEY_ENCRYPTION_KEY)"
                .into(),
        )
    })
}

/// Whether `subject` was erased (their data key destroyed). Read from the table, never a
/// cache: an erasure holds at once on every instance.
///
/// # Errors
/// On database failure.
pub async fn is_erased(pool: &PgPool, subject: Uuid) -> Result<bool, StoreError> {
    let erased: Option<bool> =
        sqlx::query_scalar("SELECT erased_at IS NOT NULL FROM data_keys WHERE subject = $1")
            .bind(subject)
            .fetch_optional(pool)
            .await?;
    Ok(erased.unwrap_or(false))
}

/// Those of `subjects` who were erased.
///
/// # Errors
/// On database failure.
pub async fn erased_among(pool: &PgPool, subjects: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT subject FROM data_keys WHERE subject = ANY($1) AND erased_at IS NOT NULL",
    )
    .bind(subjects)
    .fetch_all(pool)
    .await?)
}

/// A person's data key, unwrapped; `None`: the person is erased.
type DataKey = Option<Arc<XChaCha20Poly1305>>;

/// The data keys of one database, cached; clones share the cache.
#[derive(Clone)]
pub struct Keyring {
    pool: PgPool,
    cache: Arc<Mutex<HashMap<Uuid, (DataKey, Instant)>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Arc::default(),
        }
    }

    /// Seals the personal fields of `events` with their subjects' keys, making the keys of
    /// subjects that have none. Without an installed KEK it leaves them as they are.
    ///
    /// # Errors
    /// On database failure, a malformed payload, or a subject that is erased.
    pub async fn seal(&self, events: &mut [NewEvent]) -> Result<(), StoreError> {
        let Some(keks) = KEKS.get() else {
            return Ok(());
        };
        let subjects = subjects(events.iter().map(|e| (e.event_type.as_str(), &e.payload)));
        if subjects.is_empty() {
            return Ok(());
        }
        let keys = self.keys(&subjects, Some(keks)).await?;
        for event in events {
            let Some(personal) = personal_fields(&event.event_type) else {
                continue;
            };
            let subject = subject_of(personal, &event.payload)?;
            let Some(Some(key)) = keys.get(&subject) else {
                return Err(StoreError::Corrupt(format!(
                    "{subject} is erased: no personal data of theirs may be stored"
                )));
            };
            for_each_personal_string(personal, &mut event.payload, |field, value| {
                if !value.starts_with(SEALED_PREFIX) {
                    *value = seal(key, subject, field, value)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Opens the sealed personal fields of `events` in place; those of an erased person
    /// become `"[erased]"`.
    ///
    /// # Errors
    /// On database failure, or sealed data with no KEK installed or that does not open.
    pub async fn open(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        let mut payloads: Vec<(&str, &mut Value)> = events
            .iter_mut()
            .map(|e| (e.event_type.as_str(), &mut e.payload))
            .collect();
        self.open_payloads(&mut payloads).await
    }

    /// [`Self::open`] of `(event type, payload)` pairs.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_payloads(
        &self,
        payloads: &mut [(&str, &mut Value)],
    ) -> Result<(), StoreError> {
        // An erasure read here ends the use of the person's key in this process at once,
        // not when the cache expires: what follows it must not open.
        for (event_type, payload) in payloads.iter() {
            if *event_type == "user.erased" {
                if let Some(user) = payload.get("user_id").and_then(|v| v.as_str()) {
                    if let Ok(user) = Uuid::parse_str(user) {
                        self.forget(user);
                    }
                }
            }
        }
        let sealed: Vec<Uuid> = subjects(
            payloads
                .iter()
                .filter(|(event_type, payload)| holds_sealed(event_type, payload))
                .map(|(event_type, payload)| (*event_type, &**payload)),
        );
        if sealed.is_empty() {
            return Ok(());
        }
        let keys = self.keys(&sealed, None).await?;
        for (event_type, payload) in payloads.iter_mut() {
            let Some(personal) = personal_fields(event_type) else {
                continue;
            };
            let Ok(subject) = subject_of(personal, payload) else {
                continue;
            };
            let key = keys.get(&subject).cloned().flatten();
            for_each_personal_string(personal, payload, |field, value| {
                if value.starts_with(SEALED_PREFIX) {
                    *value = match &key {
                        Some(key) => open(key, subject, field, value)?,
                        None => ERASED.to_owned(),
                    };
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The keys of `subjects`, from the cache or the table; with `create`, making (under
    /// its current KEK) those that have none.
    async fn keys(
        &self,
        subjects: &[Uuid],
        create: Option<&Keks>,
    ) -> Result<HashMap<Uuid, DataKey>, StoreError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(cache) = self.cache.lock() {
            for subject in subjects {
                match cache.get(subject) {
                    // A cached absence is not trusted by a writer: it may create the key.
                    Some((key, at))
                        if at.elapsed() < CACHE_TTL && (key.is_some() || create.is_none()) =>
                    {
                        found.insert(*subject, key.clone());
                    }
                    _ => missing.push(*subject),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        if let Some(keks) = create {
            let mut wrapped = Vec::with_capacity(missing.len());
            for subject in &missing {
                let key = XChaCha20Poly1305::generate_key(&mut OsRng);
                wrapped.push(wrap(&keks.current, *subject, &key)?);
            }
            let kek = vec![keks.current.id.as_str(); missing.len()];
            sqlx::query(
                "INSERT INTO data_keys (subject, wrapped, kek_id) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::text[]) \
                 ON CONFLICT (subject) DO NOTHING",
            )
            .bind(&missing)
            .bind(&wrapped)
            .bind(&kek)
            .execute(&self.pool)
            .await?;
        }
        let rows: Vec<(Uuid, Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
            "SELECT subject, wrapped, kek_id FROM data_keys WHERE subject = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded: HashMap<Uuid, DataKey> = missing.iter().map(|s| (*s, None)).collect();
        for (subject, wrapped, kek_id) in rows {
            if let (Some(wrapped), Some(kek_id)) = (wrapped, kek_id) {
                let key = unwrap(keks()?, &kek_id, subject, &wrapped)?;
                loaded.insert(subject, Some(Arc::new(key)));
            }
        }
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            for (subject, key) in &loaded {
                cache.insert(*subject, (key.clone(), now));
            }
        }
        found.extend(loaded);
        Ok(found)
    }

    /// Drops `subject`'s key from this keyring's cache (they were just erased here). Other
    /// processes' keyrings drop it within [`CACHE_TTL`].
    pub fn forget(&self, subject: Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(subject, (None, Instant::now()));
        }
    }

    /// Wraps every data key not wrapped under the current KEK again under it (after a
    /// rotation: the previous KEK installed as previous); returns how many it rewrapped.
    ///
    /// # Errors
    /// On database failure, or a key wrapped under a KEK that is not installed.
    pub async fn rewrap(&self) -> Result<u64, StoreError> {
        let keks = keks()?;
        let rows: Vec<(Uuid, Vec<u8>, String)> = sqlx::query_as(
            "SELECT subject, wrapped, kek_id FROM data_keys \
              WHERE wrapped IS NOT NULL AND kek_id <> $1",
        )
        .bind(keks.current.id())
        .fetch_all(&self.pool)
        .await?;
        let mut rewrapped = 0;
        for (subject, wrapped, kek_id) in rows {
            let key = unwrap_raw(keks, &kek_id, subject, &wrapped)?;
            let again = wrap(&keks.current, subject, &key)?;
            rewrapped += sqlx::query(
                "UPDATE data_keys SET wrapped = $2, kek_id = $3 WHERE subject = $1 AND kek_id = $4",
            )
            .bind(subject)
            .bind(again)
            .bind(keks.current.id())
            .bind(&kek_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(rewrapped)
    }
}

/// The subjects of the events that have personal fields, without repeats.
fn subjects<'a>(events: impl Iterator<Item = (&'a str, &'a Value)>) -> Vec<Uuid> {
    let mut subjects: Vec<Uuid> = events
        .filter_map(|(event_type, payload)| subject_of(personal_fields(event_type)?, payload).ok())
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    subjects
}

fn subject_of(personal: &PersonalFields, payload: &Value) -> Result<Uuid, StoreError> {
    payload[personal.subject]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("no `{}` to seal for", personal.subject)))
}

/// Whether `payload` (of `event_type`) holds a sealed personal field.
pub(crate) fn holds_sealed(event_type: &str, payload: &Value) -> bool {
    let Some(personal) = personal_fields(event_type) else {
        return false;
    };
    personal.fields.iter().any(|field| match &payload[*field] {
        Value::String(s) => s.starts_with(SEALED_PREFIX),
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| s.starts_with(SEALED_PREFIX))),
        _ => false,
    })
}

/// Calls `change` with every personal string of `payload` (each string of a list).
fn for_each_personal_string(
    personal: &PersonalFields,
    payload: &mut Value,
    mut change: impl FnMut(&str, &mut String) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for field in personal.fields {
        match payload.get_mut(*field) {
            Some(Value::String(value)) => change(field, value)?,
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::String(value) = item {
                        change(field, value)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn associated(subject: Uuid, field: &str) -> Vec<u8> {
    let mut aad = subject.as_bytes().to_vec();
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn seal(
    key: &XChaCha20Poly1305,
    subject: Uuid,
    field: &str,
    value: &str,
) -> Result<String, StoreError> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = associated(subject, field);
    let sealed = key
        .encrypt(
            &nonce,
            Payload {
                msg: value.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| StoreError::Corrupt("sealing failed".into()))?;
    let mut bytes = nonce.to_vec();
    bytes.extend(sealed);
    Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn open(
    key: &XChaCha20Poly1305,
    subject: Uuid,
    field: &str,
    value: &str,
) -> Result<String, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("a sealed `{field}` of {subject} does not open"));
    let bytes = URL_SAFE_NO_PAD
        .decode(&value[SEALED_PREFIX.len()..])
        .map_err(|_| corrupt())?;
    if bytes.len() < NONCE {
        return Err(corrupt());
    }
    let (nonce, sealed) = bytes.split_at(NONCE);
    let aad = associated(subject, field);
    let plain = key
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| corrupt())?;
    String::from_utf8(plain).map_err(|_| corrupt())
}

fn wrap(kek: &Kek, subject: Uuid, key: &Key) -> Result<Vec<u8>, StoreError> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let wrapped = kek
        .cipher
        .encrypt(
            &nonce,
            Payload {
                msg: key.as_slice(),
                aad: subject.as_bytes(),
            },
        )
        .map_err(|_| StoreError::Corrupt("wrapping a data key failed".into()))?;
    let mut bytes = nonce.to_vec();
    bytes.extend(wrapped);
    Ok(bytes)
}

fn unwrap_raw(keks: &Keks, kek_id: &str, subject: Uuid, wrapped: &[u8]) -> Result<Key, StoreError> {
    let kek = [Some(&keks.current), keks.previous.as_ref()]
        .into_iter()
        .flatten()
        .find(|k| k.id == kek_id)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the data key of {subject} is wrapped under key-encryption key {kek_id}, \
                 which is not configured (KEY_ENCRYPTION_KEY, KEY_ENCRYPTION_KEY_PREVIOUS)"
            ))
        })?;
    let corrupt = || StoreError::Corrupt(format!("the data key of {subject} does not unwrap"));
    if wrapped.len() < NONCE {
        return Err(corrupt());
    }
    let (nonce, sealed) = wrapped.split_at(NONCE);
    let key = kek
        .cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: subject.as_bytes(),
            },
        )
        .map_err(|_| corrupt())?;
    if key.len() != 32 {
        return Err(corrupt());
    }
    Ok(*Key::from_slice(&key))
}

fn unwrap(
    keks: &Keks,
    kek_id: &str,
    subject: Uuid,
    wrapped: &[u8],
) -> Result<XChaCha20Poly1305, StoreError> {
    Ok(XChaCha20Poly1305::new(&unwrap_raw(
        keks, kek_id, subject, wrapped,
    )?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_subject_and_field_with_its_key() {
        let (k, other) = (key(), key());
        let (ada, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let sealed = seal(&k, ada, "title", "Ada's secret plan").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            open(&k, ada, "title", &sealed).unwrap(),
            "Ada's secret plan"
        );
        assert!(open(&other, ada, "title", &sealed).is_err(), "another key");
        assert!(open(&k, bob, "title", &sealed).is_err(), "another subject");
        assert!(
            open(&k, ada, "body_markdown", &sealed).is_err(),
            "another field"
        );
        assert_ne!(
            seal(&k, ada, "title", "x").unwrap(),
            seal(&k, ada, "title", "x").unwrap()
        );
    }

    #[test]
    fn a_wrapped_key_unwraps_under_its_kek_current_or_previous() {
        let kek = |b: u8| {
            Kek::from_base64(&SecretString::from(STANDARD.encode([b; 32]).as_str())).unwrap()
        };
        let subject = Uuid::from_u128(7);
        let data = XChaCha20Poly1305::generate_key(&mut OsRng);
        let old = kek(1);
        let wrapped = wrap(&old, subject, &data).unwrap();
        let old_id = old.id.clone();
        let rotating = Keks {
            current: kek(2),
            previous: Some(old),
        };
        assert_eq!(
            unwrap_raw(&rotating, &old_id, subject, &wrapped).unwrap(),
            data
        );
        let rotated = Keks {
            current: kek(2),
            previous: None,
        };
        assert!(unwrap_raw(&rotated, &old_id, subject, &wrapped).is_err());
        assert!(unwrap_raw(&rotating, &old_id, Uuid::from_u128(8), &wrapped).is_err());
    }

    #[test]
    fn a_kek_is_32_bytes_of_base64_and_never_prints() {
        let short = SecretString::from(STANDARD.encode([1u8; 16]).as_str());
        assert!(Kek::from_base64(&short).is_err());
        assert!(Kek::from_base64(&SecretString::from("not base64!")).is_err());
        let dev = Kek::from_base64(&SecretString::from(DEV_KEY_ENCRYPTION_KEY)).unwrap();
        assert!(dev.is_development_key());
        assert!(!format!("{dev:?}").contains(DEV_KEY_ENCRYPTION_KEY));
    }
}
