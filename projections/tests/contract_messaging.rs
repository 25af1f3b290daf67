//! The `MessagingStore` contract, run against PostgreSQL (lite) and Cassandra/ScyllaDB at
//! `SCYLLA_NODES` (a fresh keyspace per run; skipped, loudly, only outside CI when the
//! variable is unset).
//!
//! Besides each write alone: redelivered and reordered writes, and two writers at once,
//! end in the same inboxes and messages as one writer in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use projections::messaging::scylla::{ScyllaMessaging, BUCKET_POSITIONS};
use projections::messaging::{
    ChatProfile, InboxItem, MessageView, MessagingStore, PgMessaging, StartedConversation,
};
use projections::timeline::scylla::ScyllaSettings;
use testkit::TestDb;
use uuid::Uuid;

/// Seconds, so both stores give back exactly what was stored.
fn at(position: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_765_000_000 + position % 1_000_000, 0).unwrap()
}

fn started(members: &[Uuid], title: &str, position: i64) -> StartedConversation {
    StartedConversation {
        conversation_id: Uuid::new_v4(),
        started_by: members[0],
        members: members.to_vec(),
        title: title.to_owned(),
        started_at: at(position),
        position,
    }
}

fn message(sender: Uuid, body: &str, position: i64) -> MessageView {
    MessageView {
        message_id: Uuid::new_v4(),
        sender_id: sender,
        body: body.to_owned(),
        body_html: format!("<p>{body}</p>"),
        sent_at: at(position),
        position,
    }
}

/// Every message of `conversation`, `limit` per page, newest first.
async fn all_messages(
    store: &dyn MessagingStore,
    conversation: Uuid,
    limit: usize,
) -> Vec<MessageView> {
    let (mut all, mut before) = (Vec::new(), None);
    loop {
        let page = store.messages(conversation, before, limit).await.unwrap();
        let full = page.len() == limit;
        before = page.last().map(|m| m.position);
        all.extend(page);
        if !full {
            return all;
        }
    }
}

/// Every inbox item of `user`, `limit` per page.
async fn whole_inbox(store: &dyn MessagingStore, user: Uuid, limit: usize) -> Vec<InboxItem> {
    let (mut all, mut before) = (Vec::new(), None);
    loop {
        let page = store.inbox(user, before, limit).await.unwrap();
        let full = page.len() == limit;
        before = page.last().map(|i| i.activity);
        all.extend(page);
        if !full {
            return all;
        }
    }
}

async fn profiles_are_stored_renamed_and_removed(store: &dyn MessagingStore) {
    let (ada, bob, nobody) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, name) in [(ada, "ada"), (bob, "bob")] {
        store
            .put_profile(&ChatProfile {
                user_id: id,
                username: name.to_owned(),
                display_name: name.to_uppercase(),
            })
            .await
            .unwrap();
    }
    store.rename(ada, "Ada L.").await.unwrap();
    store.rename(nobody, "Ghost").await.unwrap();
    let mut found = store.profiles(&[ada, bob, nobody]).await.unwrap();
    found.sort_by(|a, b| a.username.cmp(&b.username));
    let names: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.username.as_str(), p.display_name.as_str()))
        .collect();
    assert_eq!(names, [("ada", "Ada L."), ("bob", "BOB")]);
    store.remove_profile(ada).await.unwrap();
    store.remove_profile(ada).await.unwrap();
    let left: Vec<Uuid> = store
        .profiles(&[ada, bob])
        .await
        .unwrap()
        .iter()
        .map(|p| p.user_id)
        .collect();
    assert_eq!(left, [bob]);
}

async fn a_conversation_is_in_every_members_inbox_only(store: &dyn MessagingStore) {
    let (ada, bob, eve) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let c = started(&[ada, bob], "plans", 10);
    store.start(&c).await.unwrap();
    store.start(&c).await.unwrap();
    for member in [ada, bob] {
        assert!(store.is_member(member, c.conversation_id).await.unwrap());
        let inbox = store.inbox(member, None, 10).await.unwrap();
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        let item = &inbox[0];
        assert_eq!(item.conversation_id, c.conversation_id);
        assert_eq!(item.members, [ada, bob]);
        assert_eq!(item.title, "plans");
        assert_eq!(
            (item.last_message.clone(), item.unread, item.activity),
            (None, 0, 10)
        );
    }
    assert!(!store.is_member(eve, c.conversation_id).await.unwrap());
    assert!(store.inbox(eve, None, 10).await.unwrap().is_empty());
}

