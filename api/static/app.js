// Hybrid Live demo page: register → onboarding over SSE → live feed → live post view;
// people search and profiles; an inbox and one-to-one conversations, and notifications of
// follows, likes and comments, kept live by the user stream; the links of our emails
// (verify the address, reset the password) and two-factor login. Vanilla JavaScript
// against the public API (shared/API.md). User text is only ever set with textContent; the
// exceptions are the body_html of posts and messages, which the server sanitises.
'use strict';

const SESSION_KEY = 'hybridlive.session';
const VIEWS = [
  'auth-view', 'onboarding-spinner', 'onboarding-error', 'feed-view', 'post-view',
  'profile-view', 'inbox-view', 'conversation-view', 'notifications-view',
];
const POST_ROUTE = /^#\/posts\/([0-9a-fA-F-]{36})$/;
const PROFILE_ROUTE = /^#\/people\/([0-9a-fA-F-]{36})$/;
const CONVERSATION_ROUTE = /^#\/conversations\/([0-9a-fA-F-]{36})$/;
const INBOX_ROUTE = /^#\/inbox$/;
const NOTIFICATIONS_ROUTE = /^#\/notifications$/;
// A conversation scrolled this close to its end shows its newest message.
const NEWEST_SLACK_PX = 40;
// How long a presence we may not see stays unasked.
const PRESENCE_RETRY_MS = 60000;

const $ = (id) => document.getElementById(id);

const state = {
  session: null, // {user_id, access_token, refresh_token, onboarded}
  refreshing: null, // the one refresh in flight: refresh tokens rotate, a reuse revokes
  userStream: null,
  postStream: null,
  postId: null,
  liked: false,
  likesPushed: false,
  feedIds: new Set(),
  commentIds: new Set(),
  names: new Map(), // user id → Promise of the name to show
  presence: new Map(), // user id → Promise of {online, last_seen}, or of null: not ours to see
  profileId: null,
  inbox: new Map(), // conversation id → inbox item, newest activity first
  inboxLoaded: false,
  inboxLoads: Promise.resolve(), // inbox loads run one after the other
  inboxPending: 0, // loads queued or running
  conversation: null, // the open one: {id, nodes: Map message id → <li>, before, readUpTo}
  notifications: { items: [], unread: 0, loaded: false }, // the newest page, newest first
  notificationLoads: Promise.resolve(), // notification loads run one after the other
  notificationsReadUpTo: null, // the newest id this page asked the server to mark read
  notificationsMarked: new Set(), // ids this visit of the list marked read: they stay lit
  resetToken: null, // from a password-reset link, until the new password is set
};

// ---- session -------------------------------------------------------------------------

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY));
    return session && session.access_token ? session : null;
  } catch {
    return null;
  }
}

function saveSession(session) {
  state.session = session;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function signOut(message) {
  closeStreams();
  state.session = null;
  sessionStorage.removeItem(SESSION_KEY);
  forgetMessaging();
  forgetNotifications();
  $('whoami').hidden = true;
  $('logout').hidden = true;
  $('nav').hidden = true;
  showError('auth-error', message);
  if (location.hash) location.hash = '';
  show('auth-view');
}

// ---- HTTP ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A JSON request; throws ApiError with the server's message on an error status. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function api(method, path, { body, headers = {}, auth = true, retry = true } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (auth && state.session) init.headers.Authorization = `Bearer ${state.session.access_token}`;
  const response = await fetch(path, init);
  if (response.status === 401 && auth && retry && state.session && (await refresh())) {
    return api(method, path, { body, headers, auth, retry: false });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.message || `HTTP ${response.status}`, error.code);
  }
  return { data, headers: response.headers };
}

/** Trades the refresh token for a new pair; false (and signed out) when that fails. */
function refresh() {
  if (!state.refreshing) {
    const token = state.session && state.session.refresh_token;
    state.refreshing = (async () => {
      if (!token) return false;
      try {
        const { data } = await api('POST', '/v1/auth/refresh', {
          body: { refresh_token: token },
          auth: false,
        });
        saveSession({ ...state.session, access_token: data.access_token, refresh_token: data.refresh_token });
        return true;
      } catch {
        signOut('Your session has expired. Please log in again.');
        return false;
      }
    })().finally(() => {
      state.refreshing = null;
    });
  }
  return state.refreshing;
}

// ---- small DOM helpers ---------------------------------------------------------------

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
}

function showError(id, message) {
  $(id).textContent = message || '';
  $(id).hidden = !message;
}

/** A notice above whichever view shows, until dismissed: what a link of our emails did. */
function showNotice(message, isError = false) {
  $('notice-text').textContent = message;
  $('notice').classList.toggle('error', isError);
  $('notice').hidden = false;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleString();
}

/** Fills `node` with the person's name once known (ids until then). */
function authorInto(node, userId) {
  node.textContent = userId.slice(0, 8);
  if (!state.names.has(userId)) {
    state.names.set(
      userId,
      api('GET', `/v1/users/${userId}`)
        .then(({ data }) => data.display_name || data.username)
        .catch(() => userId.slice(0, 8)),
    );
  }
  state.names.get(userId).then((name) => {
    node.textContent = name;
  });
}

/** A link to the person's profile, showing their name. */
function personLink(userId) {
  const link = el('a', 'person');
  link.href = `#/people/${userId}`;
  link.dataset.userId = userId;
  authorInto(link, userId);
  return link;
}

async function submitting(form, action) {
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await action(Object.fromEntries(new FormData(form)));
  } finally {
    button.disabled = false;
  }
}

// ---- streams -------------------------------------------------------------------------

/**
 * An EventSource with the access token in the URL (EventSource cannot set headers).
 * The browser reconnects by itself after a network error; a refused connection (401 once
 * the token expired) closes it, so then the token is refreshed and the stream reopened.
 */
