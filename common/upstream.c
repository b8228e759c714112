/*
 * upstream: the worker thread, its curl multi handle, the token, and every
 * transfer to the Kaleidoscope API.
 *
 * Ownership.  A transfer (struct up_xfer) is shared by the front, which holds
 * it from upstream_start() to upstream_xfer_release(), and the worker, which
 * holds it while it is queued, waiting for a token or running in the multi
 * handle.  Each command queued for the worker holds a reference too, so a
 * transfer is freed by whichever side lets go last.
 *
 * Sinks.  The worker hands each answer to the transfer's sink (x->sink):
 * the caller's own, the ring a front reads (ring_*), or a tee of both
 * (tee_*).  Everything above the sinks is transport: the request, the
 * token, Via, the 401 replay, pausing curl when a sink asks to wait.
 *
 * Locking.  u->qlock guards the command queue; x->lock guards the fields the
 * two sides share (the ring, state, pause and park flags).  curl is touched
 * on the worker only, and never while holding x->lock, since
 * curl_easy_pause() may call the write callback, which takes it.  Sinks are
 * called with no lock held; the ring takes x->lock itself.
 */
#include "upstream.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "auth.h"
#include "check.h"
#include "clock.h"
#include "config.h"
#include "hdr.h"
#include "kdbuild.h"
#include "log.h"
#include "membuf.h"
#include "secret.h"
#include "throttle.h"

#define RING_CAP (256 * 1024) /* per direction, per transfer */
#define TOKEN_BODY_MAX (64 * 1024)
#define REAUTH_GAP 30.0 /* s an endpoint that refused a fresh token is remembered */
#define REFUSERS 16
/* A replay that fails with a fresh token is ambiguous: the endpoint
 * refuses, or that token was revoked too (two revocations close together).
 * One more replay with yet another token tells them apart. */
#define MAX_REPLAYS 2 /* endpoints remembered for refusing a fresh token */

struct ring {
	char *buf;
	size_t head, len;
};

enum phase { PH_NEW = 0, PH_WAITING, PH_QUEUED, PH_RUNNING, PH_DONE };

struct up_xfer {
	unsigned magic;
#define UP_XFER_MAGIC 0x2c81f04bu
	pthread_mutex_t lock;
	int refs;
	struct upstream *u;
	struct up_hooks hooks;
	struct up_sink sink; /* where the worker delivers: the caller's, the ring, or a tee */
	struct up_sink user; /* the caller's sink; none when only the ring */

	/* The request, owned copies; read-only after upstream_start(). */
	char *method;
	char *url;
	struct curl_slist *fwd_headers; /* client fields, Expect suppressed */
	enum up_body_mode body_mode;
	char *body;
	size_t body_size;
	long long body_len;
	int accept_identity;

	/* Worker-only. */
	int ended; /* the sink's end() ran */
	CURL *easy;
	struct curl_slist *sent_headers;
	enum phase phase;
	int replayed;        /* replays after a 401 so far (MAX_REPLAYS at most) */
	int retried;         /* sent again after its connection failed (once at most) */
	int discard;         /* a 401 to be replayed: drop what comes */
	unsigned token_gen;  /* the token this attempt carries */
	unsigned failed_gen; /* replayed: the token its last attempt failed with */
	size_t body_off;
	double started, last_progress;
	double queued_at; /* PH_QUEUED: since when it waits for a connection */
	int scope;        /* rate-limit scope: the request's family, or -1 */
	int cleared;      /* the 429 windows let it go (checked once) */
	int cl_framed, chunk_framed, decoded;
	struct hdr *building;
	char errbuf[CURL_ERROR_SIZE];
	struct up_xfer *wnext; /* worker's lists: waiting or running */

	/* Shared, under lock (written by the worker alone, so it reads them
	 * without). */
	long status;
	struct hdr *headers;
	long long length;
	int answered; /* status, headers and length are final; the sink has them */
	int finished; /* the sink's end() was called */
	struct ring up;
	int up_end; /* the front wrote the last body byte */
	int parked;
	int paused_recv, paused_send, unpause_queued;
	atomic_uint resumes; /* upstream_xfer_resume() calls; written under lock */
	int released;
	int worker_ref; /* the worker still holds its reference */

	/* The ring sink, under lock: what the front reads. */
	enum up_state state;
	enum up_error err;
	char detail[512];
	struct ring down;
	int down_eof, down_broken;
	int down_waits; /* the ring asked to wait: resume once it drained to half */
	int tee;        /* a tee whose other sink still takes data: hold the last byte */
};

enum cmd_kind { CMD_START, CMD_UNPAUSE, CMD_RELEASE };

struct cmd {
	enum cmd_kind kind;
	struct up_xfer *x;
};

struct upstream {
	const struct config *cfg;
	char *url;
	char *client_id;
	char via_name[32];    /* "kaleidod-" 16 hex digits */
	char via_line[48];    /* "Via: 1.1 " via_name */
	atomic_llong loop_at; /* wall time a request last came back, 0 never */
	CURLM *multi;
	pthread_t thread;
	int thread_started;
	struct auth *auth;
	struct up_events events;

	pthread_mutex_t qlock;
	struct cmd *q;
	size_t qlen, qcap;
	struct cmd *spare; /* worker-only: the other half of the queue */
	size_t spare_cap;
	int stopping; /* under qlock */
	int dead;     /* worker exited; under qlock */

	/* Worker-only. */
	struct up_xfer *waiting; /* transfers waiting for a token */
	struct up_xfer *running; /* transfers in the multi handle */
	unsigned nrunning;
	/* Transfers waiting for one of the max_concurrent slots, oldest first. */
	struct up_xfer *queued, **queued_tail;
	unsigned nqueued;
	struct throttle *thr; /* the API's 429 windows */
	CURL *tok_easy;
	char *tok_form;
	int brk_asked;  /* the broker was asked and has not answered (worker) */
	int brk_went;   /* the broker said "ask the API": got() is owed (worker) */
	int brk_ready;  /* under qlock: the answer is in */
	char *brk_body; /* under qlock: that answer's body, NULL: ask the API */
	struct membuf tok_body;
	int tok_overflow;
	char tok_err[CURL_ERROR_SIZE];
	int force_auth;
	/* Endpoints that refused a token minted after their own 401 (see
	 * may_reauth()). */
	struct refuser {
		char *what; /* "METHOD URL" without the query, malloc'd */
		double at;
		int unproven; /* a streamed 401 only: no replay proved it */
	} refusers[REFUSERS];
	int draining; /* stopping: queued starts fail */
	unsigned logged_gen;
	char *logged_token; /* the token registered with the log */

	pthread_mutex_t clock; /* counters */
	struct histo *dur;     /* exchanges' durations (lock-free) */
	struct upstream_counters counters;
};

/* ---- time ---- */

/* ---- ring buffers ---- */

static int ring_alloc(struct ring *r)
{
	if (r->buf == NULL && (r->buf = malloc(RING_CAP)) == NULL)
		return -1;
	return 0;
}

static size_t ring_free(const struct ring *r)
{
	return RING_CAP - r->len;
}

static size_t ring_put(struct ring *r, const char *data, size_t len)
{
	size_t n = len < ring_free(r) ? len : ring_free(r);
	size_t tail = (r->head + r->len) % RING_CAP;
	size_t first = RING_CAP - tail < n ? RING_CAP - tail : n;

	memcpy(r->buf + tail, data, first);
	memcpy(r->buf, data + first, n - first);
	r->len += n;
	return n;
}

static size_t ring_get(struct ring *r, char *out, size_t max)
{
	size_t n = max < r->len ? max : r->len;
	size_t first = RING_CAP - r->head < n ? RING_CAP - r->head : n;

	memcpy(out, r->buf + r->head, first);
	memcpy(out + first, r->buf, n - first);
	r->head = (r->head + n) % RING_CAP;
	r->len -= n;
	if (r->len == 0)
		r->head = 0;
	return n;
}

/* Appends to a curl header list, keeping the list on failure (curl's own
 * append returns NULL and the caller would lose it).  0 or -1. */
static int slist_add(struct curl_slist **list, const char *line)
{
	struct curl_slist *n = curl_slist_append(*list, line);

	if (n == NULL)
		return -1;
	*list = n;
	return 0;
}

/* ---- references and the command queue ---- */

static void xfer_free(struct up_xfer *x)
{
	CHECK_OBJ(x, UP_XFER_MAGIC);
	if (x->easy != NULL)
		curl_easy_cleanup(x->easy);
	curl_slist_free_all(x->fwd_headers);
	curl_slist_free_all(x->sent_headers);
	if (x->user.free != NULL)
		x->user.free(x->user.arg);
	hdr_free(&x->building);
	hdr_free(&x->headers);
	free(x->method);
	free(x->url);
	free(x->body);
	free(x->down.buf);
	free(x->up.buf);
	pthread_mutex_destroy(&x->lock);
	FINI_OBJ(x);
	free(x);
}

