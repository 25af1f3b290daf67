//! Erasure (DESIGN §8a) on the whole production shape: a person with distinctive strings in
//! every personal field registers, posts and comments; their data reaches the lite read
//! models, the caches, the Kafka topics, Cassandra, the MongoDB-protocol store and the
//! analytics; then they erase their account, and none of those strings is left anywhere —
//! not in any PostgreSQL table, not in Redis, not in Kafka, not in Cassandra or MongoDB —
//! while `hybridlive audit verify` still passes over the untouched log, and replays rebuild
//! the models without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/production.rs"]
mod production;

use std::time::{Duration, Instant};

use e2e::TestApp;
use production::Production;
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "velvet quarry lantern 9182";

/// Every personal field of the person, each a string no other test writes.
const USERNAME: &str = "zq_erasable";
const EMAIL: &str = "zq.erasable@example.org";
const DISPLAY_NAME: &str = "Quillon Zqverbatim";
const TITLE: &str = "Zqtitle Marrowstone";
const BODY: &str = "Zqbody Thistlewick";
const MEDIA: &str = "https://media.example.org/zqmedia.png";
const COMMENT: &str = "Zqcomment Bramblecote";
const MESSAGE: &str = "Zqmessage Quarrelwick";
const CONVERSATION_TITLE: &str = "Zqchat Lanternfield";
const STRINGS: &[&str] = &[
    USERNAME,
    EMAIL,
    DISPLAY_NAME,
    TITLE,
    BODY,
    "zqmedia",
    COMMENT,
    MESSAGE,
    CONVERSATION_TITLE,
];

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_person_leaves_no_personal_string_anywhere_and_the_log_still_verifies() {
    let app = e2e::spawn_app().await;
    let production = Production::new(&app);
    production.migrate().await;
    let _relay = production.relay();
    let _workers = production.project("");
    let kafka_fed = production.api(&app).await;

    // The person, and a friend who follows them and answers their post.
    let registered = app
        .post(
            "/v1/auth/register",
            json!({"username": USERNAME, "email": EMAIL, "password": PASSWORD,
                   "display_name": DISPLAY_NAME}),
            None,
        )
        .await;
    assert_eq!(registered.status(), 201);
    let person: Value = registered.json().await.unwrap();
    let token = person["access_token"].as_str().unwrap().to_owned();
    let person_id = person["user_id"].as_str().unwrap().to_owned();
    let friend = app.register("zq_friend").await;
    let follow = app
        .call(
            Method::PUT,
            &format!("/v1/users/{person_id}/follow"),
            &friend.access_token,
        )
        .await;
    assert_eq!(follow.status(), 204);
    let post = created(
        app.post(
            "/v1/posts",
            json!({"title": TITLE, "body_markdown": BODY, "media": [MEDIA]}),
            Some(&token),
        )
        .await,
        "post_id",
    )
    .await;
    let friends_post = created(
        app.post(
            "/v1/posts",
            json!({"title": "a friend's post", "body_markdown": "hello"}),
            Some(&friend.access_token),
        )
        .await,
        "post_id",
    )
    .await;
    for on in [&post, &friends_post] {
        let comment = app
            .post(
                &format!("/v1/posts/{on}/comments"),
                json!({"body": COMMENT}),
                Some(&token),
            )
            .await;
        assert_eq!(comment.status(), 201);
    }
    let answer = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "the friend's answer"}),
            Some(&friend.access_token),
        )
        .await;
    assert_eq!(answer.status(), 201);
    // A conversation they started and a message they sent.
    let conversation = created(
        app.post(
            "/v1/conversations",
            json!({"members": [friend.user_id], "title": CONVERSATION_TITLE}),
            Some(&token),
        )
        .await,
        "conversation_id",
    )
    .await;
    let message = app
        .post(
            &format!("/v1/conversations/{conversation}/messages"),
            json!({"body": MESSAGE}),
            Some(&token),
        )
        .await;
    assert_eq!(message.status(), 201);
    let like = app
        .call(
            Method::PUT,
            &format!("/v1/posts/{friends_post}/like"),
            &token,
        )
        .await;
    assert_eq!(like.status(), 204);

    // Everywhere before: both read sides serve it (and fill their caches), the analytics
    // hold the title, and so does each store this test will search.
    let profile = eventually(
        &app,
        &kafka_fed.base,
        &format!("/v1/users/{person_id}"),
        &friend.access_token,
        |v| v["followers"] == 1,
    )
    .await;
    assert_eq!(profile["display_name"], DISPLAY_NAME);
    for base in [app.base.as_str(), kafka_fed.base.as_str()] {
        let view = eventually(
            &app,
            base,
            &format!("/v1/posts/{friends_post}/comments"),
            &friend.access_token,
            |v| v["items"].as_array().is_some_and(|items| !items.is_empty()),
        )
        .await;
        assert_eq!(view["items"][0]["body"], COMMENT, "{base}");
        let view = eventually(
            &app,
            base,
            &format!("/v1/posts/{post}"),
            &friend.access_token,
            |v| v["comment_count"] == 2,
        )
        .await;
        assert_eq!(view["title"], TITLE, "{base}");
        eventually(
            &app,
            base,
            &format!("/v1/posts/{post}/comments"),
            &friend.access_token,
            |v| v["items"].as_array().is_some_and(|items| items.len() == 2),
        )
        .await;
        eventually(&app, base, "/v1/feed", &friend.access_token, |v| {
            v["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|item| item["title"] == TITLE))
        })
        .await;
        // Messaging: PostgreSQL on the log, Cassandra (the chat keyspace) on Kafka.
        let inbox = eventually(&app, base, "/v1/conversations", &friend.access_token, |v| {
            v["items"][0]["last_message"]["body"] == MESSAGE
        })
        .await;
        assert_eq!(inbox["items"][0]["title"], CONVERSATION_TITLE, "{base}");
        assert_eq!(inbox["items"][0]["unread"], 1, "{base}");
    }
    let replayed = production
        .hybridlive(&["replay", "analytics"])
        .status()
        .await
        .unwrap();
    assert!(replayed.success(), "replay analytics");
    let everywhere = found_strings(&app, &production).await;
    for place in [
        "PostgreSQL read_model.posts",
        "PostgreSQL analytics.posts",
        "PostgreSQL read_model.messages",
        "Redis",
        "MongoDB",
        "Cassandra chat messages",
        "Cassandra chat chat_profiles",
    ] {
        assert!(
            everywhere.iter().any(|f| f.starts_with(place)),
            "nothing personal found in {place} before the erasure: the search is blind\n{everywhere:#?}"
        );
    }

    // The erasure: the wrong password changes nothing, the right one erases, and ends the
    // person's live stream.
    let mut live = e2e::SseClient::connect(&app.url("/v1/stream"), &token, None).await;
    let erase = |password: &'static str| {
        app.http
            .delete(app.url("/v1/me"))
            .bearer_auth(&token)
            .json(&json!({ "password": password }))
            .send()
    };
    assert_eq!(
        erase("not the password at all").await.unwrap().status(),
        401
    );
    assert_eq!(erase(PASSWORD).await.unwrap().status(), 204);
    live.expect("account_erased", Duration::from_secs(30)).await;
    let waited = Instant::now();
    assert_eq!(live.next_within(Duration::from_secs(5)).await, None);
    assert!(
        waited.elapsed() < Duration::from_secs(4),
        "the stream stayed open after account_erased"
    );
    let refused = app
        .http
        .get(app.url("/v1/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a stream for the erased person");

    // Gone from both read sides once they applied it.
    for base in [app.base.as_str(), kafka_fed.base.as_str()] {
        eventually(
            &app,
            base,
            &format!("/v1/posts/{friends_post}"),
            &friend.access_token,
            |v| v["comment_count"] == 0,
        )
        .await;
        let gone = app
            .http
            .get(format!("{base}/v1/posts/{post}"))
            .bearer_auth(&friend.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 404, "{base}");
        let profile = app
            .http
            .get(format!("{base}/v1/users/{person_id}"))
            .bearer_auth(&friend.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(profile.status(), 404, "{base}: the profile");
        eventually(&app, base, "/v1/feed", &friend.access_token, |v| {
            v["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(|item| item["post_id"] != post.as_str()))
        })
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = found_strings(&app, &production).await;
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = found_strings(&app, &production).await;
    }
    assert!(
        left.is_empty(),
        "personal strings left after the erasure:\n{left:#?}\n{}",
        production.log_tails()
    );

    // A replay rebuilds every lite model from the log without the person's data.
    for model in ["content", "timeline", "analytics"] {
        // The lite models the app serves: not the production stores, its Redis keys.
        let replayed = production
            .hybridlive(&["replay", model])
            .env_remove("SCYLLA_NODES")
            .env_remove("MONGODB_URI")
            .env("REDIS_PREFIX", &app.redis_prefix)
            .status()
            .await
            .unwrap();
        assert!(replayed.success(), "replay {model} after the erasure");
    }
    let left = found_strings(&app, &production).await;
    assert!(
        left.is_empty(),
        "personal strings after the replays:\n{left:#?}"
    );

    // The log verifies, and shows the erased fields as such.
    let verify = production
        .hybridlive(&["audit", "verify"])
        .status()
        .await
        .unwrap();
    assert!(verify.success(), "audit verify after the erasure");
    let auditor = app.register_with_role("zq_auditor", "auditor").await;
    let listing = get(
        &app,
        &app.base,
        &format!("/v1/audit/streams/user/{person_id}"),
        &auditor.access_token,
    )
    .await
    .1;
    let items = listing["items"].as_array().expect("audit items");
    assert_eq!(items[0]["payload"]["username"], "[erased]", "{listing}");
    assert_eq!(
        items.last().unwrap()["event_type"],
        "user.erased",
        "{listing}"
    );

    // The person cannot log in, nor use the token they held; their names are free again.
    let login = app
        .post(
            "/v1/auth/login",
            json!({"login": USERNAME, "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(login.status(), 401);
    assert_eq!(get(&app, &app.base, "/v1/me", &token).await.0, 401);
    let again = app
        .post(
            "/v1/auth/register",
            json!({"username": USERNAME, "email": EMAIL, "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(again.status(), 201);
    drop(kafka_fed);
    production.drop_stores().await;
}

/// The id a command answered with under `field`.
async fn created(response: reqwest::Response, field: &str) -> String {
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body[field].as_str().unwrap().to_owned()
}

async fn get(app: &TestApp, base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The answer of `path` on `base` once `until` holds of it (within a minute).
async fn eventually(
    app: &TestApp,
    base: &str,
    path: &str,
    token: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(app, base, path, token).await;
        if status == 200 && until(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{base}{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the person's strings are: `"<store> <place>: <string>"` for each one found.
async fn found_strings(app: &TestApp, production: &Production) -> Vec<String> {
    let mut places: Vec<(String, String)> = Vec::new();
    for (table, row) in e2e::database_rows(&app.db, &[]).await {
        places.push((format!("PostgreSQL {table}"), row));
    }
    for prefix in [&app.redis_prefix, &production.redis_prefix] {
        places.extend(redis_values(prefix).await);
    }
    places.extend(kafka_messages(production));
    places.extend(cassandra_rows(production).await);
    places.extend(mongo_documents(production).await);
    let mut found = Vec::new();
    for (place, text) in places {
        for s in STRINGS {
            if text.contains(s) {
                found.push(format!("{place}: {s}"));
            }
        }
    }
    found
}

/// Every value in Redis under `prefix` (tests share the server).
async fn redis_values(prefix: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(e2e::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut values = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            _ => continue,
        };
        // Gone since it was listed: nothing to search.
        let Ok(value) = command.query_async::<redis::Value>(&mut redis).await else {
            continue;
        };
        values.push((format!("Redis {key}"), format!("{key} {value:?}")));
    }
    values
}

/// Every message of the test's topics, key and value.
fn kafka_messages(production: &Production) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let timeout = Duration::from_secs(10);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testkit::kafka_brokers())
        .set(
            "group.id",
            format!("{}erasure-check", production.topics.prefix),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = reader.fetch_metadata(None, timeout).unwrap();
    let mut all = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&production.topics.prefix))
    {
        for partition in topic.partitions() {
            let (_, high) = reader
                .fetch_watermarks(topic.name(), partition.id(), timeout)
                .unwrap();
            if high > 0 {
                all.add_partition_offset(topic.name(), partition.id(), Offset::Beginning)
                    .unwrap();
                ends.insert((topic.name().to_owned(), partition.id()), high);
            }
        }
    }
    assert!(!ends.is_empty(), "the relay published nothing");
    reader.assign(&all).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "Kafka: {ends:?} not read");
        let Some(message) = reader.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(message.key().unwrap_or_default()),
            String::from_utf8_lossy(message.payload().unwrap_or_default())
        );
        messages.push((format!("Kafka {}", message.topic()), text));
        let at = (message.topic().to_owned(), message.partition());
        if ends
            .get(&at)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            ends.remove(&at);
        }
    }
    messages
}

/// Every row of every table of the test's Cassandra keyspaces (timelines, chat).
async fn cassandra_rows(production: &Production) -> Vec<(String, String)> {
    let mut rows = keyspace_rows(production, &production.keyspace, "Cassandra").await;
    let chat = production.scylla_chat().keyspace;
    rows.extend(keyspace_rows(production, &chat, "Cassandra chat").await);
    rows
}

/// Every row of every table of `keyspace`, labelled `<label> <table>`.
async fn keyspace_rows(
    production: &Production,
    keyspace: &str,
    label: &str,
) -> Vec<(String, String)> {
    use scylla::client::session_builder::SessionBuilder;
    use scylla::value::Row;
    let session = SessionBuilder::new()
        .known_nodes(production.scylla_nodes.split(','))
        .build()
        .await
        .unwrap();
    let tables = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let tables: Vec<(String,)> = tables
        .rows::<(String,)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!tables.is_empty(), "no table to search in {keyspace}");
    let mut rows = Vec::new();
    for (table,) in tables {
        let result = session
            .query_unpaged(format!("SELECT * FROM {keyspace}.{table}"), ())
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        for row in result.rows::<Row>().unwrap() {
            rows.push((format!("{label} {table}"), format!("{:?}", row.unwrap())));
        }
    }
    rows
}

/// Every document of every collection of the test's MongoDB-protocol database.
async fn mongo_documents(production: &Production) -> Vec<(String, String)> {
    use futures::TryStreamExt;
    let client = mongodb::Client::with_uri_str(&production.mongodb_uri)
        .await
        .unwrap();
    let database = client.database(&production.database);
    let mut documents = Vec::new();
    for collection in database.list_collection_names().await.unwrap() {
        let found: Vec<mongodb::bson::Document> = database
            .collection::<mongodb::bson::Document>(&collection)
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for document in found {
            documents.push((format!("MongoDB {collection}"), document.to_string()));
        }
    }
    documents
}