function openStream(path, handlers, onState) {
  let source = null;
  let stopped = false;
  let backoff = 1000;
  const connect = () => {
    const token = encodeURIComponent(state.session.access_token);
    source = new EventSource(`${path}?access_token=${token}`);
    source.onopen = () => {
      backoff = 1000;
      onState('connected');
    };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        onState('reconnecting');
        return;
      }
      onState('closed');
      backoff = Math.min(backoff * 2, 30000);
      setTimeout(async () => {
        if (stopped || !state.session) return;
        try {
          await api('GET', '/v1/me'); // refreshes the token when it expired
          if (!stopped && state.session) connect();
        } catch {
          // Signed out, or the server is away: the page shows it.
        }
      }, backoff);
    };
    for (const [event, handle] of Object.entries(handlers)) {
      source.addEventListener(event, (message) => handle(JSON.parse(message.data)));
    }
  };
  connect();
  return {
    close() {
      stopped = true;
      source.close();
    },
  };
}

function closeStreams() {
  if (state.userStream) state.userStream.close();
  state.userStream = null;
  document.body.dataset.live = 'closed';
  closePost();
  closeConversation();
}

/** Opens the user stream unless it is open; true when it was. */
function ensureUserStream() {
  if (state.userStream) return true;
  state.userStream = openStream(
    '/v1/stream',
    {
      onboarding_completed: onboardingCompleted,
      onboarding_failed: (data) => onboardingFailed(data.reason),
      feed_item: (item) => prependFeedItem(item),
      message: messageArrived,
      conversation_read: conversationRead,
      presence: presenceChanged,
      // The event names the act's log position: the list is read once it has the act.
      notification: (data) => loadNotifications(data.id),
      reset: () => {
        // Events were lost: read again what they would have changed.
        if (state.session && state.session.onboarded) loadFeed();
        loadInbox();
        reloadConversation();
        loadNotifications();
      },
    },
    (status) => {
      document.body.dataset.live = status;
      if (status !== 'connected') return;
      // A page that missed the outcome event learns it here; the inbox and notifications
      // are read once the stream is live, so nothing falls between the two.
      checkOnboarding();
      loadInbox();
      loadNotifications();
    },
  );
  return false;
}

// ---- onboarding ----------------------------------------------------------------------

function startOnboarding() {
  show('onboarding-spinner');
  // A stream opened now asks when it connects; one already open may have nothing to say.
  if (ensureUserStream()) checkOnboarding();
}

async function checkOnboarding() {
  try {
    const { data: me } = await api('GET', '/v1/me');
    $('whoami').textContent = `${me.display_name || me.username} · id ${me.user_id}`;
    $('whoami').hidden = false;
    $('logout').hidden = false;
    if (me.onboarding === 'completed') onboardingCompleted();
    else if (me.onboarding === 'failed') onboardingFailed('Registration was rolled back.');
  } catch (error) {
    if (error.status !== 401) showError('feed-error', error.message);
  }
}

function onboardingCompleted() {
  if (!state.session) return;
  const first = !state.session.onboarded;
  if (first) saveSession({ ...state.session, onboarded: true });
  if (isFeedRoute() && (first || $('feed-view').hidden)) showFeed();
}

function onboardingFailed(reason) {
  closeStreams();
  state.session = null;
  sessionStorage.removeItem(SESSION_KEY);
  forgetMessaging();
  forgetNotifications();
  $('onboarding-error-reason').textContent = reason || 'Please try again.';
  show('onboarding-error');
}

// ---- feed ----------------------------------------------------------------------------

function showFeed() {
  show('feed-view');
  loadFeed();
}

async function loadFeed(minPosition) {
  try {
    const headers = minPosition ? { 'X-Min-Position': minPosition } : {};
    const { data } = await api('GET', '/v1/feed?limit=50', { headers });
    $('feed').replaceChildren();
    state.feedIds.clear();
    for (const item of data.items) $('feed').append(feedItem(item));
    $('feed-empty').hidden = data.items.length > 0;
    showError('feed-error', '');
  } catch (error) {
    showError('feed-error', error.message);
  }
}

function feedItem(item) {
  state.feedIds.add(item.post_id);
  return postItem(item);
}

/** A post in a list: title, preview, author, counts. */
function postItem(item) {
  const li = el('li');
  li.dataset.postId = item.post_id;
  const title = el('a', 'title', item.title);
  title.href = `#/posts/${item.post_id}`;
  const meta = el('p', 'muted');
  meta.append('by ', personLink(item.author_id), ` · ${when(item.created_at)}`);
  if (item.like_count !== undefined) {
    meta.append(` · ♥ ${item.like_count} · ${item.comment_count} comments`);
  }
  li.append(title, el('p', 'preview', item.preview), meta);
  return li;
}

function prependFeedItem(item) {
  if (state.feedIds.has(item.post_id)) return;
  const li = feedItem(item);
  li.classList.add('fresh');
  $('feed').prepend(li);
  $('feed-empty').hidden = true;
}

// ---- post view -----------------------------------------------------------------------

function closePost() {
  if (state.postStream) state.postStream.close();
  state.postStream = null;
  state.postId = null;
  $('post-view').dataset.live = 'closed';
}