static void xfer_unref(struct up_xfer *x)
{
	int left;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	left = --x->refs;
	pthread_mutex_unlock(&x->lock);
	ASSERT(left >= 0);
	if (left == 0)
		xfer_free(x);
}

/*
 * Queues a command for the worker, taking a reference for it.  Returns -1
 * when the worker is gone, in which case nothing was queued.
 */
static int cmd_push(struct upstream *u, enum cmd_kind kind, struct up_xfer *x)
{
	int rc = -1;

	pthread_mutex_lock(&u->qlock);
	if (u->dead)
		goto out;
	if (u->qlen == u->qcap) {
		size_t ncap = u->qcap ? u->qcap * 2 : 64;
		struct cmd *nq = realloc(u->q, ncap * sizeof(*nq));

		if (nq == NULL)
			goto out;
		u->q = nq;
		u->qcap = ncap;
	}
	pthread_mutex_lock(&x->lock);
	x->refs++;
	pthread_mutex_unlock(&x->lock);
	u->q[u->qlen].kind = kind;
	u->q[u->qlen].x = x;
	u->qlen++;
	rc = 0;
out:
	pthread_mutex_unlock(&u->qlock);
	if (rc == 0)
		curl_multi_wakeup(u->multi);
	return rc;
}

/* Called with x->lock held: asks the worker to resume a paused transfer. */
static void want_unpause_locked(struct up_xfer *x, int *queue)
{
	if ((x->paused_recv || x->paused_send) && !x->unpause_queued) {
		x->unpause_queued = 1;
		*queue = 1;
	}
}

/* Sends the unpause that want_unpause_locked() asked for; if it cannot be
 * queued (no memory, or the worker is gone) the flag is cleared so a later
 * read asks again instead of waiting forever. */
static void request_unpause(struct up_xfer *x)
{
	if (cmd_push(x->u, CMD_UNPAUSE, x) < 0) {
		pthread_mutex_lock(&x->lock);
		x->unpause_queued = 0;
		pthread_mutex_unlock(&x->lock);
	}
}

/* Called with x->lock held: clears the park flag; the caller unparks unlocked. */
static int take_park_locked(struct up_xfer *x)
{
	int was = x->parked;

	x->parked = 0;
	return was;
}

static void xfer_unpark(struct up_xfer *x, int do_it)
{
	if (do_it && x->hooks.unpark != NULL)
		x->hooks.unpark(x->hooks.arg);
}

/* Resumes a front parked on this transfer, for whatever reason: the
 * answer's headers or its end frees a writer parked on the upload ring as
 * much as a reader (nobody reads the rest of an upload then). */
static void wake_front(struct up_xfer *x)
{
	int wake;

	pthread_mutex_lock(&x->lock);
	wake = take_park_locked(x);
	pthread_mutex_unlock(&x->lock);
	xfer_unpark(x, wake);
}

/* ---- the ring: the sink a front reads (worker side) ---- */

static void ring_headers(void *arg, long status, const struct hdr *h, long long length)
{
	struct up_xfer *x = arg;

	(void)status, (void)h, (void)length; /* the transfer's own: the reader reads them there */
	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	ASSERT(x->state == UP_PENDING);
	x->state = UP_HEADERS;
	pthread_mutex_unlock(&x->lock);
}

static enum up_take ring_data(void *arg, const char *data, size_t len)
{
	struct up_xfer *x = arg;
	enum up_take t = UP_TAKEN;
	int wake;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	ASSERT(x->state == UP_HEADERS);
	if (x->released || ring_alloc(&x->down) < 0) {
		pthread_mutex_unlock(&x->lock);
		return UP_STOP; /* nobody reads it any more, or no memory */
	}
	if (ring_free(&x->down) < len) {
		x->down_waits = 1;
		pthread_mutex_unlock(&x->lock);
		return UP_FULL;
	}
	ring_put(&x->down, data, len);
	/* Stop reading from the API before the ring overflows: a wait asked
	 * for here keeps the next chunk in the socket, whereas UP_FULL makes
	 * curl copy it aside (a malloc per pause). */
	if (ring_free(&x->down) < CURL_MAX_WRITE_SIZE) {
		x->down_waits = 1;
		t = UP_TAKEN_WAIT;
	}
	wake = take_park_locked(x);
	pthread_mutex_unlock(&x->lock);
	xfer_unpark(x, wake);
	return t;
}

static void ring_end(void *arg, enum up_error err, const char *detail, int framed)
{
	struct up_xfer *x = arg;

	(void)framed; /* the reader relays what came, framed or not */
	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	if (x->state == UP_PENDING) {
		ASSERT(err != UP_ERR_NONE);
		x->state = UP_FAILED;
		x->err = err;
		snprintf(x->detail, sizeof(x->detail), "%s", detail);
	} else if (err != UP_ERR_NONE) {
		x->down_broken = 1;
	} else {
		x->down_eof = 1;
	}
	pthread_mutex_unlock(&x->lock);
}

/* ---- the tee: the ring and the caller's sink (worker side) ---- */

static void tee_headers(void *arg, long status, const struct hdr *h, long long length)
{
	struct up_xfer *x = arg;

	ring_headers(x, status, h, length);
	x->user.headers(x->user.arg, status, h, length);
}

/* The ring decides the pace; the other sink takes what the ring took, or
 * drops out, and then the ring no longer holds its last byte back. */
static enum up_take tee_data(void *arg, const char *data, size_t len)
{
	struct up_xfer *x = arg;
	enum up_take t = ring_data(x, data, len), other;

	if (t == UP_FULL || t == UP_STOP || !x->tee)
		return t;
	other = x->user.data(x->user.arg, data, len);
	ASSERT(other == UP_TAKEN || other == UP_STOP);
	if (other == UP_STOP) {
		pthread_mutex_lock(&x->lock);
		x->tee = 0;
		pthread_mutex_unlock(&x->lock);
		wake_front(x); /* it may wait for the byte held back */
	}
	return t;
}

/* The other sink's end() returns before the ring shows the end: a client
 * has the last byte only once that sink is done with the answer. */
static void tee_end(void *arg, enum up_error err, const char *detail, int framed)
{
	struct up_xfer *x = arg;

	x->user.end(x->user.arg, err, detail, framed);
	ring_end(x, err, detail, framed);
}

/* ---- delivering to the sink (worker side) ---- */

/* The end, exactly once: the sink's end(), then a parked front learns it. */
static void deliver_end(struct up_xfer *x, enum up_error err, const char *detail, int framed)
{
	ASSERT(!x->ended);
	ASSERT(err != UP_ERR_NONE || x->answered);
	x->ended = 1;
	pthread_mutex_lock(&x->lock);
	x->finished = 1;
	pthread_mutex_unlock(&x->lock);
	x->sink.end(x->sink.arg, err, detail != NULL ? detail : "", framed);
	wake_front(x);
}

/* ---- curl callbacks (worker thread) ---- */

/*
 * Whether a 401 means the token died (revoked, or expired early), so a new
 * one and a replay will help, or the endpoint refuses this request whatever
 * the token (a permission problem), when throwing away the token every
 * client shares would only churn it.  A request that fails again and again
 * with tokens minted after its earlier failures (MAX_REPLAYS replays) shows
 * the endpoint's doing: that endpoint is remembered for REAUTH_GAP, and its
 * 401s pass through meanwhile.  Any other 401 is taken for a revocation: a
 * new token and a replay.  So revocations never reach clients (but for a
 * streamed body, which cannot be sent twice), and an endpoint that always
 * answers 401 costs MAX_REPLAYS new tokens per REAUTH_GAP.  (Success
 * elsewhere proves nothing: requests launched just before a revocation
 * still succeed after it.)
 */
/* Whether x's endpoint is x's method and URL, query aside. */
static int same_endpoint(const struct up_xfer *x, const char *what)
{
	size_t mlen = strlen(x->method), ulen = strcspn(x->url, "?");

	return strncmp(what, x->method, mlen) == 0 && what[mlen] == ' ' &&
	       strncmp(what + mlen + 1, x->url, ulen) == 0 && what[mlen + 1 + ulen] == '\0';
}

/* The slot remembering x's endpoint, or NULL. */
static struct refuser *refuser_of(struct upstream *u, const struct up_xfer *x)
{
	for (int i = 0; i < REFUSERS; i++)
		if (u->refusers[i].what != NULL && same_endpoint(x, u->refusers[i].what))
			return &u->refusers[i];
	return NULL;
}

