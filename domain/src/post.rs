//! The [`Post`] aggregate: publishing and deleting a post.
//!
//! Stream id: the post's uuid. Whether the author exists is the application layer's check;
//! the read side renders and sanitises the markdown, so the body is kept as written.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::post::{PostDeletedV1, PostPublishedV1};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::Claims;
use crate::text::{holds_nul, trimmed_within};
use crate::wire::domain_events;

const TITLE_MAX: usize = 200;
const BODY_MAX: usize = 20_000;
const MEDIA_MAX: usize = 10;
const MEDIA_URL_MAX: usize = 2048;

/// Commands of a [`Post`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCommand {
    /// Publishes a new post.
    PublishPost {
        post_id: Uuid,
        author_id: Uuid,
        /// Trimmed; 1–200 characters.
        title: String,
        /// Markdown, kept verbatim; 1–20 000 characters, not all whitespace.
        body_markdown: String,
        /// At most 10 absolute `http(s)` URLs of at most 2048 characters each.
        media: Vec<String>,
    },
    /// Deletes the post; only its author may. Deleting again is a no-op.
    DeletePost { actor_id: Uuid },
}

domain_events! {
    /// Events of a [`Post`] stream.
    pub enum PostEvent for Post {
        Published(PostPublishedV1) = PostPublished,
        Deleted(PostDeletedV1) = PostDeleted,
    }
}

/// Why a [`PostCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("title must be 1 to 200 characters")]
    InvalidTitle,
    #[error("body must be 1 to 20000 characters and not blank")]
    InvalidBody,
    #[error("media must be at most 10 absolute http(s) URLs of at most 2048 characters")]
    InvalidMedia,
    #[error("post is already published")]
    AlreadyPublished,
    #[error("post not found")]
    NotFound,
    #[error("only the author may do this")]
    NotAuthor,
}

/// Where a post is in its life cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostStatus {
    /// Nothing published on this stream yet.
    #[default]
    Unpublished,
    Live,
    Deleted,
}

/// A post: who wrote it and whether it is still up. The content lives on the read side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    post_id: Uuid,
    author_id: Uuid,
    status: PostStatus,
}

impl Post {
    pub fn status(&self) -> PostStatus {
        self.status
    }

    /// Published and not deleted: it may be commented on and liked.
    pub fn is_live(&self) -> bool {
        self.status == PostStatus::Live
    }

    /// The post's id, once published.
    pub fn post_id(&self) -> Option<Uuid> {
        self.is_published().then_some(self.post_id)
    }

    /// The author, once published (deleted posts keep theirs).
    pub fn author_id(&self) -> Option<Uuid> {
        self.is_published().then_some(self.author_id)
    }

    fn is_published(&self) -> bool {
        self.status != PostStatus::Unpublished
    }

    fn decide(&self, command: PostCommand) -> Result<Vec<PostEvent>, PostError> {
        match command {
            PostCommand::PublishPost {
                post_id,
                author_id,
                title,
                body_markdown,
                media,
            } => {
                if self.is_published() {
                    return Err(PostError::AlreadyPublished);
                }
                let title = trimmed_within(&title, TITLE_MAX)
                    .ok_or(PostError::InvalidTitle)?
                    .to_owned();
                if body_markdown.trim().is_empty()
                    || body_markdown.chars().count() > BODY_MAX
                    || holds_nul(&body_markdown)
                {
                    return Err(PostError::InvalidBody);
                }
                if media.len() > MEDIA_MAX || !media.iter().all(|url| is_valid_media_url(url)) {
                    return Err(PostError::InvalidMedia);
                }
                Ok(vec![PostEvent::Published(PostPublishedV1 {
                    post_id,
                    author_id,
                    title,
                    body_markdown,
                    media,
                })])
            }
            PostCommand::DeletePost { actor_id } => {
                if !self.is_published() {
                    return Err(PostError::NotFound);
                }
                if actor_id != self.author_id {
                    return Err(PostError::NotAuthor);
                }
                if self.status == PostStatus::Deleted {
                    return Ok(Vec::new());
                }
                Ok(vec![PostEvent::Deleted(PostDeletedV1 {
                    post_id: self.post_id,
                    author_id: self.author_id,
                })])
            }
        }
    }
}

impl Aggregate for Post {
    const TYPE: &'static str = stream_type::POST;
    type Command = PostCommand;
    type Event = PostEvent;
    type Error = PostError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PostCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PostError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PostEvent) {
        match event {
            PostEvent::Published(e) => {
                self.post_id = e.post_id;
                self.author_id = e.author_id;
                self.status = PostStatus::Live;
            }
            PostEvent::Deleted(_) => self.status = PostStatus::Deleted,
        }
    }
}