async fn messages_are_paged_newest_first_across_buckets_once(store: &dyn MessagingStore) {
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let c = started(&[ada, bob], "", 5);
    store.start(&c).await.unwrap();
    // Positions on both sides of bucket boundaries, and buckets with nothing between.
    let positions = [
        7,
        BUCKET_POSITIONS - 1,
        BUCKET_POSITIONS,
        BUCKET_POSITIONS + 3,
        3 * BUCKET_POSITIONS + 1,
        3 * BUCKET_POSITIONS + 2,
        5 * BUCKET_POSITIONS - 1,
    ];
    let sent: Vec<MessageView> = positions
        .iter()
        .enumerate()
        .map(|(i, p)| message(if i % 2 == 0 { ada } else { bob }, &format!("m{i}"), *p))
        .collect();
    for m in &sent {
        let members = store.add_message(c.conversation_id, m).await.unwrap();
        let mut sorted = members.clone();
        sorted.sort();
        let mut expected = vec![ada, bob];
        expected.sort();
        assert_eq!(sorted, expected);
    }
    // Redelivered: stored once.
    store
        .add_message(c.conversation_id, &sent[2])
        .await
        .unwrap();
    let newest_first: Vec<MessageView> = sent.iter().rev().cloned().collect();
    for limit in [1, 2, 3, 100] {
        assert_eq!(
            all_messages(store, c.conversation_id, limit).await,
            newest_first
        );
    }
    let older = store
        .messages(c.conversation_id, Some(BUCKET_POSITIONS + 3), 10)
        .await
        .unwrap();
    assert_eq!(older, newest_first[4..]);
    let inbox = store.inbox(ada, None, 10).await.unwrap();
    assert_eq!(inbox[0].last_message.as_ref(), sent.last());
    assert_eq!(inbox[0].activity, 5 * BUCKET_POSITIONS - 1);
}

async fn the_inbox_is_newest_activity_first_and_paged(store: &dyn MessagingStore) {
    let ada = Uuid::new_v4();
    let mut conversations = Vec::new();
    for i in 0..5 {
        let c = started(&[ada, Uuid::new_v4()], &format!("c{i}"), 100 + i);
        store.start(&c).await.unwrap();
        conversations.push(c);
    }
    // Activity moves c1 to the top, then c3 over it.
    store
        .add_message(conversations[1].conversation_id, &message(ada, "up", 200))
        .await
        .unwrap();
    store
        .add_message(conversations[3].conversation_id, &message(ada, "up", 300))
        .await
        .unwrap();
    let order =
        |items: Vec<InboxItem>| -> Vec<String> { items.into_iter().map(|i| i.title).collect() };
    let expected = ["c3", "c1", "c4", "c2", "c0"];
    assert_eq!(order(store.inbox(ada, None, 10).await.unwrap()), expected);
    for limit in [1, 2, 4] {
        assert_eq!(order(whole_inbox(store, ada, limit).await), expected);
    }
}