/* Remembers that x's endpoint refused a token minted after its 401, or
 * (unproven) that a streamed request there cost a new token: the oldest
 * memory makes room; without memory, nothing is remembered. */
static void note_refuser(struct upstream *u, const struct up_xfer *x, double now, int unproven)
{
	struct refuser *r = refuser_of(u, x);

	if (r == NULL) {
		r = &u->refusers[0];
		for (int i = 1; i < REFUSERS; i++)
			if (u->refusers[i].at < r->at)
				r = &u->refusers[i];
		free(r->what);
		r->what = NULL;
		size_t n = strlen(x->method) + 1 + strcspn(x->url, "?") + 1;

		if ((r->what = malloc(n)) == NULL)
			return;
		snprintf(r->what, n, "%s %.*s", x->method, (int)strcspn(x->url, "?"), x->url);
		r->unproven = unproven;
	}
	r->unproven &= unproven;
	r->at = now;
}

static int may_reauth(struct upstream *u, struct up_xfer *x, double now)
{
	struct refuser *r;
	unsigned gen;

	if (auth_token(u->auth, now, &gen) == NULL || gen != x->token_gen)
		return 1; /* a newer token exists already: replaying is cheap */
	/* A streamed 401 proves nothing alone (no replay), but holds off the
	 * next streamed one at that endpoint: uploads cannot churn the token. */
	if ((r = refuser_of(u, x)) != NULL && now - r->at < REAUTH_GAP &&
	    (!r->unproven || x->body_mode == UP_BODY_STREAM))
		return 0;
	return 1;
}

/* A 401 to a replay with a token minted after the first attempt's: the
 * endpoint's doing. */
static void note_token_verdict(struct upstream *u, struct up_xfer *x, long status, double now)
{
	if (status == 401 && x->replayed == MAX_REPLAYS && x->token_gen != x->failed_gen)
		note_refuser(u, x, now, 0);
}

/* The API asks for a pause: its scope closes for as long as it says. */
static void note_429(struct upstream *u, struct up_xfer *x)
{
	double secs = throttle_retry_after(hdr_get(x->building, "Retry-After"), time(NULL));

	throttle_note(u->thr, x->scope, x->last_progress, secs);
	pthread_mutex_lock(&u->clock);
	u->counters.throttled++;
	pthread_mutex_unlock(&u->clock);
	log_warn("the API answered 429 to %s %s: %s paused for %.0f s", x->method, x->url,
		 x->scope >= 0 ? "its family" : "everything", secs);
}

static size_t on_header(char *line, size_t size, size_t nitems, void *arg)
{
	struct up_xfer *x = arg;
	size_t len = size * nitems;
	long status = 0;

	x->last_progress = clock_mono();
	if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
		/* A new status line: a 1xx before it, or a replay, is forgotten. */
		hdr_clear(x->building);
		x->cl_framed = x->chunk_framed = 0;
		return len;
	}
	if (len > 2 || (len >= 1 && line[0] != '\r' && line[0] != '\n')) {
		if (hdr_add_line(x->building, line, len) < 0)
			return len; /* tolerate what we cannot parse: it is dropped */
		return len;
	}
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200)
		return len;
	/* A chunked body's trailer fields end with a blank line too: the
	 * sink has its headers already, and they stay as they were. */
	if (x->answered)
		return len;
	note_token_verdict(x->u, x, status, x->last_progress);
	if (status == 401 && x->replayed < MAX_REPLAYS && may_reauth(x->u, x, x->last_progress)) {
		if (x->body_mode != UP_BODY_STREAM) {
			x->discard = 1;
			return len;
		}
		/* A streamed body cannot be sent twice: this client sees the
		 * 401, but the dead token goes, so the next requests do not. */
		struct upstream *u = x->u;
		unsigned gen;

		if (auth_token(u->auth, x->last_progress, &gen) != NULL && gen == x->token_gen) {
			auth_invalidate(u->auth, x->token_gen);
			u->force_auth = 1;
			note_refuser(u, x, x->last_progress, 1);
		}
	}
	if (status == 429)
		note_429(x->u, x);
	{
		const char *cl = hdr_get(x->building, "Content-Length");
		const char *te = hdr_get(x->building, "Transfer-Encoding");
		const char *ce = hdr_get(x->building, "Content-Encoding");

		x->chunk_framed = te != NULL && strcasestr(te, "chunked") != NULL;
		/* Chunked framing wins over a Content-Length sent with it (RFC
		 * 9112 6.3); a length that is not all digits is no length. */
		x->cl_framed = !x->chunk_framed && cl != NULL && cl[0] != '\0' &&
			       strspn(cl, "0123456789") == strlen(cl);
		x->decoded = x->accept_identity && ce != NULL && strcasecmp(ce, "identity") != 0;
		pthread_mutex_lock(&x->lock);
		x->status = status;
		hdr_free(&x->headers);
		x->headers = x->building;
		x->building = hdr_new();
		x->length = (x->cl_framed && !x->decoded) ? strtoll(cl, NULL, 10) : -1;
		if (x->decoded || !x->cl_framed)
			hdr_remove(x->headers, "Content-Length");
		if (x->decoded)
			hdr_remove(x->headers, "Content-Encoding");
		x->answered = 1;
		pthread_mutex_unlock(&x->lock);
		x->sink.headers(x->sink.arg, status, x->headers, x->length);
		wake_front(x);
	}
	return x->building != NULL ? len : 0;
}

/*
 * A piece of the body, to the sink.  A sink that asks to wait gets curl
 * paused; a resume that came while it was deciding (resumes moved on) is
 * not lost: the chunk is offered again, or curl is left running.
 */
static size_t on_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct up_xfer *x = arg;
	size_t len = size * nmemb;
	enum up_take t;
	unsigned seen;
	int mask = 0;

	x->last_progress = clock_mono();
	/* A replayed 401's body, or a body without a status line before it
	 * (the end then says the answer was not HTTP): nobody gets it. */
	if (x->discard || !x->answered || len == 0)
		return len;
	for (;;) {
		seen = atomic_load(&x->resumes);
		t = x->sink.data(x->sink.arg, data, len);
		if (t == UP_TAKEN)
			return len;
		if (t == UP_STOP)
			return 0; /* aborts the transfer */
		ASSERT(t == UP_FULL || t == UP_TAKEN_WAIT);
		pthread_mutex_lock(&x->lock);
		if (atomic_load(&x->resumes) != seen) {
			pthread_mutex_unlock(&x->lock);
			if (t == UP_FULL)
				continue;
			return len;
		}
		if (t == UP_FULL) {
			x->paused_recv = 1;
			pthread_mutex_unlock(&x->lock);
			return CURL_WRITEFUNC_PAUSE;
		}
		if (!x->paused_recv) {
			x->paused_recv = 1;
			mask = CURLPAUSE_RECV | (x->paused_send ? CURLPAUSE_SEND : 0);
		}
		pthread_mutex_unlock(&x->lock);
		if (mask)
			curl_easy_pause(x->easy, mask);
		return len;
	}
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct up_xfer *x = arg;
	size_t max = size * nitems, n;
	int wake = 0;

	x->last_progress = clock_mono();
	if (x->body_mode == UP_BODY_BUFFERED) {
		n = x->body_size - x->body_off < max ? x->body_size - x->body_off : max;
		if (n > 0)
			memcpy(buf, x->body + x->body_off, n);
		x->body_off += n;
		return n;
	}
	pthread_mutex_lock(&x->lock);
	if (x->up.len == 0) {
		if (x->up_end) {
			pthread_mutex_unlock(&x->lock);
			return 0;
		}
		x->paused_send = 1;
		wake = take_park_locked(x);
		pthread_mutex_unlock(&x->lock);
		xfer_unpark(x, wake);
		return CURL_READFUNC_PAUSE;
	}
	n = ring_get(&x->up, buf, max);
	wake = take_park_locked(x);
	pthread_mutex_unlock(&x->lock);
	xfer_unpark(x, wake);
	return n;
}

/* libcurl's debug callback: header blocks come whole, so split them. */
static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *arg)
{
	struct upstream *u = arg;
	char dir = type == CURLINFO_HEADER_OUT ? '>' : type == CURLINFO_HEADER_IN ? '<' : '*';
	const char *p = data, *end = data + size;

	if (type != CURLINFO_TEXT && type != CURLINFO_HEADER_IN && type != CURLINFO_HEADER_OUT)
		return 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *stop = nl ? nl : end;
		size_t len = (size_t)(stop - p);

		if (len > 0 && p[len - 1] == '\r')
			len--;
		if (len > 0)
			u->events.trace(u->events.arg, dir, p, len);
		p = stop + 1;
	}
	return 0;
}