impl Claims for Post {}

/// An absolute `http`/`https` URL with a host, no whitespace or control characters, at most
/// 2048 characters. Deliberately not a full URL parser: the read side fetches nothing, it only
/// links, and a browser is the one that must understand the URL.
fn is_valid_media_url(url: &str) -> bool {
    if url.chars().count() > MEDIA_URL_MAX
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_and_port.rsplit_once(':') {
        // An IPv6 literal (`[::1]`) has colons of its own.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (host_and_port, None),
    };
    !host.is_empty() && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type PostTest = TestFramework<Post>;

    const POST: Uuid = Uuid::from_u128(0x9057);
    const ADA: Uuid = Uuid::from_u128(1);
    const GRACE: Uuid = Uuid::from_u128(2);

    fn publish(title: &str, body: &str, media: &[&str]) -> PostCommand {
        PostCommand::PublishPost {
            post_id: POST,
            author_id: ADA,
            title: title.to_owned(),
            body_markdown: body.to_owned(),
            media: media.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn publish_note() -> PostCommand {
        publish(
            "Note G",
            "*Bernoulli* numbers",
            &["https://cdn.example.com/g.png"],
        )
    }

    fn published(title: &str, body: &str, media: &[&str]) -> PostEvent {
        PostEvent::Published(PostPublishedV1 {
            post_id: POST,
            author_id: ADA,
            title: title.to_owned(),
            body_markdown: body.to_owned(),
            media: media.iter().map(|m| (*m).to_owned()).collect(),
        })
    }

    fn note_published() -> PostEvent {
        published(
            "Note G",
            "*Bernoulli* numbers",
            &["https://cdn.example.com/g.png"],
        )
    }

    fn deleted() -> PostEvent {
        PostEvent::Deleted(PostDeletedV1 {
            post_id: POST,
            author_id: ADA,
        })
    }

    fn delete_by(actor_id: Uuid) -> PostCommand {
        PostCommand::DeletePost { actor_id }
    }

    fn outcome(command: PostCommand) -> Result<Vec<PostEvent>, PostError> {
        PostTest::with(())
            .given_no_previous_events()
            .when(command)
            .inspect_result()
    }

    fn media_outcome(media: &[&str]) -> Result<Vec<PostEvent>, PostError> {
        outcome(publish("Title", "Body", media))
    }

    // PublishPost

    #[test]
    fn publishing_a_new_post_emits_published() {
        PostTest::with(())
            .given_no_previous_events()
            .when(publish_note())
            .then_expect_events(vec![note_published()]);
    }

    #[test]
    fn publishing_an_already_published_post_is_rejected() {
        PostTest::with(())
            .given(vec![note_published()])
            .when(publish_note())
            .then_expect_error(PostError::AlreadyPublished);
    }

    #[test]
    fn publishing_a_deleted_post_again_is_rejected() {
        PostTest::with(())
            .given(vec![note_published(), deleted()])
            .when(publish_note())
            .then_expect_error(PostError::AlreadyPublished);
    }

    #[test]
    fn the_title_is_trimmed() {
        assert_eq!(
            outcome(publish("  Note G\n", "body", &[])),
            Ok(vec![published("Note G", "body", &[])])
        );
    }

    #[test]
    fn titles_of_1_to_200_characters_are_accepted() {
        assert!(outcome(publish("G", "body", &[])).is_ok());
        assert!(outcome(publish(&"ü".repeat(200), "body", &[])).is_ok());
    }

    #[test]
    fn empty_blank_or_longer_than_200_character_titles_are_rejected() {
        for title in [String::new(), "  \t".to_owned(), "t".repeat(201)] {
            assert_eq!(
                outcome(publish(&title, "body", &[])),
                Err(PostError::InvalidTitle),
                "{title:?}"
            );
        }
    }

    #[test]
    fn the_body_is_kept_verbatim() {
        let body = "\n  indented code\n\n- item\n";
        assert_eq!(
            outcome(publish("Title", body, &[])),
            Ok(vec![published("Title", body, &[])])
        );
    }

    #[test]
    fn bodies_of_1_to_20000_characters_are_accepted() {
        assert!(outcome(publish("Title", "x", &[])).is_ok());
        assert!(outcome(publish("Title", &"€".repeat(20_000), &[])).is_ok());
    }

    #[test]
    fn empty_blank_or_longer_than_20000_character_bodies_are_rejected() {
        for body in [String::new(), " \n\t ".to_owned(), "x".repeat(20_001)] {
            assert_eq!(
                outcome(publish("Title", &body, &[])),
                Err(PostError::InvalidBody),
                "{} chars",
                body.len()
            );
        }
    }

    #[test]
    fn up_to_10_absolute_http_or_https_media_urls_are_accepted() {
        let ten: Vec<String> = (0..10)
            .map(|i| format!("https://cdn.example.com/{i}.png"))
            .collect();
        let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
        assert!(media_outcome(&[]).is_ok());
        assert!(media_outcome(&ten).is_ok());
        for url in [
            "http://example.com",
            "https://cdn.example.com/a%20b.png?size=large#top",
            "HTTPS://EXAMPLE.COM/A.PNG",
            "https://user@example.com:8443/x",
            "http://[::1]:8080/x.png",
            "http://localhost/x",
        ] {
            assert!(media_outcome(&[url]).is_ok(), "{url}");
        }
    }

    #[test]
    fn more_than_10_media_are_rejected() {
        let eleven: Vec<String> = (0..11)
            .map(|i| format!("https://cdn.example.com/{i}.png"))
            .collect();
        let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
        assert_eq!(media_outcome(&eleven), Err(PostError::InvalidMedia));
    }

    #[test]
    fn media_that_are_not_absolute_http_urls_are_rejected() {
        for url in [
            "",
            "cdn.example.com/a.png",
            "/media/a.png",
            "//cdn.example.com/a.png",
            "ftp://example.com/a.png",
            "javascript://alert(1)",
            "data:image/png;base64,AAAA",
            "https://",
            "https:///a.png",
            "https://:443/a.png",
            "https://example.com:port/a.png",
            "https://example.com/a b.png",
            "https://example.com/a\n.png",
        ] {
            assert_eq!(
                media_outcome(&[url]),
                Err(PostError::InvalidMedia),
                "{url:?}"
            );
        }
    }

    #[test]
    fn one_invalid_media_url_among_valid_ones_is_rejected() {
        assert_eq!(
            media_outcome(&["https://example.com/a.png", "file:///etc/passwd"]),
            Err(PostError::InvalidMedia)
        );
    }

    #[test]
    fn a_media_url_of_2048_characters_is_accepted_and_2049_is_rejected() {
        let prefix = "https://cdn.example.com/";
        let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
        let over_limit = format!("{prefix}{}", "a".repeat(2049 - prefix.len()));
        assert!(media_outcome(&[&at_limit]).is_ok());
        assert_eq!(media_outcome(&[&over_limit]), Err(PostError::InvalidMedia));
    }

    // DeletePost

    #[test]
    fn the_author_deleting_a_live_post_emits_deleted() {
        PostTest::with(())
            .given(vec![note_published()])
            .when(delete_by(ADA))
            .then_expect_events(vec![deleted()]);
    }

    #[test]
    fn deleting_an_unpublished_post_is_rejected_as_not_found() {
        PostTest::with(())
            .given_no_previous_events()
            .when(delete_by(ADA))
            .then_expect_error(PostError::NotFound);
    }

    #[test]
    fn someone_else_deleting_a_post_is_rejected() {
        PostTest::with(())
            .given(vec![note_published()])
            .when(delete_by(GRACE))
            .then_expect_error(PostError::NotAuthor);
    }

    #[test]
    fn someone_else_deleting_a_deleted_post_is_rejected() {
        PostTest::with(())
            .given(vec![note_published(), deleted()])
            .when(delete_by(GRACE))
            .then_expect_error(PostError::NotAuthor);
    }

    #[test]
    fn the_author_deleting_a_deleted_post_again_emits_nothing() {
        PostTest::with(())
            .given(vec![note_published(), deleted()])
            .when(delete_by(ADA))
            .then_expect_events(vec![]);
    }

    // State

    #[test]
    fn the_state_follows_the_life_cycle() {
        let mut post = Post::default();
        assert_eq!(post.status(), PostStatus::Unpublished);
        assert!(!post.is_live());
        assert_eq!(post.author_id(), None);
        assert_eq!(post.post_id(), None);

        post.apply(note_published());
        assert_eq!(post.status(), PostStatus::Live);
        assert!(post.is_live());
        assert_eq!(post.author_id(), Some(ADA));
        assert_eq!(post.post_id(), Some(POST));

        post.apply(deleted());
        assert_eq!(post.status(), PostStatus::Deleted);
        assert!(!post.is_live());
        assert_eq!(post.author_id(), Some(ADA));

        let snapshot = serde_json::to_value(&post).unwrap();
        assert_eq!(serde_json::from_value::<Post>(snapshot).unwrap(), post);
    }

    #[test]
    fn post_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<Post>(
            vec![note_published(), deleted()],
            Event::CommentAdded(event_schemas::comment::CommentAddedV1 {
                comment_id: Uuid::from_u128(7),
                post_id: POST,
                author_id: ADA,
                body: "Nice".to_owned(),
            }),
        );
    }
}