async function openPost(id) {
  show('post-view');
  if (state.postId === id) return;
  closePost();
  state.postId = id;
  state.liked = false;
  state.likesPushed = false;
  state.commentIds.clear();
  $('post-title').textContent = '';
  $('post-meta').replaceChildren();
  $('post-body').replaceChildren();
  $('like-count').textContent = '–';
  $('like-button').textContent = '♥ Like';
  $('comments').replaceChildren();
  showError('post-error', '');

  // Stream first, so nothing that happens while the post loads is missed.
  state.postStream = openStream(
    `/v1/posts/${id}/stream`,
    {
      comment_added: (comment) => {
        if (comment.post_id === state.postId) prependComment(comment);
      },
      likes: (data) => {
        if (data.post_id !== state.postId) return;
        state.likesPushed = true;
        $('like-count').textContent = String(data.like_count);
      },
    },
    (status) => {
      $('post-view').dataset.live = status;
      $('live-status').textContent = status === 'connected' ? '● live' : `○ ${status}`;
    },
  );

  try {
    const [{ data: post }, { data: comments }] = await Promise.all([
      api('GET', `/v1/posts/${id}`),
      api('GET', `/v1/posts/${id}/comments?limit=50`),
    ]);
    if (state.postId !== id) return;
    $('post-title').textContent = post.title;
    $('post-meta').append('by ', personLink(post.author_id), ` · ${when(post.created_at)}`);
    $('post-body').innerHTML = post.body_html; // sanitised by the server
    // A pushed count is newer than the one the read model served.
    if (!state.likesPushed) $('like-count').textContent = String(post.like_count);
    // Newest first; live ones may already be on top.
    for (const comment of comments.items) appendComment(comment);
  } catch (error) {
    if (state.postId !== id) return;
    showError('post-error', error.message);
    if (error.status === 404 && state.postStream) state.postStream.close();
  }
}

function commentItem(comment) {
  state.commentIds.add(comment.comment_id);
  const li = el('li');
  li.dataset.commentId = comment.comment_id;
  const meta = el('p', 'muted');
  const author = el('span');
  authorInto(author, comment.author_id);
  meta.append(author, ` · ${when(comment.created_at)}`);
  li.append(meta, el('p', 'comment-body', comment.body));
  return li;
}

function prependComment(comment) {
  if (!state.commentIds.has(comment.comment_id)) $('comments').prepend(commentItem(comment));
}

function appendComment(comment) {
  if (!state.commentIds.has(comment.comment_id)) $('comments').append(commentItem(comment));
}

// ---- presence --------------------------------------------------------------------------

/**
 * A dot beside a name: green when the person is online, grey when away. It stays hidden
 * when their presence is not ours to see (the server answers 404: only oneself and people
 * who follow each other see it) or cannot be read.
 */
function presenceDot(userId) {
  const dot = el('span', 'presence');
  dot.dataset.presenceUser = userId;
  dot.hidden = true;
  presenceOf(userId).then((presence) => paintPresence(dot, presence));
  return dot;
}

function presenceOf(userId) {
  if (!state.presence.has(userId)) {
    const asked = api('GET', `/v1/users/${userId}/presence`)
      .then(({ data }) => data)
      .catch(() => {
        // Following each other may begin later (the `presence` events only reach those
        // who see it already): ask again after a while.
        setTimeout(() => {
          if (state.presence.get(userId) === asked) state.presence.delete(userId);
        }, PRESENCE_RETRY_MS);
        return null;
      });
    state.presence.set(userId, asked);
  }
  return state.presence.get(userId);
}

function paintPresence(dot, presence) {
  dot.hidden = !presence;
  if (!presence) return;
  dot.dataset.online = String(Boolean(presence.online));
  if (presence.online) dot.title = 'online';
  else dot.title = presence.last_seen ? `last seen ${when(presence.last_seen)}` : 'offline';
}

/** SSE `presence`: repaints every dot of that person. */
function presenceChanged(data) {
  const presence = { online: data.online, last_seen: data.last_seen };
  state.presence.set(data.user_id, Promise.resolve(presence));
  for (const dot of document.querySelectorAll('.presence')) {
    if (dot.dataset.presenceUser === data.user_id) paintPresence(dot, presence);
  }
}

// ---- people: search and profiles -------------------------------------------------------

/** One person of a search or a followers list, linking to their profile. */
function personItem(person) {
  const name = person.display_name || person.username;
  if (!state.names.has(person.user_id)) state.names.set(person.user_id, Promise.resolve(name));
  const li = el('li');
  li.dataset.userId = person.user_id;
  const link = el('a', 'person', name);
  link.href = `#/people/${person.user_id}`;
  li.append(link, ' ', el('span', 'muted', `@${person.username}`));
  return li;
}

async function searchPeople(q) {
  try {
    const { data } = await api('GET', `/v1/users/search?q=${encodeURIComponent(q)}&limit=20`, { auth: false });
    // An answer to an older query must not replace the newer one's.
    if ($('people-search-form').elements.q.value.trim() !== q) return;
    $('people-results').replaceChildren(...data.items.map(personItem));
    $('people-status').textContent = data.items.length ? '' : 'No one found.';
  } catch (error) {
    $('people-status').textContent = error.message;
  }
}

async function openProfile(id) {
  show('profile-view');
  state.profileId = id;
  const mine = id === state.session.user_id;
  $('profile').dataset.userId = id;
  $('profile-name').textContent = '';
  $('profile-username').textContent = '';
  state.presence.delete(id); // a profile asks afresh: who may see it changes with follows
  $('profile-heading').replaceChildren($('profile-name'), presenceDot(id));
  $('profile-followers').textContent = '–';
  $('profile-following').textContent = '–';
  $('profile-followers-list').replaceChildren();
  $('profile-following-list').replaceChildren();
  $('profile-posts').replaceChildren();
  $('profile-follow').hidden = true;
  $('profile-message').hidden = true;
  $('profile-status').textContent = '';
  showError('profile-error', '');
  try {
    const [profile, following] = await Promise.all([
      loadProfile(id),
      mine ? Promise.resolve(false) : isFollowing(id),
    ]);
    if (state.profileId !== id) return;
    $('profile-name').textContent = profile.display_name || profile.username;
    $('profile-username').textContent = profile.username;
    showFollowing(following);
    $('profile-follow').hidden = mine;
    $('profile-message').hidden = mine;
  } catch (error) {
    if (state.profileId === id) showError('profile-error', error.message);
  }
}