static void set_trace(struct upstream *u, CURL *e)
{
	if (u->events.trace == NULL)
		return;
	curl_easy_setopt(e, CURLOPT_DEBUGFUNCTION, on_debug);
	curl_easy_setopt(e, CURLOPT_DEBUGDATA, u);
	curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
}

/* ---- token requests ---- */

static size_t on_token_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct upstream *u = arg;
	size_t len = size * nmemb;

	if (u->tok_body.len + len > TOKEN_BODY_MAX) {
		u->tok_overflow = 1;
		return len;
	}
	return membuf_append(&u->tok_body, data, len) == 0 ? len : 0;
}

static void forget_token(struct upstream *u)
{
	if (u->logged_token == NULL)
		return;
	log_forget_secret(u->logged_token);
	secret_free(&u->logged_token);
}

static void report_auth(struct upstream *u, double now)
{
	struct auth_status st;
	unsigned gen;
	const char *tok = auth_token(u->auth, now, &gen);

	/* A new token becomes a secret the log must never print; the one it
	 * replaces is dropped, so rotation never pushes the client secret out
	 * of the log's bounded list. */
	if (tok != NULL && gen != u->logged_gen) {
		log_add_secret(tok);
		forget_token(u);
		u->logged_token = strdup(tok);
		u->logged_gen = gen;
	}
	if (u->events.auth_changed == NULL)
		return;
	auth_status(u->auth, &st);
	u->events.auth_changed(u->events.arg, &st, auth_next_due(u->auth, now));
}

/* The broker's answer, once it is in: a token taken (1), or the form
 * goes to the API after all (0); -1 while there is none. */
static int broker_answered(struct upstream *u, double now)
{
	char *body;
	int ready;

	pthread_mutex_lock(&u->qlock);
	ready = u->brk_ready;
	body = u->brk_body;
	u->brk_ready = 0;
	u->brk_body = NULL;
	pthread_mutex_unlock(&u->qlock);
	if (!ready)
		return -1;
	u->brk_asked = 0;
	if (body == NULL) {
		u->brk_went = 1;
		return 0;
	}
	if (auth_finish(u->auth, now, 200, body, strlen(body), NULL) == 0)
		u->force_auth = 0; /* a 401 while it was asked is answered by this token */
	secret_free(&body);
	secret_free(&u->tok_form);
	report_auth(u, now);
	return 1;
}

/* After the API was asked on the broker's word: what came of it, for the
 * others (they may be waiting): the token just got, or none. */
static void broker_got(struct upstream *u, int fresh)
{
	struct auth_status st;

	if (!u->brk_went)
		return;
	u->brk_went = 0;
	auth_status(u->auth, &st);
	u->events.broker.got(u->events.broker.arg, fresh ? u->logged_token : NULL, st.expires_at);
}

void upstream_broker_answer(struct upstream *u, const char *body)
{
	char *copy = body != NULL ? strdup(body) : NULL;

	pthread_mutex_lock(&u->qlock);
	secret_free(&u->brk_body);
	u->brk_body = copy; /* NULL on ENOMEM too: then the API is asked */
	u->brk_ready = 1;
	pthread_mutex_unlock(&u->qlock);
	curl_multi_wakeup(u->multi);
}

