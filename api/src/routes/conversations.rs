//! `/v1/conversations`: starting conversations, sending messages, marking them read. A
//! person who is not a member gets 404 for everything about a conversation.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::conversation::{direct_key, ConversationCommand, ConversationError, DIRECT_CLAIM};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CommandMeta, JsonBody, Principal};
use crate::routes::{command_headers, context, new_stream_context, parse_id};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", post(start))
        .route("/v1/conversations/{conversation_id}/messages", post(send))
        .route("/v1/conversations/{conversation_id}/read", post(mark_read))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The other members (the caller is one either way): 2–50 members in all.
    pub members: Vec<Uuid>,
    /// At most 100 characters.
    pub title: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartResponse {
    pub conversation_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Markdown, 1–4000 characters; sanitised when shown.
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendResponse {
    pub message_id: Uuid,
    pub sent_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The newest message read.
    pub up_to: Uuid,
}

/// Start a conversation. A one-to-one conversation that exists is answered (200), never
/// made twice, also when both people start it at once.
#[utoipa::path(post, path = "/v1/conversations", tag = "messaging", security(("bearer" = [])),
    request_body = StartRequest,
    responses((status = 201, body = StartResponse), (status = 200, body = StartResponse, description = "the one-to-one conversation that exists"),
              (status = 404, body = crate::error::ErrorBody, description = "a member is not a user"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_members, invalid_title")))]
pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<StartRequest>,
) -> Result<(StatusCode, HeaderMap, Json<StartResponse>), ApiError> {
    for member in &body.members {
        if *member != principal.user_id {
            let user = state.write.users.store().load(&member.to_string()).await?;
            if !user.aggregate.is_active() {
                return Err(ApiError::NotFound("user"));
            }
        }
    }
    let conversation_id = meta.mint_id("conversation");
    let others: Vec<Uuid> = body.members.clone();
    let command = ConversationCommand::Start {
        conversation_id,
        started_by: principal.user_id,
        members: body.members,
        title: body.title,
    };
    let ctx = new_stream_context(&meta, Some(principal.user_id));
    let executed = state
        .write
        .conversations
        .execute(&conversation_id.to_string(), command, &ctx)
        .await;
    match executed {
        Ok(executed) => Ok((
            StatusCode::CREATED,
            command_headers(&executed),
            Json(StartResponse { conversation_id }),
        )),
        Err(commands::CommandError::Rejected(ConversationError::DirectExists)) => {
            let other = others
                .iter()
                .copied()
                .find(|m| *m != principal.user_id)
                .ok_or_else(|| ApiError::internal("a one-to-one conversation without a pair"))?;
            let key = direct_key(principal.user_id, other);
            let holder = store::claims::holder(&state.pool, &[(DIRECT_CLAIM, &key)])
                .await
                .map_err(crate::error::domain_errors::store)?
                .ok_or_else(|| ApiError::Unavailable("the conversation is being started".into()))?;
            let conversation_id = parse_id(&holder, "conversation")?;
            Ok((
                StatusCode::OK,
                HeaderMap::new(),
                Json(StartResponse { conversation_id }),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

/// Send a message to a conversation one is a member of.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "messaging",
    security(("bearer" = [])), params(("conversation_id" = Uuid, Path)), request_body = SendRequest,
    responses((status = 201, body = SendResponse), (status = 404, body = crate::error::ErrorBody, description = "no such conversation, or not a member"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_body")))]
pub async fn send(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    Path(conversation_id): Path<String>,
    JsonBody(body): JsonBody<SendRequest>,
) -> Result<(StatusCode, HeaderMap, Json<SendResponse>), ApiError> {
    parse_id(&conversation_id, "conversation")?;
    let message_id = meta.mint_id("message");
    let command = ConversationCommand::Send {
        message_id,
        sender_id: principal.user_id,
        body: body.body,
    };
    let ctx = context(&meta, Some(principal.user_id), None);
    let executed = state
        .write
        .conversations
        .execute(&conversation_id, command, &ctx)
        .await?;
    let position = executed
        .last_position
        .ok_or_else(|| ApiError::internal("a message appended nothing"))?;
    let sent_at = store::log::recorded_at(&state.pool, position)
        .await
        .map_err(crate::error::domain_errors::store)?
        .ok_or_else(|| ApiError::internal("a message's event is not stored"))?;
    Ok((
        StatusCode::CREATED,
        command_headers(&executed),
        Json(SendResponse {
            message_id,
            sent_at,
        }),
    ))
}

/// Mark every message up to `up_to` read.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "messaging",
    security(("bearer" = [])), params(("conversation_id" = Uuid, Path)), request_body = ReadRequest,
    responses((status = 204), (status = 404, body = crate::error::ErrorBody, description = "no such conversation, or not a member")))]
pub async fn mark_read(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    Path(conversation_id): Path<String>,
    JsonBody(body): JsonBody<ReadRequest>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    parse_id(&conversation_id, "conversation")?;
    let command = ConversationCommand::MarkRead {
        reader_id: principal.user_id,
        up_to: body.up_to,
    };
    let ctx = context(&meta, Some(principal.user_id), None);
    let executed = state
        .write
        .conversations
        .execute(&conversation_id, command, &ctx)
        .await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}