/** The profile and its counts; with `minPosition`, once they reflect that write. */
async function loadProfile(id, minPosition) {
  const headers = minPosition ? { 'X-Min-Position': minPosition } : {};
  const { data } = await api('GET', `/v1/users/${id}`, { headers });
  if (state.profileId === id) {
    $('profile-followers').textContent = String(data.followers);
    $('profile-following').textContent = String(data.following);
    loadPeopleList(id, 'followers');
    loadPeopleList(id, 'following');
    loadProfilePosts(id);
  }
  return data;
}

/** The person's newest posts. */
async function loadProfilePosts(id) {
  const list = $('profile-posts');
  try {
    const { data } = await api('GET', `/v1/users/${id}/posts?limit=20`);
    if (state.profileId !== id) return;
    list.replaceChildren(...data.items.map(postItem));
    if (data.items.length === 0) list.append(el('li', 'muted', 'No posts yet.'));
  } catch {
    if (state.profileId === id) list.replaceChildren(el('li', 'muted', 'Not available.'));
  }
}

/** The first page of who follows the person, or of whom they follow. */
async function loadPeopleList(id, direction) {
  const list = $(`profile-${direction}-list`);
  try {
    const { data } = await api('GET', `/v1/users/${id}/${direction}?limit=20`);
    if (state.profileId !== id) return;
    list.replaceChildren(...data.items.map(personItem));
    if (data.next_cursor) list.append(el('li', 'muted', '… and more'));
    if (data.items.length === 0) list.append(el('li', 'muted', 'No one yet.'));
  } catch {
    if (state.profileId === id) list.replaceChildren(el('li', 'muted', 'Not available.'));
  }
}

/** Whether the caller follows `id`: their own following list, page by page. */
async function isFollowing(id) {
  let cursor = null;
  do {
    const after = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const { data } = await api('GET', `/v1/users/${state.session.user_id}/following?limit=100${after}`);
    if (data.items.some((person) => person.user_id === id)) return true;
    cursor = data.next_cursor;
  } while (cursor);
  return false;
}

function showFollowing(following) {
  $('profile-follow').dataset.following = String(following);
  $('profile-follow').textContent = following ? 'Unfollow' : 'Follow';
}

// ---- inbox -----------------------------------------------------------------------------

function forgetMessaging() {
  closeConversation();
  state.inbox = new Map();
  state.inboxLoaded = false;
  state.presence = new Map(); // who may see whom depends on who asks
  renderInbox();
}

/**
 * Reads the inbox again; with `minPosition`, once it reflects that write. Loads run one
 * after the other, so a load queued after an event reflects it.
 */
function loadInbox(minPosition) {
  state.inboxPending += 1;
  const load = state.inboxLoads
    .then(() => fetchInbox(minPosition))
    .finally(() => {
      state.inboxPending -= 1;
    });
  state.inboxLoads = load;
  return load;
}

async function fetchInbox(minPosition) {
  const session = state.session;
  if (!session) return;
  try {
    const headers = minPosition ? { 'X-Min-Position': minPosition } : {};
    const { data } = await api('GET', '/v1/conversations?limit=50', { headers });
    if (!state.session || state.session.user_id !== session.user_id) return; // signed out meanwhile
    state.inbox = new Map(data.items.map((item) => [item.conversation_id, item]));
    state.inboxLoaded = true;
    renderInbox();
    showError('inbox-error', '');
  } catch (error) {
    showError('inbox-error', error.message);
  }
}

/** What changed the inbox while a load was on its way may be missing from it: read again. */
function reloadInboxIfLoading(minPosition) {
  if (state.inboxPending > 0) loadInbox(minPosition);
}

function renderInbox() {
  const items = [...state.inbox.values()];
  $('inbox').replaceChildren(...items.map(inboxItem));
  $('inbox-empty').hidden = !state.inboxLoaded || items.length > 0;
  const total = items.reduce((sum, item) => sum + item.unread, 0);
  $('unread-total').textContent = String(total);
  $('unread-total').dataset.count = String(total);
  $('unread-total').hidden = total === 0;
}

function inboxItem(item) {
  const me = state.session && state.session.user_id;
  const li = el('li');
  li.dataset.conversationId = item.conversation_id;
  li.dataset.unread = String(item.unread);
  if (item.unread > 0) li.classList.add('unread');
  const link = el('a', 'title');
  link.href = `#/conversations/${item.conversation_id}`;
  conversationNameInto(link, item);
  const badge = el('span', 'badge unread-count', String(item.unread));
  badge.hidden = item.unread === 0;
  const preview = el('p', 'last-message');
  const last = item.last_message;
  if (last) {
    const sender = el('span');
    if (last.sender_id === me) sender.textContent = 'You';
    else authorInto(sender, last.sender_id);
    preview.append(sender, `: ${last.body}`, el('span', 'muted', ` · ${when(last.sent_at)}`));
  } else {
    preview.textContent = 'No messages yet.';
  }
  li.append(link, badge, preview);
  return li;
}

/** The conversation's title, or the names of the others in it, each with its presence. */
function conversationNameInto(node, item) {
  node.replaceChildren();
  if (item.title) {
    node.textContent = item.title;
    return;
  }
  const me = state.session && state.session.user_id;
  const others = item.members.filter((id) => id !== me);
  if (others.length === 0) {
    node.textContent = 'Just you';
    return;
  }
  others.forEach((id, index) => {
    if (index > 0) node.append(', ');
    const name = el('span', 'member');
    authorInto(name, id);
    node.append(name, presenceDot(id));
  });
}

function showInbox() {
  show('inbox-view');
  renderInbox();
}

