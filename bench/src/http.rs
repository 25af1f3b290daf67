//! `bench http`: the command API end to end over real HTTP — the API exactly as `hybridlive
//! serve` builds it (`api::App`, real PostgreSQL and Redis), driven by C closed-loop clients.
//!
//! Two phases, measured separately:
//! - **publish**: every client publishes posts (`POST /v1/posts`, bearer token of a user of
//!   its own, registered before timing); a success is a `201`;
//! - **register**: every client registers new users (`POST /v1/auth/register`, a fresh
//!   username each time); bounded by Argon2id hashing, which is deliberately slow.
//!
//! The server runs on a Tokio runtime of its own (its own worker threads, its own pool and
//! Redis connection), the clients on the main one, so the two share the machine's cores as a
//! load generator and a server on one host do; the figures include the client's cost.

use std::time::Duration;

use anyhow::Context;

use crate::runner::{self, Client, Measurement, Outcome};
use crate::server::{Server, ServerOptions};
use crate::setup::BenchDatabase;

/// What one `bench http` run does.
#[derive(Debug, Clone)]
pub struct HttpLoad {
    pub clients: usize,
    pub register_clients: usize,
    pub warmup: Duration,
    pub publish: Duration,
    pub register: Duration,
    pub pool_size: u32,
    pub server_threads: usize,
    pub redis_url: String,
}

/// One phase's result.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub clients: usize,
    pub measured: Measurement,
}

/// Runs both phases against a server started on `db`.
///
/// # Errors
/// When the server cannot start or a client cannot set itself up.
pub async fn run(db: &BenchDatabase, load: &HttpLoad) -> anyhow::Result<Vec<Phase>> {
    let server = Server::start(
        db,
        &ServerOptions {
            pool_size: load.pool_size,
            threads: load.server_threads,
            redis_url: load.redis_url.clone(),
            projections: false,
        },
    )
    .await?;
    let result = phases(&server, db, load).await;
    server.stop();
    result
}

async fn phases(
    server: &Server,
    db: &BenchDatabase,
    load: &HttpLoad,
) -> anyhow::Result<Vec<Phase>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(load.clients.max(load.register_clients))
        .build()
        .context("building the HTTP client")?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..8];

    eprintln!("Registering {} publishing users (untimed)…", load.clients);
    let mut publishers = Vec::with_capacity(load.clients);
    for i in 0..load.clients {
        let username = format!("pub_{run_id}_{i}");
        let token = register(&http, &server.base, &username)
            .await
            .with_context(|| format!("registering {username}"))?
            .context("registering a publishing user was refused")?;
        publishers.push(Publisher {
            http: http.clone(),
            url: format!("{}/v1/posts", server.base),
            token: format!("Bearer {token}"),
            sent: 0,
        });
    }
    let publish = measure(db, publishers, load.warmup, load.publish).await?;

    let registrars = (0..load.register_clients)
        .map(|i| Registrar {
            http: http.clone(),
            base: server.base.clone(),
            prefix: format!("r{run_id}_{i}_"),
            sent: 0,
        })
        .collect();
    let register = measure(db, registrars, load.warmup, load.register).await?;
    Ok(vec![
        Phase {
            name: "publish post (POST /v1/posts)",
            clients: load.clients,
            measured: publish,
        },
        Phase {
            name: "register (POST /v1/auth/register, Argon2id)",
            clients: load.register_clients,
            measured: register,
        },
    ])
}

/// Settles the database, warms up untimed, then measures.
async fn measure<C: Client>(
    db: &BenchDatabase,
    clients: Vec<C>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    db.settle().await?;
    let (clients, _) = runner::run(clients, warmup).await?;
    eprintln!("Measuring {} clients for {duration:?}…", clients.len());
    let (_, measured) = runner::run(clients, duration).await?;
    if let Some(failure) = &measured.first_failure {
        eprintln!("{} failures, the first: {failure}", measured.failures);
    }
    Ok(measured)
}

const PASSWORD: &str = "correct horse battery staple";

/// The registration of `username`, with a valid password and email.
fn registration(http: &reqwest::Client, base: &str, username: &str) -> reqwest::RequestBuilder {
    http.post(format!("{base}/v1/auth/register"))
        .json(&serde_json::json!({
            "username": username,
            "email": format!("{username}@bench.example"),
            "password": PASSWORD,
        }))
}

/// Registers `username`; `Ok(None)` when the server refused.
async fn register(
    http: &reqwest::Client,
    base: &str,
    username: &str,
) -> anyhow::Result<Option<String>> {
    let response = registration(http, base, username)
        .send()
        .await
        .context("sending the registration")?;
    if response.status() != reqwest::StatusCode::CREATED {
        return Ok(None);
    }
    let body: serde_json::Value = response.json().await.context("reading the tokens")?;
    Ok(body["access_token"].as_str().map(str::to_owned))
}

fn outcome(status: Result<reqwest::StatusCode, reqwest::Error>) -> Outcome {
    match status {
        Ok(reqwest::StatusCode::CREATED) => Outcome::Done,
        Ok(reqwest::StatusCode::CONFLICT) => Outcome::Conflict,
        Ok(other) => Outcome::Failed(format!("HTTP {other}")),
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

struct Publisher {
    http: reqwest::Client,
    url: String,
    token: String,
    sent: u64,
}

impl Client for Publisher {
    async fn step(&mut self) -> Outcome {
        self.sent += 1;
        let body = serde_json::json!({
            "title": format!("Post number {}", self.sent),
            "body_markdown": "Measured by `bench http`: one **post**, one event.",
        });
        let status = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.token)
            .json(&body)
            .send()
            .await
            .map(|response| response.status());
        outcome(status)
    }
}

struct Registrar {
    http: reqwest::Client,
    base: String,
    prefix: String,
    sent: u64,
}

impl Client for Registrar {
    async fn step(&mut self) -> Outcome {
        self.sent += 1;
        let username = format!("{}{}", self.prefix, self.sent);
        let status = registration(&self.http, &self.base, &username)
            .send()
            .await
            .map(|response| response.status());
        outcome(status)
    }
}