static void token_start(struct upstream *u, double now)
{
	char *form = NULL;
	char url[2048];
	struct curl_slist *h = NULL;

	if (u->brk_asked) {
		if (broker_answered(u, now) != 0)
			return;
		form = u->tok_form; /* kept while the broker was asked */
		u->tok_form = NULL;
	} else {
		if (!auth_begin(u->auth, now, u->force_auth, &form))
			return;
		u->force_auth = 0;
		if (u->events.broker.ask != NULL) {
			/* Another instance may hold a token, or be getting one. */
			u->tok_form = form;
			u->brk_asked = 1;
			u->events.broker.ask(u->events.broker.arg, u, u->logged_token);
			return;
		}
	}
	snprintf(url, sizeof(url), "%s%s", u->url, UPSTREAM_TOKEN_PATH);
	u->tok_easy = curl_easy_init();
	if (u->tok_easy == NULL) {
		auth_finish(u->auth, now, 0, NULL, 0, "out of memory");
		secret_free(&form);
		broker_got(u, 0);
		return;
	}
	u->tok_form = form;
	u->tok_overflow = 0;
	u->tok_body.secret = 1;
	u->tok_err[0] = '\0';
	h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	h = curl_slist_append(h, u->via_line);
	curl_easy_setopt(u->tok_easy, CURLOPT_URL, url);
	curl_easy_setopt(u->tok_easy, CURLOPT_POSTFIELDS, form);
	curl_easy_setopt(u->tok_easy, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(u->tok_easy, CURLOPT_PRIVATE, h);
	curl_easy_setopt(u->tok_easy, CURLOPT_WRITEFUNCTION, on_token_write);
	curl_easy_setopt(u->tok_easy, CURLOPT_WRITEDATA, u);
	curl_easy_setopt(u->tok_easy, CURLOPT_ERRORBUFFER, u->tok_err);
	curl_easy_setopt(u->tok_easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(u->tok_easy, CURLOPT_CONNECTTIMEOUT, (long)u->cfg->connect_timeout);
	curl_easy_setopt(u->tok_easy, CURLOPT_TIMEOUT, (long)u->cfg->timeout);
	curl_easy_setopt(u->tok_easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(u->tok_easy, CURLOPT_USERAGENT, "kaleidod/" PACKAGE_VERSION);
	set_trace(u, u->tok_easy);
	curl_multi_add_handle(u->multi, u->tok_easy);
}

static void token_done(struct upstream *u, CURLcode rc, double now)
{
	unsigned gen0 = u->logged_gen;
	long status = 0;
	char why[CURL_ERROR_SIZE + 64];
	struct curl_slist *h = NULL;

	curl_easy_getinfo(u->tok_easy, CURLINFO_PRIVATE, (char **)&h);
	curl_easy_getinfo(u->tok_easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(u->multi, u->tok_easy);
	curl_easy_cleanup(u->tok_easy);
	curl_slist_free_all(h);
	u->tok_easy = NULL;
	secret_free(&u->tok_form);
	if (rc != CURLE_OK) {
		snprintf(why, sizeof(why), "%s: %s", curl_easy_strerror(rc),
			 u->tok_err[0] ? u->tok_err : "no detail");
		auth_finish(u->auth, now, 0, NULL, 0, why);
	} else if (u->tok_overflow) {
		auth_finish(u->auth, now, 0, NULL, 0, "token answer larger than 64 KiB");
	} else {
		auth_finish(u->auth, now, status, u->tok_body.data, u->tok_body.len, NULL);
	}
	membuf_free(&u->tok_body, 1); /* it held a token */
	if (auth_token(u->auth, now, NULL) != NULL)
		u->force_auth = 0;
	report_auth(u, now);
	broker_got(u, u->logged_gen != gen0);
}

/* ---- transfers (worker thread) ---- */

static void list_remove(struct up_xfer **head, struct up_xfer *x)
{
	for (struct up_xfer **p = head; *p != NULL; p = &(*p)->wnext) {
		if (*p == x) {
			*p = x->wnext;
			x->wnext = NULL;
			return;
		}
	}
}

/* The counters' view of the slots and the queue.  Worker only. */
static void note_load(struct upstream *u)
{
	pthread_mutex_lock(&u->clock);
	u->counters.running = u->nrunning;
	u->counters.queued = u->nqueued;
	pthread_mutex_unlock(&u->clock);
}

/* x leaves the multi handle (and its slot). */
static void running_remove(struct upstream *u, struct up_xfer *x)
{
	curl_multi_remove_handle(u->multi, x->easy);
	list_remove(&u->running, x);
	ASSERT(u->nrunning > 0);
	u->nrunning--;
	note_load(u);
}

static void queue_remove(struct upstream *u, struct up_xfer *x)
{
	struct up_xfer **p = &u->queued, *prev = NULL;

	while (*p != NULL && *p != x) {
		prev = *p;
		p = &(*p)->wnext;
	}
	ASSERT(*p == x);
	*p = x->wnext;
	if (u->queued_tail == &x->wnext)
		u->queued_tail = prev != NULL ? &prev->wnext : &u->queued;
	x->wnext = NULL;
	u->nqueued--;
	note_load(u);
}

/* Drops the worker's reference; the transfer is no longer the worker's.
 * One given up before its end (the caller let go) still ends for its sink. */
static void xfer_retire(struct upstream *u, struct up_xfer *x)
{
	if (!x->ended)
		deliver_end(x, UP_ERR_INTERNAL, "the transfer was given up before its end", 0);
	if (x->phase == PH_RUNNING)
		running_remove(u, x);
	else if (x->phase == PH_WAITING)
		list_remove(&u->waiting, x);
	else if (x->phase == PH_QUEUED)
		queue_remove(u, x);
	x->phase = PH_DONE;
	pthread_mutex_lock(&u->clock);
	u->counters.active--;
	pthread_mutex_unlock(&u->clock);
	pthread_mutex_lock(&x->lock);
	x->worker_ref = 0;
	pthread_mutex_unlock(&x->lock);
	xfer_unref(x);
}

/* Ends a transfer that never got its headers, or breaks one that did. */
static void xfer_fail(struct upstream *u, struct up_xfer *x, enum up_error e, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void xfer_fail(struct upstream *u, struct up_xfer *x, enum up_error e, const char *fmt, ...)
{
	va_list ap;
	char detail[512];

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	/* Counted before the end reaches the client, so that a client
	 * that reads the counters after its answer finds this failure. */
	pthread_mutex_lock(&u->clock);
	u->counters.failed++;
	u->counters.errors[e]++;
	pthread_mutex_unlock(&u->clock);
	if (!x->ended)
		deliver_end(x, e, detail, 0);
	xfer_retire(u, x);
}

/* The headers of one attempt: the client's, the configured ones, the token.
 * 0, or -1 on ENOMEM (a request never leaves with a header missing). */
static int add_auth_headers(struct upstream *u, struct up_xfer *x, const char *token)
{
	char line[4096];
	int rc = -1;

	curl_slist_free_all(x->sent_headers);
	x->sent_headers = NULL;
	for (struct curl_slist *s = x->fwd_headers; s != NULL; s = s->next)
		if (slist_add(&x->sent_headers, s->data) < 0)
			goto out;
	for (int i = 0; i < u->cfg->nheaders; i++)
		if (slist_add(&x->sent_headers, u->cfg->headers[i]) < 0)
			goto out;
	if (u->cfg->auth_header != CONFIG_AUTH_X_KAL) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
		if (slist_add(&x->sent_headers, line) < 0)
			goto out;
	}
	if (u->cfg->auth_header != CONFIG_AUTH_AUTHORIZATION) {
		snprintf(line, sizeof(line), "X-Kal-Authorization: Bearer %s", token);
		if (slist_add(&x->sent_headers, line) < 0)
			goto out;
	}
	rc = 0;
out:
	explicit_bzero(line, sizeof(line));
	return rc;
}

/* GET and HEAD: sending them twice changes nothing (RFC 9110 9.2.2). */
static int idempotent(const struct up_xfer *x)
{
	return strcmp(x->method, "GET") == 0 || strcmp(x->method, "HEAD") == 0;
}

static int xfer_setup_easy(struct upstream *u, struct up_xfer *x)
{
	CURL *e;

	if (x->easy == NULL && (x->easy = curl_easy_init()) == NULL)
		return -1;
	e = x->easy;
	curl_easy_setopt(e, CURLOPT_URL, x->url);
	curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)u->cfg->connect_timeout);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	/* A retry never trusts a pooled connection: the last one just died.
	 * Nor does a write: curl resends a request by itself when a kept-alive
	 * connection turns out dead, and a write must never go out twice. */
	curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, x->retried || !idempotent(x) ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	if (x->accept_identity) {
		/* Setting it through curl also makes curl decode an API that
		 * ignores the request, so the body delivered is identity. */
		curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "identity");
	} else {
		curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
		curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L);
	}
	/* CURLOPT_UPLOAD alone means PUT to curl: name the method whenever it
	 * is not a plain GET, and always when a body goes with it. */
	if (strcmp(x->method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (strcmp(x->method, "GET") != 0 || x->body_mode != UP_BODY_NONE)
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	if (x->body_mode != UP_BODY_NONE) {
		curl_off_t len = x->body_mode == UP_BODY_BUFFERED ? (curl_off_t)x->body_size :
								    (curl_off_t)x->body_len;

		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, len);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(e, CURLOPT_READDATA, x);
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->sent_headers);
	set_trace(u, e);
	return 0;
}

/* Starts a transfer that has a token available. */
static void xfer_launch(struct upstream *u, struct up_xfer *x, const char *token, unsigned gen)
{
	double now = clock_mono();

	x->token_gen = gen;
	x->discard = 0;
	x->body_off = 0;
	x->started = x->last_progress = now;
	if (add_auth_headers(u, x, token) < 0 || xfer_setup_easy(u, x) < 0) {
		xfer_fail(u, x, UP_ERR_INTERNAL, "out of memory starting the upstream request");
		return;
	}
	if (curl_multi_add_handle(u->multi, x->easy) != CURLM_OK) {
		xfer_fail(u, x, UP_ERR_INTERNAL, "curl refused the transfer");
		return;
	}
	x->phase = PH_RUNNING;
	x->wnext = u->running;
	u->running = x;
	u->nrunning++;
	note_load(u);
}

/*
 * At most max_concurrent transfers talk to the API at once (a job array of
 * 500 scripts must not become 500 calls); the rest wait their turn in
 * order, up to max_queued of them, and beyond that are refused at once
 * rather than pile up.
 */
static void xfer_queue(struct upstream *u, struct up_xfer *x, double now)
{
	if (u->nqueued >= u->cfg->max_queued) {
		pthread_mutex_lock(&u->clock);
		u->counters.refused_busy++;
		pthread_mutex_unlock(&u->clock);
		xfer_fail(u, x, UP_ERR_BUSY,
			  "kaleidod already has %u requests out to %s and %u waiting for one "
			  "of those connections ([upstream] max_concurrent, max_queued)",
			  u->nrunning, u->url, u->nqueued);
		return;
	}
	x->phase = PH_QUEUED;
	x->queued_at = now;
	x->wnext = NULL;
	*u->queued_tail = x;
	u->queued_tail = &x->wnext;
	u->nqueued++;
	note_load(u);
}

/* Launches x with tok, or queues it while every slot is taken. */
/* What the 429 windows say of x now (asked once: a request cleared stays
 * cleared through its replays and retry).  GO counts against the pace. */
static enum throttle_verdict clearance(struct upstream *u, struct up_xfer *x, double now,
				       double *left)
{
	enum throttle_verdict v = THROTTLE_GO;

	*left = 0;
	if (!x->cleared && (v = throttle_check(u->thr, x->scope, now, left)) == THROTTLE_GO)
		x->cleared = 1;
	return v;
}

/* x comes inside a 429 window: it never reaches the API. */
static void refuse_throttled(struct upstream *u, struct up_xfer *x, double left)
{
	pthread_mutex_lock(&u->clock);
	u->counters.refused_throttled++;
	pthread_mutex_unlock(&u->clock);
	xfer_fail(u, x, UP_ERR_THROTTLED,
		  "the API asked kaleidod to slow down (429) and %s is paused for %.0f s more",
		  x->scope >= 0 ? "this list" : "every request", left + 0.5);
}

/* Launches x with tok, or queues it while every slot is taken or the
 * release after a 429 window says not yet. */
static void xfer_go(struct upstream *u, struct up_xfer *x, const char *tok, unsigned gen,
		    double now)
{
	double left;
	enum throttle_verdict v = clearance(u, x, now, &left);

	if (v == THROTTLE_WAIT) {
		pthread_mutex_lock(&u->clock);
		u->counters.paced++;
		pthread_mutex_unlock(&u->clock);
	}
	if (v == THROTTLE_REFUSE)
		refuse_throttled(u, x, left);
	else if (v == THROTTLE_WAIT || u->nrunning >= u->cfg->max_concurrent)
		xfer_queue(u, x, now);
	else
		xfer_launch(u, x, tok, gen);
}

static void auth_failure_detail(struct upstream *u, char *out, size_t len)
{
	struct auth_status st;

	auth_status(u->auth, &st);
	snprintf(out, len, "kaleidod cannot authenticate to %s: %s", u->url,
		 st.last_error[0] ? st.last_error : "no token yet");
}

/* A transfer needs a token: launch it now, park it, or fail it fast. */
static void xfer_dispatch(struct upstream *u, struct up_xfer *x, double now)
{
	unsigned gen;
	const char *tok = auth_token(u->auth, now, &gen);
	char why[512];

	if (tok != NULL) {
		xfer_go(u, x, tok, gen, now);
		return;
	}
	if (auth_in_backoff(u->auth, now) && !auth_busy(u->auth)) {
		auth_failure_detail(u, why, sizeof(why));
		xfer_fail(u, x, UP_ERR_AUTH, "%s", why);
		return;
	}
	if (!x->replayed)
		x->started = now;
	x->phase = PH_WAITING;
	x->wnext = u->waiting;
	u->waiting = x;
}

/* After a token answer: launch or fail everything that waited for it. */
static void drain_waiting(struct upstream *u, double now)
{
	struct up_xfer *list = u->waiting;
	unsigned gen;
	const char *tok = auth_token(u->auth, now, &gen);
	char why[512];

	if (tok == NULL && auth_busy(u->auth))
		return;
	if (tok == NULL && !auth_in_backoff(u->auth, now))
		return; /* a new attempt is due at once: keep waiting for it */
	u->waiting = NULL;
	while (list != NULL) {
		struct up_xfer *x = list;

		list = x->wnext;
		x->wnext = NULL;
		x->phase = PH_NEW;
		if (tok != NULL) {
			xfer_go(u, x, tok, gen, now);
		} else {
			auth_failure_detail(u, why, sizeof(why));
			xfer_fail(u, x, UP_ERR_AUTH, "%s", why);
		}
	}
}

static enum up_error curl_err_kind(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return UP_ERR_TIMEOUT;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return UP_ERR_PROTOCOL;
	case CURLE_OUT_OF_MEMORY:
		return UP_ERR_INTERNAL;
	default:
		return UP_ERR_CONNECT;
	}
}