/** Moves a conversation to the top of the inbox (newest activity first). */
function bumpConversation(item) {
  state.inbox.delete(item.conversation_id);
  state.inbox = new Map([[item.conversation_id, item], ...state.inbox]);
}

/** SSE `message`: into the open conversation, or counted unread in the inbox. */
function messageArrived(message) {
  if (!state.session) return;
  const me = state.session.user_id;
  const id = message.conversation_id;
  let seen = false;
  if (isOpen(id)) {
    const atNewest = scrolledToNewest();
    upsertMessage(message);
    if (atNewest || message.sender_id === me) scrollToNewest();
    seen = conversationSeen();
  }
  const item = state.inbox.get(id);
  if (!item) {
    loadInbox(); // a conversation new to this page: its read model has it by now
  } else {
    const last = item.last_message;
    const repeated = last && last.message_id === message.message_id;
    if (!last || Date.parse(message.sent_at) >= Date.parse(last.sent_at)) {
      item.last_message = {
        message_id: message.message_id,
        sender_id: message.sender_id,
        body: message.body,
        body_html: message.body_html,
        sent_at: message.sent_at,
      };
    }
    if (!repeated && !seen && message.sender_id !== me) item.unread += 1;
    bumpConversation(item);
    renderInbox();
    reloadInboxIfLoading();
  }
  if (seen) markReadIfSeen();
}

/** SSE `conversation_read` (this person read it, here or on another device). */
function conversationRead(data) {
  const item = state.inbox.get(data.conversation_id);
  if (!item || item.unread === 0) return;
  item.unread = 0;
  renderInbox();
}

// ---- conversation view -----------------------------------------------------------------

function isOpen(id) {
  return Boolean(state.conversation) && state.conversation.id === id;
}

function closeConversation() {
  state.conversation = null;
  $('conversation').dataset.conversationId = '';
}

async function openConversation(id) {
  show('conversation-view');
  if (isOpen(id)) {
    markReadIfSeen();
    return;
  }
  state.conversation = { id, nodes: new Map(), before: null, readUpTo: null };
  $('conversation').dataset.conversationId = id;
  $('conversation').replaceChildren();
  $('conversation-title').replaceChildren();
  $('older-messages').hidden = true;
  showError('conversation-error', '');
  if (!state.inbox.has(id)) await loadInbox();
  if (!isOpen(id)) return;
  const item = state.inbox.get(id);
  if (item) conversationNameInto($('conversation-title'), item);
  else $('conversation-title').textContent = 'Conversation';
  try {
    await loadMessages(id);
    if (!isOpen(id)) return;
    scrollToNewest();
    markReadIfSeen();
  } catch (error) {
    if (isOpen(id)) showError('conversation-error', error.message);
  }
}

/** A page of messages (the newest, or those before `before`) into the open conversation. */
async function loadMessages(id, before) {
  const older = before ? `&before=${encodeURIComponent(before)}` : '';
  const { data } = await api('GET', `/v1/conversations/${id}/messages?limit=30${older}`);
  if (!isOpen(id)) return;
  for (const message of data.items) upsertMessage(message);
  // Reading the newest page again (after a `reset`) keeps the way to older ones.
  if (before || !state.conversation.before) {
    state.conversation.before = data.next_cursor;
    $('older-messages').hidden = !data.next_cursor;
  }
}

/** After a `reset`: the newest page again, for messages the stream may have lost. */
async function reloadConversation() {
  const conversation = state.conversation;
  if (!conversation) return;
  try {
    const atNewest = scrolledToNewest();
    await loadMessages(conversation.id);
    if (atNewest) scrollToNewest();
    markReadIfSeen();
  } catch (error) {
    if (state.conversation === conversation) showError('conversation-error', error.message);
  }
}

/**
 * Shows a message once, in time order (newest at the bottom), whether it comes from the
 * history, the stream or one's own send. A message shown from the send's answer has no
 * rendered body yet: the stream's copy brings it.
 */
function upsertMessage(message) {
  const nodes = state.conversation.nodes;
  const shown = nodes.get(message.message_id);
  if (shown) {
    if (message.body_html && shown.classList.contains('pending')) {
      bodyInto(shown, message);
    }
    return;
  }
  const li = messageItem(message);
  nodes.set(message.message_id, li);
  const list = $('conversation');
  const at = Date.parse(message.sent_at);
  let next = null;
  for (let node = list.lastElementChild; node && Date.parse(node.dataset.sentAt) > at; node = node.previousElementSibling) {
    next = node;
  }
  list.insertBefore(li, next);
}

function messageItem(message) {
  const li = el('li');
  li.dataset.messageId = message.message_id;
  li.dataset.senderId = message.sender_id;
  li.dataset.sentAt = message.sent_at;
  const meta = el('p', 'meta');
  const sender = el('span', 'sender');
  if (message.sender_id === state.session.user_id) {
    li.classList.add('mine');
    sender.textContent = 'You';
  } else {
    authorInto(sender, message.sender_id);
  }
  meta.append(sender, ` · ${when(message.sent_at)}`);
  li.append(meta, el('div', 'message-body'));
  bodyInto(li, message);
  return li;
}

function bodyInto(li, message) {
  const body = li.querySelector('.message-body');
  const rendered = Boolean(message.body_html);
  if (rendered) body.innerHTML = message.body_html; // sanitised by the server
  else body.textContent = message.body;
  body.classList.toggle('plain', !rendered);
  li.classList.toggle('pending', !rendered);
}

function scrolledToNewest() {
  const list = $('conversation');
  return list.scrollHeight - list.scrollTop - list.clientHeight < NEWEST_SLACK_PX;
}

function scrollToNewest() {
  const list = $('conversation');
  list.scrollTop = list.scrollHeight;
}

/** Whether the person can see the open conversation's newest message right now. */
function conversationSeen() {
  return (
    Boolean(state.conversation) &&
    !$('conversation-view').hidden &&
    document.visibilityState === 'visible' &&
    scrolledToNewest()
  );
}

