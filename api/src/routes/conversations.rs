//! `/v1/conversations`: starting conversations, sending messages, marking them read. A
//! person who is not a member gets 404 for everything about a conversation.

use axum::extract::Query;
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
use crate::extract::{CommandMeta, JsonBody, MinPosition, Principal};
use crate::routes::feed::{caught_up, PageParams};
use crate::routes::{command_headers, context, new_stream_context, parse_id};
use crate::state::AppState;
use projections::messaging::ChatProfile;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", post(start).get(inbox))
        .route(
            "/v1/conversations/{conversation_id}/messages",
            post(send).get(history),
        )
        .route("/v1/conversations/{conversation_id}/read", post(mark_read))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The other members (the caller is one either way): 2–50 members in all.
    #[schema(min_items = 1, max_items = 50)]
    pub members: Vec<Uuid>,
    /// At most 100 characters (trimmed; empty is none).
    #[schema(max_length = 100, pattern = r"^[^\x00]*$")]
    pub title: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartResponse {
    pub conversation_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Markdown, 1–4000 characters (trimmed); sanitised when shown.
    #[schema(min_length = 1, max_length = 4000, pattern = r"^[^\x00]*$")]
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
#[utoipa::path(post, operation_id = "start_conversation", path = "/v1/conversations", tag = "messaging", security(("bearer" = [])),
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
#[utoipa::path(post, operation_id = "send_message", path = "/v1/conversations/{conversation_id}/messages", tag = "messaging",
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
#[utoipa::path(post, operation_id = "mark_conversation_read", path = "/v1/conversations/{conversation_id}/read", tag = "messaging",
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

/// One message in a page or an inbox item.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageItem {
    pub message_id: Uuid,
    pub sender_id: Uuid,
    /// Markdown as written.
    pub body: String,
    /// `body` rendered and sanitised.
    pub body_html: String,
    pub sent_at: DateTime<Utc>,
}

impl From<projections::messaging::MessageView> for MessageItem {
    fn from(m: projections::messaging::MessageView) -> Self {
        Self {
            message_id: m.message_id,
            sender_id: m.sender_id,
            body: m.body,
            body_html: m.body_html,
            sent_at: m.sent_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxEntry {
    pub conversation_id: Uuid,
    pub members: Vec<Uuid>,
    /// The members chat knows (an erased person is left out).
    pub profiles: Vec<MemberProfile>,
    /// Empty when it has none.
    pub title: String,
    pub last_message: Option<MessageItem>,
    /// Messages of others after the newest one the caller marked read (at most 1000).
    pub unread: i64,
}

/// A member as chat shows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberProfile {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageItem>,
    pub next_cursor: Option<String>,
}

/// The caller's conversations, newest activity first.
#[utoipa::path(get, path = "/v1/conversations", tag = "messaging", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("cursor" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "`next_cursor` of the previous page"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the inbox reflects this global position")),
    responses((status = 200, body = InboxPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn inbox(
    State(state): State<AppState>,
    principal: Principal,
    min: MinPosition,
    Query(params): Query<PageParams>,
) -> Result<Json<InboxPage>, ApiError> {
    let limit = params.limit()?;
    let before = params.cursor()?;
    caught_up(&state, min, &[projections::MessagingProjection::NAME]).await?;
    let messaging = &state.read.messaging;
    let items = messaging.inbox(principal.user_id, before, limit).await?;
    let mut people: Vec<Uuid> = items.iter().flat_map(|i| i.members.clone()).collect();
    people.sort_unstable();
    people.dedup();
    let profiles: std::collections::HashMap<Uuid, ChatProfile> = messaging
        .profiles(&people)
        .await?
        .into_iter()
        .map(|p| (p.user_id, p))
        .collect();
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|i| i.activity.to_string()))
        .flatten();
    Ok(Json(InboxPage {
        items: items
            .into_iter()
            .map(|i| InboxEntry {
                conversation_id: i.conversation_id,
                profiles: i
                    .members
                    .iter()
                    .filter_map(|m| profiles.get(m))
                    .map(|p| MemberProfile {
                        user_id: p.user_id,
                        username: p.username.clone(),
                        display_name: p.display_name.clone(),
                    })
                    .collect(),
                members: i.members,
                title: i.title,
                last_message: i.last_message.map(MessageItem::from),
                unread: i.unread,
            })
            .collect(),
        next_cursor,
    }))
}

/// A conversation's messages, newest first (members only).
#[utoipa::path(get, operation_id = "conversation_history", path = "/v1/conversations/{conversation_id}/messages", tag = "messaging",
    security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("before" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "`next_cursor` of the previous page"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the messages reflect this global position")),
    responses((status = 200, body = MessagePage), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody, description = "no such conversation, or not a member")))]
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
    min: MinPosition,
    Path(conversation_id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = parse_id(&conversation_id, "conversation")?;
    let limit = params.limit()?;
    let before = params.cursor()?;
    caught_up(&state, min, &[projections::MessagingProjection::NAME]).await?;
    let messaging = &state.read.messaging;
    if !messaging.is_member(principal.user_id, id).await? {
        return Err(ApiError::NotFound("conversation"));
    }
    let items = messaging.messages(id, before, limit).await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|m| m.position.to_string()))
        .flatten();
    Ok(Json(MessagePage {
        items: items.into_iter().map(MessageItem::from).collect(),
        next_cursor,
    }))
}