/* A failure of the connection itself, before any answer: the request may
 * not even have reached the API. */
static int connection_failed(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SEND_FAIL_REWIND: /* died, and curl could not resend it */
		return 1;
	default:
		return 0;
	}
}

/*
 * Whether x goes out once more after rc: a GET or HEAD (idempotent, RFC
 * 9110 9.2.2) whose connection failed before any answer, so nothing of it
 * reached the client, with a body that can be sent again.  Counted either
 * way, so a flaky API shows in the stats.
 */
static int retry_after(struct upstream *u, struct up_xfer *x, CURLcode rc)
{
	int retry;

	if (!connection_failed(rc) || x->answered)
		return 0;
	retry = idempotent(x) && !x->retried && x->body_mode != UP_BODY_STREAM;
	pthread_mutex_lock(&u->clock);
	if (retry)
		u->counters.retried++;
	else if (!idempotent(x))
		u->counters.not_retried++;
	pthread_mutex_unlock(&u->clock);
	return retry;
}

static void xfer_done(struct upstream *u, struct up_xfer *x, CURLcode rc, double now)
{
	int framed;
	unsigned gen;

	if (x->discard && rc == CURLE_OK) {
		/* 401: a fresh token, then the same request once more. */
		running_remove(u, x);
		x->phase = PH_NEW;
		x->replayed++;
		x->failed_gen = x->token_gen;
		if (auth_token(u->auth, now, &gen) != NULL && gen == x->token_gen) {
			auth_invalidate(u->auth, x->token_gen);
			u->force_auth = 1;
		}
		pthread_mutex_lock(&u->clock);
		u->counters.replayed_401++;
		pthread_mutex_unlock(&u->clock);
		token_start(u, now);
		xfer_dispatch(u, x, now);
		return;
	}
	/* curl 7.88 refuses a header field over CURL_MAX_HTTP_HEADER (100 KB)
	 * with "out of memory" and no message: before the headers are whole,
	 * that is the API's answer at fault, not kaleidod's memory. */
	if (rc == CURLE_OUT_OF_MEMORY && !x->answered) {
		xfer_fail(u, x, UP_ERR_PROTOCOL,
			  "the API's answer headers are larger than kaleidod takes (a field over "
			  "100 KB)%s%s",
			  x->errbuf[0] ? ": " : "", x->errbuf);
		return;
	}
	if (rc != CURLE_OK && retry_after(u, x, rc)) {
		running_remove(u, x);
		x->phase = PH_NEW;
		x->retried = 1;
		x->errbuf[0] = '\0';
		xfer_dispatch(u, x, now);
		return;
	}
	if (rc != CURLE_OK) {
		xfer_fail(u, x, curl_err_kind(rc), "%s: %s", curl_easy_strerror(rc),
			  x->errbuf[0] ? x->errbuf : "no detail");
		return;
	}
	/* A close-delimited body cut short still ends CURLE_OK: only framed
	 * bodies are whole for sure. */
	framed = x->cl_framed || x->chunk_framed || x->decoded;
	/* Answers that never carry a body are whole without framing. */
	if (x->status == 304 || x->status == 204)
		framed = 1;
	if (!x->answered) {
		pthread_mutex_lock(&u->clock);
		u->counters.errors[UP_ERR_PROTOCOL]++;
		pthread_mutex_unlock(&u->clock);
		deliver_end(x, UP_ERR_PROTOCOL, "the API closed without a complete answer", 0);
	} else
		deliver_end(x, UP_ERR_NONE, NULL, framed);
	xfer_retire(u, x);
}

/*
 * Deadlines the multi handle does not know: no answer within cfg->timeout
 * of the last byte sent (504), or a body that stalls for longer than that
 * while we are not the ones holding it back.  Returns seconds to the next one.
 */
static double check_deadlines(struct upstream *u, double now)
{
	double next = 1.0;
	struct up_xfer *x, *nx;

	for (x = u->running; x != NULL; x = nx) {
		int pending, client_slow, client_sending;
		double limit, left;

		nx = x->wnext;
		pthread_mutex_lock(&x->lock);
		pending = !x->answered;
		/* A front parked on a full upload ring is not reading: its
		 * paused receive is a standoff, not a slow client. */
		client_slow = x->paused_recv && !(x->parked && !x->up_end);
		client_sending = x->paused_send && !x->up_end;
		pthread_mutex_unlock(&x->lock);
		/* Waiting on our own client is not the API's fault. */
		if ((pending && client_sending) || (!pending && client_slow))
			continue;
		limit = (double)u->cfg->timeout;
		if (!pending && limit < 60)
			limit = 60;
		left = x->last_progress + limit - now;
		if (left <= 0) {
			xfer_fail(u, x, UP_ERR_TIMEOUT, "no answer from %s within %u s", u->url,
				  (unsigned)limit);
			continue;
		}
		if (left < next)
			next = left;
	}
	/* Waiting for a slot is bounded by the same timeout: an API too slow
	 * to free one is as good as one that does not answer. */
	for (x = u->queued; x != NULL; x = nx) {
		double left = x->queued_at + (double)u->cfg->timeout - now;

		nx = x->wnext;
		if (left <= 0) {
			xfer_fail(u, x, UP_ERR_BUSY,
				  "waited %u s for one of the %u connections to %s ([upstream] "
				  "max_concurrent); the API is slow or overloaded",
				  u->cfg->timeout, u->cfg->max_concurrent, u->url);
			continue;
		}
		if (left < next)
			next = left;
	}
	/* Waiting for a token is bounded too (the token request has its own
	 * timeout, but a transfer must never depend on that alone). */
	for (x = u->waiting; x != NULL; x = nx) {
		double left = x->started + (double)u->cfg->timeout - now;

		nx = x->wnext;
		if (left <= 0) {
			xfer_fail(u, x, UP_ERR_TIMEOUT, "no upstream token within %u s",
				  u->cfg->timeout);
			continue;
		}
		if (left < next)
			next = left;
	}
	return next;
}

static void run_commands(struct upstream *u, double now)
{
	struct cmd *q;
	size_t n, cap;

	/* Swap in the spare array: the queue is refilled without a malloc per
	 * batch (a download unpauses thousands of times). */
	pthread_mutex_lock(&u->qlock);
	q = u->q;
	n = u->qlen;
	cap = u->qcap;
	u->q = u->spare;
	u->qcap = u->spare_cap;
	u->qlen = 0;
	pthread_mutex_unlock(&u->qlock);

	for (size_t i = 0; i < n; i++) {
		struct up_xfer *x = q[i].x;
		int released;

		pthread_mutex_lock(&x->lock);
		released = x->released;
		pthread_mutex_unlock(&x->lock);
		switch (q[i].kind) {
		case CMD_START:
			if (u->draining && x->phase == PH_NEW)
				xfer_fail(u, x, UP_ERR_SHUTDOWN, "kaleidod is shutting down");
			else if (!released && x->phase == PH_NEW)
				xfer_dispatch(u, x, now);
			else if (x->phase == PH_NEW)
				xfer_retire(u, x);
			break;
		case CMD_UNPAUSE:
			pthread_mutex_lock(&x->lock);
			x->unpause_queued = 0;
			x->paused_recv = x->paused_send = 0;
			pthread_mutex_unlock(&x->lock);
			if (x->phase == PH_RUNNING)
				curl_easy_pause(x->easy, CURLPAUSE_CONT);
			break;
		case CMD_RELEASE:
			if (x->phase != PH_DONE)
				xfer_retire(u, x);
			break;
		}
		xfer_unref(x);
	}
	u->spare = q;
	u->spare_cap = cap;
}