/** Marks the open conversation read up to its newest message, once that is on screen. */
async function markReadIfSeen() {
  const conversation = state.conversation;
  if (!conversation || !conversationSeen()) return;
  const newest = $('conversation').lastElementChild;
  if (!newest || newest.dataset.messageId === conversation.readUpTo) return;
  const item = state.inbox.get(conversation.id);
  // Only others' messages count as unread: after one's own there is nothing to mark.
  const unread = item ? item.unread > 0 : true;
  if (newest.dataset.senderId === state.session.user_id && !unread) return;
  const upTo = newest.dataset.messageId;
  conversation.readUpTo = upTo;
  try {
    const { headers } = await api('POST', `/v1/conversations/${conversation.id}/read`, {
      body: { up_to: upTo },
    });
    conversationRead({ conversation_id: conversation.id, up_to: upTo });
    reloadInboxIfLoading(headers.get('x-global-position'));
  } catch {
    // The badge stays; the next message or scroll tries again.
    if (conversation.readUpTo === upTo) conversation.readUpTo = null;
  }
}

// ---- notifications ---------------------------------------------------------------------

function forgetNotifications() {
  state.notifications = { items: [], unread: 0, loaded: false };
  state.notificationsReadUpTo = null;
  state.notificationsMarked.clear();
  renderNotifications();
}

/**
 * Reads the newest notifications again; with `minPosition`, once they reflect that write.
 * Loads run one after the other, so the last answer shown is never an older one.
 */
function loadNotifications(minPosition) {
  const load = state.notificationLoads.then(() => fetchNotifications(minPosition));
  state.notificationLoads = load;
  return load;
}

async function fetchNotifications(minPosition) {
  const session = state.session;
  if (!session) return;
  try {
    const headers = minPosition ? { 'X-Min-Position': minPosition } : {};
    const { data } = await api('GET', '/v1/notifications?limit=50', { headers });
    if (!state.session || state.session.user_id !== session.user_id) return; // signed out meanwhile
    state.notifications = { items: data.items, unread: data.unread, loaded: true };
    renderNotifications();
    showError('notifications-error', '');
    markNotificationsReadIfSeen();
  } catch (error) {
    showError('notifications-error', error.message);
  }
}

/** The list and the bell's badge, from the newest page read. */
function renderNotifications() {
  const { items, unread, loaded } = state.notifications;
  $('notifications').replaceChildren(...items.map(notificationItem));
  $('notifications-empty').hidden = !loaded || items.length > 0;
  $('notifications-unread').textContent = String(unread);
  $('notifications-unread').dataset.count = String(unread);
  $('notifications-unread').hidden = unread === 0;
}

const NOTIFICATION_VERBS = {
  follow: 'followed you',
  like: 'liked your post',
  comment: 'commented on your post',
};

/** "Ada and 2 others liked your post": a link to the post, or to who followed. */
function notificationItem(item) {
  const li = el('li');
  li.dataset.notificationId = item.id;
  li.dataset.kind = item.kind;
  if (!item.read || state.notificationsMarked.has(item.id)) li.classList.add('unread');
  const link = el('a', 'title', `${actorsText(item)} ${NOTIFICATION_VERBS[item.kind] || item.kind}`);
  if (item.post_id) link.href = `#/posts/${item.post_id}`;
  else if (item.actors.length > 0) link.href = `#/people/${item.actors[0].user_id}`;
  li.append(link, el('p', 'muted', when(item.latest_at)));
  return li;
}

/** "Ada", "Ada and Bob", "Ada and 2 others": the newest first; `count` is distinct people. */
function actorsText(item) {
  const names = item.actors.map((actor) => actor.display_name || actor.username);
  // People since erased are left out of `actors`, never out of `count`.
  if (names.length === 0) return item.count === 1 ? 'Someone' : `${item.count} people`;
  const others = item.count - 1;
  if (others === 0) return names[0];
  if (others === 1 && names.length === 2) return `${names[0]} and ${names[1]}`;
  return `${names[0]} and ${others} ${others === 1 ? 'other' : 'others'}`;
}

function showNotifications() {
  show('notifications-view');
  renderNotifications();
  loadNotifications(); // marks them read once the newest are on screen
}

/** Leaving the list: what this visit marked read shows as read next time. */
function closeNotifications() {
  state.notificationsMarked.clear();
}

function notificationsSeen() {
  return !$('notifications-view').hidden && document.visibilityState === 'visible';
}

/**
 * Marks every notification read up to the newest, once the list is on screen. Those it
 * marks stay lit while the list stays open, so one sees what was new.
 */
async function markNotificationsReadIfSeen() {
  const newest = state.notifications.items[0];
  if (!newest || newest.read || !notificationsSeen()) return;
  if (state.notificationsReadUpTo === newest.id) return;
  const session = state.session;
  const upTo = newest.id;
  state.notificationsReadUpTo = upTo;
  for (const item of state.notifications.items) {
    if (!item.read) state.notificationsMarked.add(item.id);
  }
  try {
    const { headers } = await api('POST', '/v1/notifications/read', { body: { up_to: upTo } });
    if (!state.session || state.session.user_id !== session.user_id) return;
    // Ids are log positions: the mark covers every group not newer than `upTo`. The
    // badge shows that at once; the read model confirms it a moment later.
    const notifications = state.notifications;
    for (const item of notifications.items) {
      if (Number(item.id) <= Number(upTo)) item.read = true;
    }
    notifications.unread = notifications.items.filter((item) => !item.read).length;
    renderNotifications();
    loadNotifications(headers.get('x-global-position'));
  } catch {
    // The badge stays; the next notification or visit tries again.
    if (state.notificationsReadUpTo === upTo) state.notificationsReadUpTo = null;
  }
}