async fn unread_counts_others_messages_after_the_read_mark(store: &dyn MessagingStore) {
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let c = started(&[ada, bob], "", 1);
    store.start(&c).await.unwrap();
    let id = c.conversation_id;
    let sent = [
        message(bob, "1", 2),
        message(bob, "2", BUCKET_POSITIONS + 2),
        message(ada, "3", BUCKET_POSITIONS + 3),
        message(bob, "4", 2 * BUCKET_POSITIONS + 4),
    ];
    for m in &sent {
        store.add_message(id, m).await.unwrap();
    }
    let unread = |user| async move { store.inbox(user, None, 1).await.unwrap()[0].unread };
    assert_eq!((unread(ada).await, unread(bob).await), (3, 1));
    store.mark_read(ada, id, sent[1].message_id).await.unwrap();
    assert_eq!(unread(ada).await, 1);
    // Never back, whatever order the reads arrive in.
    store.mark_read(ada, id, sent[0].message_id).await.unwrap();
    assert_eq!(unread(ada).await, 1);
    store.mark_read(ada, id, sent[3].message_id).await.unwrap();
    store.mark_read(ada, id, sent[3].message_id).await.unwrap();
    assert_eq!(unread(ada).await, 0);
    // An unknown message, another conversation's, or a non-member change nothing.
    let eve = Uuid::new_v4();
    store.mark_read(bob, id, Uuid::new_v4()).await.unwrap();
    let other = started(&[bob, eve], "", 3);
    store.start(&other).await.unwrap();
    let elsewhere = message(eve, "x", 5);
    store
        .add_message(other.conversation_id, &elsewhere)
        .await
        .unwrap();
    store
        .mark_read(bob, id, elsewhere.message_id)
        .await
        .unwrap();
    assert_eq!(unread(bob).await, 1);
    store.mark_read(eve, id, sent[3].message_id).await.unwrap();
    assert!(!store.is_member(eve, id).await.unwrap());
}

async fn forgetting_a_person_empties_what_they_wrote(store: &dyn MessagingStore) {
    let (ada, bob, cy) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mine = started(&[ada, bob], "ada's plans", 1);
    let theirs = started(&[bob, ada, cy], "bob's group", 2);
    store.start(&mine).await.unwrap();
    store.start(&theirs).await.unwrap();
    let kept = message(bob, "from bob", 3);
    store
        .add_message(mine.conversation_id, &kept)
        .await
        .unwrap();
    store
        .add_message(mine.conversation_id, &message(ada, "secret", 4))
        .await
        .unwrap();
    store
        .add_message(
            theirs.conversation_id,
            &message(ada, "secret too", BUCKET_POSITIONS + 5),
        )
        .await
        .unwrap();
    let mut shared = store.forget(ada).await.unwrap();
    shared.sort();
    let mut expected = vec![ada, bob, cy];
    expected.sort();
    assert_eq!(shared, expected);
    store.forget(ada).await.unwrap();
    for c in [&mine, &theirs] {
        for m in all_messages(store, c.conversation_id, 10).await {
            if m.sender_id == ada {
                assert_eq!((m.body.as_str(), m.body_html.as_str()), ("[erased]", ""));
            }
        }
    }
    assert_eq!(all_messages(store, mine.conversation_id, 10).await[1], kept);
    let titles: Vec<String> = whole_inbox(store, bob, 10)
        .await
        .into_iter()
        .map(|i| i.title)
        .collect();
    assert_eq!(titles, ["bob's group", ""]);
}