static void finish_messages(struct upstream *u, double now)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(u->multi, &left)) != NULL) {
		struct up_xfer *x = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		if (m->easy_handle == u->tok_easy) {
			token_done(u, m->data.result, now);
			continue;
		}
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		if (x != NULL && x->phase == PH_RUNNING) {
			curl_off_t us = 0;

			if (curl_easy_getinfo(m->easy_handle, CURLINFO_TOTAL_TIME_T, &us) ==
			    CURLE_OK)
				histo_observe(u->dur, 0, (double)us / 1e6);
			xfer_done(u, x, m->data.result, now);
		}
	}
}

static void shutdown_all(struct upstream *u)
{
	while (u->running != NULL)
		xfer_fail(u, u->running, UP_ERR_SHUTDOWN, "kaleidod is shutting down");
	while (u->waiting != NULL)
		xfer_fail(u, u->waiting, UP_ERR_SHUTDOWN, "kaleidod is shutting down");
	while (u->queued != NULL)
		xfer_fail(u, u->queued, UP_ERR_SHUTDOWN, "kaleidod is shutting down");
	if (u->tok_easy != NULL) {
		struct curl_slist *h = NULL;

		curl_easy_getinfo(u->tok_easy, CURLINFO_PRIVATE, (char **)&h);
		curl_multi_remove_handle(u->multi, u->tok_easy);
		curl_easy_cleanup(u->tok_easy);
		curl_slist_free_all(h);
		u->tok_easy = NULL;
	}
	/* a token request still out at shutdown, or one the broker was asked about */
	secret_free(&u->tok_form);
}

/* Hands freed slots to the oldest queued transfers the 429 windows let
 * go.  Returns seconds until the paced release lets another go (1 when
 * nothing waits for it). */
static double launch_queued(struct upstream *u, double now)
{
	double wake = 1.0, left;
	struct up_xfer *x, *nx;

	for (x = u->queued; x != NULL && u->nrunning < u->cfg->max_concurrent; x = nx) {
		enum throttle_verdict v = clearance(u, x, now, &left);

		nx = x->wnext;
		if (v == THROTTLE_WAIT) {
			if (left < wake)
				wake = left;
			continue;
		}
		queue_remove(u, x);
		x->phase = PH_NEW;
		if (v == THROTTLE_REFUSE)
			refuse_throttled(u, x, left);
		else
			xfer_dispatch(u, x, now);
	}
	return wake;
}

static void *worker(void *arg)
{
	struct upstream *u = arg;

	for (;;) {
		double now = clock_mono(), wait, due, paced;
		int stopping, running;

		run_commands(u, now);
		pthread_mutex_lock(&u->qlock);
		stopping = u->stopping;
		pthread_mutex_unlock(&u->qlock);
		if (stopping)
			break;
		if (u->tok_easy == NULL)
			token_start(u, now);
		drain_waiting(u, now);
		curl_multi_perform(u->multi, &running);
		finish_messages(u, clock_mono());
		drain_waiting(u, clock_mono());
		paced = launch_queued(u, clock_mono());
		now = clock_mono();
		wait = check_deadlines(u, now);
		if (paced < wait)
			wait = paced;
		due = auth_next_due(u->auth, now);
		if (due >= 0 && due < wait)
			wait = due;
		if (wait < 0.001)
			wait = 0.001;
		curl_multi_poll(u->multi, NULL, 0, (int)(wait * 1000) + 1, NULL);
	}
	shutdown_all(u);
	/* Anything queued from now on is refused by cmd_push; what is queued
	 * already is dropped here. */
	pthread_mutex_lock(&u->qlock);
	u->dead = 1;
	pthread_mutex_unlock(&u->qlock);
	u->draining = 1;
	run_commands(u, clock_mono());
	return NULL;
}

/* ---- public: lifetime ---- */