// ---- email links and account recovery -------------------------------------------------

/**
 * A link of our emails: `?verify_email=` confirms the address at once, `?reset_password=`
 * asks for a new password. The token then leaves the address bar and the history, so a
 * reload or a copied address does not send it again.
 */
function followEmailLink() {
  const params = new URLSearchParams(location.search);
  const verify = params.get('verify_email');
  const reset = params.get('reset_password');
  if (!verify && !reset) return;
  history.replaceState(null, '', `${location.pathname}${location.hash}`);
  if (verify) verifyEmail(verify);
  if (reset) offerPasswordReset(reset);
}

async function verifyEmail(token) {
  try {
    await api('POST', '/v1/auth/verify-email', { body: { token }, auth: false });
    showNotice('Your email address is confirmed.');
  } catch (error) {
    showNotice(error.message, true);
  }
}

/**
 * Shows the new-password form of the sign-in view. A new password ends every session,
 * so the one this tab may hold is forgotten rather than kept for a moment.
 */
function offerPasswordReset(token) {
  state.resetToken = token;
  sessionStorage.removeItem(SESSION_KEY);
  $('reset-form').hidden = false;
}

function closePasswordReset() {
  state.resetToken = null;
  $('reset-form').reset();
  $('reset-form').hidden = true;
}

/** Reveals (or hides and empties) the login form's code field; a disabled field is not sent. */
function askForOtp(ask) {
  const input = $('login-form').elements.otp;
  $('otp-field').hidden = !ask;
  input.disabled = !ask;
  input.required = ask;
  if (ask) input.focus();
  else input.value = '';
}

// ---- routing and forms ---------------------------------------------------------------

/** Whether the address names no view but the feed. */
function isFeedRoute() {
  const hash = location.hash;
  const others = [POST_ROUTE, PROFILE_ROUTE, CONVERSATION_ROUTE, INBOX_ROUTE, NOTIFICATIONS_ROUTE];
  return !others.some((r) => r.test(hash));
}

function route() {
  if (!state.session) state.session = loadSession();
  if (!state.session) {
    closeStreams();
    show('auth-view');
    return;
  }
  ensureUserStream();
  $('nav').hidden = false;
  const hash = location.hash;
  const post = hash.match(POST_ROUTE);
  const person = hash.match(PROFILE_ROUTE);
  const conversation = hash.match(CONVERSATION_ROUTE);
  const notifications = NOTIFICATIONS_ROUTE.test(hash);
  if (!post) closePost();
  if (!conversation) closeConversation();
  if (!person) state.profileId = null;
  if (!notifications) closeNotifications();
  if (post) openPost(post[1]);
  else if (person) openProfile(person[1]);
  else if (conversation) openConversation(conversation[1]);
  else if (INBOX_ROUTE.test(hash)) showInbox();
  else if (notifications) showNotifications();
  else if (state.session.onboarded) showFeed();
  else startOnboarding();
}

function signedIn(data) {
  closeStreams();
  forgetMessaging();
  forgetNotifications();
  showError('auth-error', '');
  $('notice').hidden = true; // what a link did is told; the account's pages follow
  saveSession({
    user_id: data.user_id,
    access_token: data.access_token,
    refresh_token: data.refresh_token,
    onboarded: false,
  });
  if (location.hash && location.hash !== '#/') {
    location.hash = '#/'; // hashchange routes
  } else {
    route();
  }
}