/// The events of several conversations, applied one at a time in order, and by two
/// writers at once each in its own order with every event twice, end the same.
async fn two_writers_at_once_reach_what_one_in_order_does(store: &dyn MessagingStore) {
    let people: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let conversations: Vec<StartedConversation> = (0..3)
        .map(|i| {
            started(
                &[people[i], people[i + 1], people[3]],
                &format!("t{i}"),
                10 + i as i64,
            )
        })
        .collect();
    let messages: Vec<(Uuid, MessageView)> = (0..30)
        .map(|i| {
            let c = &conversations[i % 3];
            let sender = c.members[i % 2];
            let position = 100 + (i as i64) * BUCKET_POSITIONS / 7;
            (
                c.conversation_id,
                message(sender, &format!("n{i}"), position),
            )
        })
        .collect();
    for c in &conversations {
        store.start(c).await.unwrap();
    }
    let writer = |order: Vec<usize>| {
        let messages = &messages;
        async move {
            for i in order {
                let (c, m) = &messages[i];
                store.add_message(*c, m).await.unwrap();
                store.add_message(*c, m).await.unwrap();
            }
        }
    };
    let forward: Vec<usize> = (0..messages.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    tokio::join!(writer(forward), writer(backward));
    for person in &people {
        let inbox = whole_inbox(store, *person, 2).await;
        let mut expected: Vec<(Uuid, i64)> = conversations
            .iter()
            .filter(|c| c.members.contains(person))
            .map(|c| {
                let newest = messages
                    .iter()
                    .filter(|(id, _)| *id == c.conversation_id)
                    .map(|(_, m)| m.position)
                    .max()
                    .unwrap();
                (c.conversation_id, newest)
            })
            .collect();
        expected.sort_by_key(|(_, activity)| std::cmp::Reverse(*activity));
        let got: Vec<(Uuid, i64)> = inbox
            .iter()
            .map(|i| (i.conversation_id, i.activity))
            .collect();
        assert_eq!(got, expected, "the inbox of {person}");
    }
    for c in &conversations {
        let mut expected: Vec<MessageView> = messages
            .iter()
            .filter(|(id, _)| *id == c.conversation_id)
            .map(|(_, m)| m.clone())
            .collect();
        expected.sort_by_key(|m| std::cmp::Reverse(m.position));
        assert_eq!(all_messages(store, c.conversation_id, 4).await, expected);
    }
}

async fn a_batch_of_messages_is_stored_as_one_at_a_time_would_be(store: &dyn MessagingStore) {
    let (ada, bob, cyd) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let first = started(&[ada, bob], "", 1);
    let second = started(&[bob, cyd], "", 2);
    store.start(&first).await.unwrap();
    store.start(&second).await.unwrap();
    let early = message(ada, "early", 3);
    store
        .add_message(first.conversation_id, &early)
        .await
        .unwrap();
    let batch = vec![
        (first.conversation_id, early.clone()),
        (second.conversation_id, message(cyd, "a", 4)),
        (
            first.conversation_id,
            message(bob, "b", BUCKET_POSITIONS + 5),
        ),
        (
            second.conversation_id,
            message(bob, "c", BUCKET_POSITIONS + 6),
        ),
    ];
    let members = store.add_messages(&batch).await.unwrap();
    store.add_messages(&batch).await.unwrap();
    let sorted = |mut v: Vec<Uuid>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(members[&first.conversation_id].clone()),
        sorted(vec![ada, bob])
    );
    assert_eq!(
        sorted(members[&second.conversation_id].clone()),
        sorted(vec![bob, cyd])
    );
    for (conversation, expected) in [(&first, [2, 0]), (&second, [3, 1])] {
        let got = all_messages(store, conversation.conversation_id, 10).await;
        let want: Vec<MessageView> = expected.iter().map(|i| batch[*i].1.clone()).collect();
        assert_eq!(got, want);
    }
    let activity: Vec<i64> = whole_inbox(store, bob, 10)
        .await
        .iter()
        .map(|i| i.activity)
        .collect();
    assert_eq!(activity, [BUCKET_POSITIONS + 6, BUCKET_POSITIONS + 5]);
}

async fn contract(store: &dyn MessagingStore) {
    a_batch_of_messages_is_stored_as_one_at_a_time_would_be(store).await;
    profiles_are_stored_renamed_and_removed(store).await;
    a_conversation_is_in_every_members_inbox_only(store).await;
    messages_are_paged_newest_first_across_buckets_once(store).await;
    the_inbox_is_newest_activity_first_and_paged(store).await;
    unread_counts_others_messages_after_the_read_mark(store).await;
    forgetting_a_person_empties_what_they_wrote(store).await;
    two_writers_at_once_reach_what_one_in_order_does(store).await;
}

#[tokio::test]
async fn postgres_messaging_meets_the_contract() {
    let db = TestDb::new().await;
    contract(&PgMessaging::new(db.pool.clone())).await;
}

#[tokio::test]
async fn scylla_messaging_meets_the_contract() {
    let Some(nodes) = testkit::production_server("SCYLLA_NODES") else {
        return;
    };
    let settings = ScyllaSettings {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        keyspace: format!("test_{}", Uuid::new_v4().simple()),
        consistency: "ONE".to_owned(),
        replication_factor: 1,
    };
    projections::messaging::scylla::migrate(&settings)
        .await
        .unwrap();
    contract(&ScyllaMessaging::connect(&settings).await.unwrap()).await;
    projections::messaging::scylla::drop_keyspace(&settings)
        .await
        .unwrap();
}