struct upstream *upstream_new(const struct config *cfg, const struct up_events *ev, char *err,
			      size_t errlen)
{
	struct upstream *u = calloc(1, sizeof(*u));

	if (u == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	u->cfg = cfg;
	u->queued_tail = &u->queued;
	if (ev != NULL)
		u->events = *ev;
	pthread_mutex_init(&u->qlock, NULL);
	pthread_mutex_init(&u->clock, NULL);
	atomic_init(&u->loop_at, 0);
	{
		unsigned char id[8] = { 0 };

		/* A name, not a secret: a short read only makes it less unique. */
		(void)!getrandom(id, sizeof(id), GRND_NONBLOCK);
		snprintf(u->via_name, sizeof(u->via_name),
			 "kaleidod-%02x%02x%02x%02x%02x%02x%02x%02x", id[0], id[1], id[2], id[3],
			 id[4], id[5], id[6], id[7]);
		snprintf(u->via_line, sizeof(u->via_line), "Via: 1.1 %s", u->via_name);
	}
	u->url = strdup(cfg->upstream_url);
	u->client_id = strdup(cfg->client_id ? cfg->client_id : "");
	u->multi = curl_multi_init();
	u->dur = histo_new(1);
	u->auth = auth_new(cfg->client_id ? cfg->client_id : "",
			   cfg->client_secret ? cfg->client_secret : "", cfg->auth_retry_min,
			   cfg->auth_retry_max);
	/* After a 429 window, a quarter of the slots a second: what waited
	 * goes out over a few seconds, not at once. */
	u->thr = throttle_new(cfg->nfamilies, cfg->max_concurrent / 4);
	if (u->url == NULL || u->client_id == NULL || u->multi == NULL || u->dur == NULL ||
	    u->auth == NULL || u->thr == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	/* Idle upstream connections are kept for reuse; one per slot at least. */
	curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS,
			  cfg->max_concurrent > 64 ? (long)cfg->max_concurrent : 64L);
	if (pthread_create(&u->thread, NULL, worker, u) != 0) {
		snprintf(err, errlen, "cannot start the upstream thread: %s", strerror(errno));
		goto fail;
	}
	u->thread_started = 1;
	return u;
fail:
	upstream_free(&u);
	return NULL;
}

void upstream_shutdown(struct upstream *u)
{
	if (u == NULL || !u->thread_started)
		return;
	pthread_mutex_lock(&u->qlock);
	u->stopping = 1;
	pthread_mutex_unlock(&u->qlock);
	curl_multi_wakeup(u->multi);
	pthread_join(u->thread, NULL);
	u->thread_started = 0;
}

void upstream_free(struct upstream **up)
{
	struct upstream *u = *up;

	if (u == NULL)
		return;
	upstream_shutdown(u);
	if (u->multi != NULL)
		curl_multi_cleanup(u->multi);
	auth_free(&u->auth);
	histo_free(&u->dur);
	throttle_free(&u->thr);
	forget_token(u);
	secret_free(&u->brk_body);
	free(u->url);
	free(u->client_id);
	for (int i = 0; i < REFUSERS; i++)
		free(u->refusers[i].what);
	free(u->q);
	free(u->spare);
	pthread_mutex_destroy(&u->qlock);
	pthread_mutex_destroy(&u->clock);
	free(u);
	*up = NULL;
}

int upstream_set_secret(struct upstream *u, const char *client_secret)
{
	if (auth_set_secret(u->auth, client_secret) < 0)
		return -1;
	curl_multi_wakeup(u->multi);
	return 0;
}

void upstream_auth_status(struct upstream *u, struct auth_status *out)
{
	auth_status(u->auth, out);
}

const char *upstream_url(const struct upstream *u)
{
	return u->url;
}

const char *upstream_client_id(const struct upstream *u)
{
	return u->client_id;
}

const char *upstream_via_name(const struct upstream *u)
{
	return u->via_name;
}

void upstream_note_loop(struct upstream *u)
{
	atomic_store(&u->loop_at, (long long)time(NULL));
}

int upstream_looped(struct upstream *u, double within)
{
	long long at = atomic_load(&u->loop_at);

	return at > 0 && (double)(time(NULL) - at) < within;
}

double upstream_throttle_left(struct upstream *u, int scope)
{
	return throttle_left(u->thr, scope, clock_mono());
}

void upstream_counters(struct upstream *u, struct upstream_counters *out)
{
	pthread_mutex_lock(&u->clock);
	*out = u->counters;
	pthread_mutex_unlock(&u->clock);
}

void upstream_durations(struct upstream *u, struct histo_snapshot *out)
{
	histo_read(u->dur, 0, out);
}

const char *upstream_error_kind(enum up_error e)
{
	static const char *const kinds[UP_ERR_KINDS] = {
		[UP_ERR_NONE] = "none",           [UP_ERR_CONNECT] = "connect",
		[UP_ERR_TIMEOUT] = "timeout",     [UP_ERR_AUTH] = "auth",
		[UP_ERR_PROTOCOL] = "protocol",   [UP_ERR_SHUTDOWN] = "shutdown",
		[UP_ERR_INTERNAL] = "internal",   [UP_ERR_BUSY] = "busy",
		[UP_ERR_THROTTLED] = "throttled",
	};

	return (int)e >= 0 && e < UP_ERR_KINDS ? kinds[e] : "unknown";
}

/* ---- public: transfers ---- */

struct up_xfer *upstream_start(struct upstream *u, const struct up_request *req,
			       const struct up_hooks *hooks, const struct up_sink *sink)
{
	struct up_xfer *x;
	size_t ulen;

	ASSERT(hooks != NULL || sink != NULL);
	ASSERT(sink == NULL || (sink->headers != NULL && sink->data != NULL && sink->end != NULL));
	/* Only origin-form targets: anything else pasted after the API's URL
	 * could change the host the token is sent to. */
	if (req->target[0] != '/' || strchr(req->target, '#') != NULL ||
	    (x = calloc(1, sizeof(*x))) == NULL) {
		if (sink != NULL && sink->free != NULL)
			sink->free(sink->arg);
		return NULL;
	}
	INIT_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_init(&x->lock, NULL);
	atomic_init(&x->resumes, 0);
	x->refs = 2; /* the caller's and the worker's */
	x->worker_ref = 1;
	x->u = u;
	if (sink != NULL)
		x->user = *sink; /* the transfer's from here on: xfer_free() frees it */
	if (hooks != NULL)
		x->hooks = *hooks;
	if (hooks == NULL) {
		x->sink = x->user;
	} else if (sink == NULL) {
		x->sink = (struct up_sink){ ring_headers, ring_data, ring_end, NULL, x };
	} else {
		x->sink = (struct up_sink){ tee_headers, tee_data, tee_end, NULL, x };
		x->tee = 1;
	}
	x->method = strdup(req->method);
	ulen = strlen(u->url) + strlen(req->target) + 1;
	x->url = malloc(ulen);
	x->building = hdr_new();
	x->body_mode = req->body_mode;
	x->body_len = req->body_len;
	x->accept_identity = req->accept_identity;
	x->scope = req->scope;
	x->length = -1;
	if (x->method == NULL || x->url == NULL || x->building == NULL)
		goto fail;
	snprintf(x->url, ulen, "%s%s", u->url, req->target);
	if (req->body_mode == UP_BODY_BUFFERED) {
		x->body = malloc(req->body_size ? req->body_size : 1);
		if (x->body == NULL)
			goto fail;
		if (req->body_size > 0)
			memcpy(x->body, req->body, req->body_size);
		x->body_size = req->body_size;
	}
	for (size_t i = 0; req->headers != NULL && i < hdr_count(req->headers); i++) {
		const char *name = hdr_name(req->headers, i), *value = hdr_value(req->headers, i);
		size_t llen = strlen(name) + strlen(value) + 3;
		char *line = malloc(llen);
		int rc;

		if (line == NULL)
			goto fail;
		/* curl drops "Name:" with an empty value; "Name;" sends it empty. */
		if (value[0] == '\0')
			snprintf(line, llen, "%s;", name);
		else
			snprintf(line, llen, "%s: %s", name, value);
		rc = slist_add(&x->fwd_headers, line);
		free(line);
		if (rc < 0)
			goto fail;
	}
	/* curl would wait a second for 100-continue on large bodies. */
	if (slist_add(&x->fwd_headers, "Expect:") < 0)
		goto fail;
	pthread_mutex_lock(&u->clock);
	u->counters.started++;
	u->counters.active++;
	pthread_mutex_unlock(&u->clock);
	if (cmd_push(u, CMD_START, x) < 0) {
		pthread_mutex_lock(&u->clock);
		u->counters.active--;
		pthread_mutex_unlock(&u->clock);
		x->refs = 1;
		x->worker_ref = 0;
		if (hooks == NULL) {
			/* Nobody would ever hear of its end: refuse it now. */
			xfer_free(x);
			return NULL;
		}
		deliver_end(x, UP_ERR_SHUTDOWN, "kaleidod is shutting down", 0);
		return x;
	}
	/* The worker's reference now travels with the queued command too; the
	 * command's own reference is dropped once it ran. */
	return x;
fail:
	/* xfer_free() frees the sink's arg too: it is the transfer's now. */
	x->refs = 1;
	x->worker_ref = 0;
	xfer_free(x);
	return NULL;
}

void upstream_xfer_resume(struct up_xfer *x)
{
	int queue = 0;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	/* Counted under the lock that on_write() checks it under: a resume
	 * between a sink's data() and the pause it asked for is seen there. */
	atomic_fetch_add(&x->resumes, 1);
	if (x->paused_recv && !x->unpause_queued) {
		x->unpause_queued = 1;
		queue = 1;
	}
	pthread_mutex_unlock(&x->lock);
	if (queue)
		request_unpause(x);
}

void upstream_xfer_write(struct up_xfer *x, const char *data, size_t len, size_t *consumed)
{
	int queue = 0;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	/* After a failure, the end, or an early final answer (curl stops
	 * sending once a status >= 300 arrived), nobody reads the rest. */
	if (x->finished || !x->worker_ref || (x->answered && x->status >= 300)) {
		*consumed = len;
		pthread_mutex_unlock(&x->lock);
		return;
	}
	if (ring_alloc(&x->up) < 0) {
		*consumed = len;
		pthread_mutex_unlock(&x->lock);
		return;
	}
	*consumed = ring_put(&x->up, data, len);
	if (*consumed > 0 && x->paused_send)
		want_unpause_locked(x, &queue);
	if (*consumed < len) {
		/* What did not fit is offered again once the worker made room;
		 * libmicrohttpd needs the connection suspended meanwhile. */
		x->parked = 1;
		if (x->hooks.park != NULL)
			x->hooks.park(x->hooks.arg);
	}
	pthread_mutex_unlock(&x->lock);
	if (queue)
		request_unpause(x);
}

void upstream_xfer_write_end(struct up_xfer *x)
{
	int queue = 0;

	pthread_mutex_lock(&x->lock);
	x->up_end = 1;
	if (x->paused_send)
		want_unpause_locked(x, &queue);
	pthread_mutex_unlock(&x->lock);
	if (queue)
		request_unpause(x);
}

enum up_state upstream_xfer_poll(struct up_xfer *x)
{
	enum up_state s;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	pthread_mutex_lock(&x->lock);
	s = x->state;
	if (s == UP_PENDING) {
		x->parked = 1;
		if (x->hooks.park != NULL)
			x->hooks.park(x->hooks.arg);
	}
	pthread_mutex_unlock(&x->lock);
	return s;
}

long upstream_xfer_status(struct up_xfer *x)
{
	return x->status;
}

const struct hdr *upstream_xfer_headers(struct up_xfer *x)
{
	return x->headers;
}

long long upstream_xfer_length(struct up_xfer *x)
{
	return x->length;
}

enum up_error upstream_xfer_error(struct up_xfer *x, const char **detail)
{
	if (detail != NULL)
		*detail = x->detail;
	return x->err;
}

ssize_t upstream_xfer_read(struct up_xfer *x, char *buf, size_t max)
{
	size_t avail;
	ssize_t n;
	int resume = 0;

	CHECK_OBJ(x, UP_XFER_MAGIC);
	ASSERT(x->hooks.park != NULL); /* a transfer started with a reader */
	pthread_mutex_lock(&x->lock);
	/* In a tee, the last byte waits for the end of the transfer, which
	 * comes after the other sink's end() (see tee_end()). */
	if (x->tee && !x->down_eof && !x->down_broken) {
		avail = x->down.len > 0 ? x->down.len - 1 : 0;
		if (max > avail)
			max = avail;
	}
	if (x->down.len > 0 && max > 0) {
		n = (ssize_t)ring_get(&x->down, buf, max);
		/* Resume the API only once half the ring is free: each pause
		 * costs a wake-up of the worker and a copy inside curl. */
		if (x->down_waits && ring_free(&x->down) >= RING_CAP / 2) {
			x->down_waits = 0;
			resume = 1;
		}
	} else if (x->down_broken || x->state == UP_FAILED) {
		n = -2;
	} else if (x->down_eof) {
		n = -1;
	} else {
		x->parked = 1;
		if (x->hooks.park != NULL)
			x->hooks.park(x->hooks.arg);
		n = 0;
	}
	pthread_mutex_unlock(&x->lock);
	if (resume)
		upstream_xfer_resume(x);
	return n;
}

void upstream_xfer_release(struct up_xfer **xp)
{
	struct up_xfer *x = *xp;
	int worker;

	if (x == NULL)
		return;
	*xp = NULL;
	pthread_mutex_lock(&x->lock);
	x->released = 1;
	x->parked = 0;
	worker = x->worker_ref;
	pthread_mutex_unlock(&x->lock);
	if (worker)
		cmd_push(x->u, CMD_RELEASE, x);
	xfer_unref(x);
}