function bindForms() {
  $('register-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submitting(event.target, async (fields) => {
      const body = { username: fields.username, email: fields.email, password: fields.password };
      if (fields.display_name) body.display_name = fields.display_name;
      try {
        const { data } = await api('POST', '/v1/auth/register', { body, auth: false });
        signedIn(data);
      } catch (error) {
        showError('auth-error', error.message);
      }
    });
  });

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    submitting(form, async (fields) => {
      try {
        const { data } = await api('POST', '/v1/auth/login', { body: fields, auth: false });
        askForOtp(false);
        signedIn(data);
      } catch (error) {
        if (error.code === 'otp_required') {
          askForOtp(true);
          showError('auth-error', 'Enter the code from your authenticator app, or a recovery code.');
          return;
        }
        if (error.code === 'invalid_otp') form.elements.otp.value = '';
        showError('auth-error', error.message);
      }
    });
  });

  $('forgot-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    submitting(form, async (fields) => {
      try {
        // Always 202: the answer does not tell whether the address has an account.
        await api('POST', '/v1/auth/password-reset', { body: { email: fields.email }, auth: false });
        form.reset();
        $('forgot-status').textContent = 'If an account has this address, a link is on its way.';
      } catch (error) {
        $('forgot-status').textContent = error.message;
      }
    });
  });

  $('reset-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submitting(event.target, async (fields) => {
      try {
        await api('POST', '/v1/auth/password-reset/confirm', {
          body: { token: state.resetToken, new_password: fields.new_password },
          auth: false,
        });
        closePasswordReset();
        showError('auth-error', '');
        showNotice('Password changed: log in with the new one.');
      } catch (error) {
        // A weak password may be tried again; a spent or expired link may not.
        if (error.code === 'invalid_token') closePasswordReset();
        showError('auth-error', error.message);
      }
    });
  });

  $('notice-dismiss').addEventListener('click', () => {
    $('notice').hidden = true;
  });

  $('onboarding-retry').addEventListener('click', () => {
    location.hash = '';
    route();
  });

  $('logout').addEventListener('click', async () => {
    const token = state.session && state.session.refresh_token;
    if (token) {
      await api('POST', '/v1/auth/logout', { body: { refresh_token: token }, auth: false }).catch(() => {});
    }
    signOut('');
  });

  $('post-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    submitting(form, async (fields) => {
      try {
        const { headers } = await api('POST', '/v1/posts', {
          body: { title: fields.title, body_markdown: fields.body_markdown },
        });
        form.reset();
        // Read our own write: the feed waits until its read model has the post.
        await loadFeed(headers.get('x-global-position'));
      } catch (error) {
        showError('feed-error', error.message);
      }
    });
  });

  // Suggestions as one types: the people search, a moment after the last key.
  let searchTimer;
  $('follow-form').elements.who.addEventListener('input', (event) => {
    clearTimeout(searchTimer);
    const q = event.target.value.trim();
    if (!q || UUID.test(q)) return;
    searchTimer = setTimeout(async () => {
      try {
        const { data } = await api('GET', `/v1/users/search?q=${encodeURIComponent(q)}&limit=8`, { auth: false });
        $('people').replaceChildren(...data.items.map((person) => {
          const option = document.createElement('option');
          option.value = person.username;
          option.label = person.display_name;
          return option;
        }));
      } catch {
        // Suggestions are a convenience: the form still takes a username or an id.
      }
    }, 200);
  });

  $('follow-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    submitting(form, async (fields) => {
      const who = fields.who.trim();
      try {
        const id = UUID.test(who)
          ? who
          : (await api('GET', `/v1/users/by-username/${encodeURIComponent(who)}`, { auth: false })).data.user_id;
        const { headers } = await api('PUT', `/v1/users/${encodeURIComponent(id)}/follow`);
        form.reset();
        $('follow-status').textContent = 'Following. Their new posts appear here live.';
        await loadFeed(headers.get('x-global-position'));
      } catch (error) {
        $('follow-status').textContent = error.message;
      }
    });
  });

  let peopleTimer;
  $('people-search-form').elements.q.addEventListener('input', (event) => {
    clearTimeout(peopleTimer);
    const q = event.target.value.trim();
    if (q) peopleTimer = setTimeout(() => searchPeople(q), 200);
  });

  $('people-search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(peopleTimer);
    submitting(event.target, (fields) => searchPeople(fields.q.trim()));
  });

  $('profile-follow').addEventListener('click', async () => {
    const id = state.profileId;
    const button = $('profile-follow');
    const follow = button.dataset.following !== 'true';
    button.disabled = true;
    try {
      const { headers } = await api(follow ? 'PUT' : 'DELETE', `/v1/users/${id}/follow`);
      if (state.profileId !== id) return;
      showFollowing(follow);
      $('profile-status').textContent = follow ? 'Following.' : 'No longer following.';
      // Following each other decides whether presence is visible: ask again.
      state.presence.delete(id);
      $('profile-heading').replaceChildren($('profile-name'), presenceDot(id));
      await loadProfile(id, headers.get('x-global-position'));
    } catch (error) {
      if (state.profileId === id) showError('profile-error', error.message);
    } finally {
      button.disabled = false;
    }
  });

  $('profile-message').addEventListener('click', async () => {
    const id = state.profileId;
    const button = $('profile-message');
    button.disabled = true;
    try {
      const { data, headers } = await api('POST', '/v1/conversations', { body: { members: [id] } });
      // Its messages are readable once the messaging read model has the conversation.
      await loadInbox(headers.get('x-global-position'));
      location.hash = `#/conversations/${data.conversation_id}`;
    } catch (error) {
      if (state.profileId === id) showError('profile-error', error.message);
    } finally {
      button.disabled = false;
    }
  });

  $('message-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    const conversation = state.conversation;
    if (!conversation) return;
    submitting(form, async (fields) => {
      try {
        const { data } = await api('POST', `/v1/conversations/${conversation.id}/messages`, {
          body: { body: fields.body },
        });
        form.reset();
        if (state.conversation !== conversation) return;
        showError('conversation-error', '');
        upsertMessage({
          message_id: data.message_id,
          sender_id: state.session.user_id,
          body: fields.body,
          body_html: null,
          sent_at: data.sent_at,
        });
        scrollToNewest();
      } catch (error) {
        showError('conversation-error', error.message);
      }
    });
  });

  // Enter sends, Shift+Enter starts a new line.
  $('message-form').elements.body.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('message-form').requestSubmit();
    }
  });

  $('older-messages').addEventListener('click', async () => {
    const conversation = state.conversation;
    if (!conversation || !conversation.before) return;
    const list = $('conversation');
    const fromBottom = list.scrollHeight - list.scrollTop;
    try {
      await loadMessages(conversation.id, conversation.before);
      list.scrollTop = list.scrollHeight - fromBottom; // keep the same messages in view
    } catch (error) {
      showError('conversation-error', error.message);
    }
  });

  $('conversation').addEventListener('scroll', () => markReadIfSeen());
  document.addEventListener('visibilitychange', () => {
    markReadIfSeen();
    markNotificationsReadIfSeen();
  });

  $('like-button').addEventListener('click', async () => {
    const id = state.postId;
    if (!id) return;
    const like = !state.liked;
    try {
      await api(like ? 'PUT' : 'DELETE', `/v1/posts/${id}/like`);
      // The count itself arrives on the post stream, aggregated by the server.
      state.liked = like;
      $('like-button').textContent = like ? '♥ Liked' : '♥ Like';
    } catch (error) {
      showError('post-error', error.message);
    }
  });

  $('comment-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    const id = state.postId;
    submitting(form, async (fields) => {
      try {
        const { data } = await api('POST', `/v1/posts/${id}/comments`, { body: { body: fields.body } });
        form.reset();
        if (state.postId === id) {
          prependComment({
            comment_id: data.comment_id,
            author_id: state.session.user_id,
            body: fields.body,
            created_at: new Date().toISOString(),
          });
        }
      } catch (error) {
        showError('post-error', error.message);
      }
    });
  });
}

bindForms();
followEmailLink();
window.addEventListener('hashchange', route);
route();
