// Hybrid Live demo page: register → onboarding over SSE → live feed → live post view.
// Vanilla JavaScript against the public API (shared/API.md). User text is only ever set
// with textContent; the one exception is a post's body_html, which the server sanitises.
'use strict';

const SESSION_KEY = 'hybridlive.session';
const VIEWS = ['auth-view', 'onboarding-spinner', 'onboarding-error', 'feed-view', 'post-view'];
const POST_ROUTE = /^#\/posts\/([0-9a-fA-F-]{36})$/;

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
  names: new Map(),
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
  $('whoami').hidden = true;
  $('logout').hidden = true;
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

/** Fills `node` with the author's name once known (ids until then). */
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
  closePost();
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
      reset: () => {
        if (state.session && state.session.onboarded) loadFeed();
      },
    },
    (status) => {
      // A page that missed the outcome event learns it here.
      if (status === 'connected') checkOnboarding();
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
  if (!POST_ROUTE.test(location.hash) && (first || $('feed-view').hidden)) showFeed();
}

function onboardingFailed(reason) {
  closeStreams();
  state.session = null;
  sessionStorage.removeItem(SESSION_KEY);
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
  const li = el('li');
  li.dataset.postId = item.post_id;
  const title = el('a', 'title', item.title);
  title.href = `#/posts/${item.post_id}`;
  const meta = el('p', 'muted');
  const author = el('span');
  authorInto(author, item.author_id);
  meta.append('by ', author, ` · ${when(item.created_at)}`);
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
    const author = el('span');
    authorInto(author, post.author_id);
    $('post-meta').append('by ', author, ` · ${when(post.created_at)}`);
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

// ---- routing and forms ---------------------------------------------------------------

function route() {
  if (!state.session) state.session = loadSession();
  if (!state.session) {
    closeStreams();
    show('auth-view');
    return;
  }
  const post = location.hash.match(POST_ROUTE);
  ensureUserStream();
  if (post) {
    openPost(post[1]);
    return;
  }
  closePost();
  if (state.session.onboarded) showFeed();
  else startOnboarding();
}

function signedIn(data) {
  closeStreams();
  showError('auth-error', '');
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
    submitting(event.target, async (fields) => {
      try {
        const { data } = await api('POST', '/v1/auth/login', { body: fields, auth: false });
        signedIn(data);
      } catch (error) {
        showError('auth-error', error.message);
      }
    });
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
window.addEventListener('hashchange', route);
route();
