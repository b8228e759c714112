/*
 * upstream: the one worker thread that talks to the Kaleidoscope API.
 *
 * It owns one libcurl multi handle (so upstream connections are pooled and
 * reused), the upstream token (through auth), and every transfer in flight.
 * It is transport only: it sends a request and hands the answer to a sink
 * (struct up_sink: headers, data, end), with backpressure.  Front threads
 * never touch curl: they hand a request over, then move bytes through two
 * bounded rings per transfer (request body up; response body down, the
 * ring being one sink).  When a side must wait, the transfer calls the
 * front's park hook while holding its lock (the front suspends the client
 * connection there), and later the unpark hook from the worker (the front
 * resumes it).  So memory stays flat whatever the body size, and one slow
 * upstream call never holds up another client.
 *
 * A transfer answered 401 is replayed once after a fresh token when its body
 * is replayable (none, or buffered in full).
 */
#ifndef KD_UPSTREAM_H
#define KD_UPSTREAM_H

#include <stddef.h>
#include <sys/types.h>

#include "histo.h"

/* The API's token endpoint, which kaleidod also answers for its clients. */
#define UPSTREAM_TOKEN_PATH "/auth/oauth/token"

struct config;
struct hdr;
struct auth_status;
struct upstream;
struct up_xfer;

/* A front that reads the answer, or streams a request body, through the
 * transfer's rings. */
struct up_hooks {
	/* Called with the transfer locked, on the front thread inside a read or
	 * write call that cannot proceed: suspend the client connection. */
	void (*park)(void *arg);
	/* Called unlocked from the worker once a parked front may proceed:
	 * resume it.  Called exactly once per park. */
	void (*unpark)(void *arg);
	void *arg;
};

/* What a sink's data() did with the bytes offered. */
enum up_take {
	UP_TAKEN = 0,  /* took them all */
	UP_TAKEN_WAIT, /* took them all, and wants no more until upstream_xfer_resume() */
	UP_FULL,       /* took none: offer the same bytes after upstream_xfer_resume() */
	UP_STOP,       /* took none and wants no more: the transfer is abandoned */
};

enum up_error {
	UP_ERR_NONE = 0,
	UP_ERR_CONNECT, /* could not reach the API (DNS, refused, TLS, reset) */
	UP_ERR_TIMEOUT, /* no answer in time */
	UP_ERR_AUTH, /* no upstream token: the API refused our credentials or is unreachable for them */
	UP_ERR_PROTOCOL,  /* the API answered something that is not HTTP */
	UP_ERR_SHUTDOWN,  /* the daemon is stopping */
	UP_ERR_INTERNAL,  /* out of memory and the like */
	UP_ERR_BUSY,      /* every connection to the API busy, and the queue full or too slow */
	UP_ERR_THROTTLED, /* inside a pause the API asked for with 429 */
	UP_ERR_KINDS
};
/* "connect", "timeout", ...: a metric label; "none" for UP_ERR_NONE. */
const char *upstream_error_kind(enum up_error e);

/*
 * Where the answer goes.  The transfer owns arg from upstream_start() on.
 *
 * Order: headers() at most once, then data() any number of times, then
 * end() exactly once (whether or not headers() came); then, whenever the
 * transfer is freed (its last reference gone, the caller's or the
 * worker's), free().  An attempt answered 401 and replayed is never shown
 * to the sink.
 *
 * Threads and locks: headers(), data() and end() run on the upstream
 * worker, with no lock of ours held, so a sink may take its own locks and
 * call into other modules; they must not block (end() may release the
 * caller's handle: the worker holds its own reference until end() returned).
 * free() runs on whichever thread lets go of the transfer last, with no
 * lock of ours held.
 *
 * Backpressure: data() returns UP_FULL to refuse a chunk it has no room
 * for (curl keeps the chunk aside), or UP_TAKEN_WAIT when it is nearly
 * full (the next chunk stays in the socket: no copy); either way nothing
 * more arrives until someone calls upstream_xfer_resume().  A resume that
 * races with the data() call that asked for the wait is not lost.  So a
 * sink that holds a bounded buffer keeps memory flat whatever the size.
 */
struct up_sink {
	/* The final status and fields (hop-by-hop included; Content-Length
	 * removed when the body is not delivered as framed by it).  h is the
	 * transfer's and stays valid until free(); length is the declared
	 * body length, or -1 when unknown or changed by decoding. */
	void (*headers)(void *arg, long status, const struct hdr *h, long long length);
	/* A piece of the body, in order; len > 0. */
	enum up_take (*data)(void *arg, const char *buf, size_t len);
	/* The end.  err == UP_ERR_NONE: the answer arrived (headers() came
	 * first), and framed says whether its end was marked (Content-Length,
	 * chunked, a decoded body, or a status without a body): a body ended
	 * by a close may have been cut short.  Otherwise it failed, before the
	 * headers or after; detail says why, in words. */
	void (*end)(void *arg, enum up_error err, const char *detail, int framed);
	void (*free)(void *arg); /* may be NULL */
	void *arg;
};

/* Told on the worker whenever the token state changes (a grant, a refresh,
 * a failure); retry_in is auth_next_due().  For the daemon's log. */
/*
 * A token source shared with other instances ([cluster] share_token). * When a grant is due, the worker calls ask() (which must not block)
 * instead of asking the API, with itself (for the answer) and the last
 * token it held (NULL: none), which the broker must not hand back.  The answer comes through
 * upstream_broker_answer(): a token answer to adopt, or "ask the API
 * yourself", after which got() says what came of it (NULL: no token).
 * Both are called on the worker; the token strings are secrets.
 */
struct up_broker {
	void (*ask)(void *arg, struct upstream *u, const char *held);
	void (*got)(void *arg, const char *token, double expires_at);
	void *arg;
};

struct up_events {
	void (*auth_changed)(void *arg, const struct auth_status *st, double retry_in);
	/* When set, libcurl's own account of every exchange (connections,
	 * header lines in and out, never bodies) arrives here one line at a
	 * time, dir being '*', '>' or '<'.  Lines may hold secrets: the
	 * receiver redacts them (log.c does). */
	void (*trace)(void *arg, char dir, const char *line, size_t len);
	void *arg;
	struct up_broker broker; /* ask NULL: the worker asks the API itself */
};

enum up_body_mode {
	UP_BODY_NONE = 0, /* no request body */
	UP_BODY_BUFFERED, /* body given in full in up_request.body: replayable */
	UP_BODY_STREAM,   /* body fed with upstream_xfer_write(); body_len or -1 */
};

struct up_request {
	const char *method;
	const char *target;        /* raw path and query, as the client sent it */
	const struct hdr *headers; /* end-to-end fields to forward; the worker adds auth */
	enum up_body_mode body_mode;
	const void *body; /* UP_BODY_BUFFERED: copied */
	size_t body_size;
	long long body_len; /* UP_BODY_STREAM: declared length or -1 (chunked) */
	/* Ask for the answer without a content coding (Accept-Encoding:
	 * identity), and decode one the API applies anyway, so the body
	 * delivered is always identity. */
	int accept_identity;
	/* Which 429 pauses apply: the request's family, or -1 (a 429 to a
	 * request in no family pauses everything). */
	int scope;
};

enum up_state {
	UP_PENDING = 0, /* nothing to report yet (the caller was parked) */
	UP_HEADERS,     /* status and headers are final; body may follow */
	UP_FAILED,      /* failed before the headers: see upstream_xfer_error() */
};

/* Starts the worker thread.  NULL with a message in err on failure. */
struct upstream *upstream_new(const struct config *cfg, const struct up_events *ev, char *err,
			      size_t errlen);
/* Fails every transfer with UP_ERR_SHUTDOWN (unparking every parked front),
 * then stops the worker. */
void upstream_shutdown(struct upstream *u);
void upstream_free(struct upstream **u);

/*
 * The broker's answer to ask(), from any thread: body is a token answer
 * as the API's token endpoint gives it (JSON, copied, then wiped), or NULL
 * for "ask the API yourself".  Once per ask().
 */
void upstream_broker_answer(struct upstream *u, const char *body);

/* A new client secret (SIGHUP): used for the next token request, which is
 * made at once if the last one failed.  0, or -1 on ENOMEM.  Thread-safe. */
int upstream_set_secret(struct upstream *u, const char *client_secret);

/* Consistent snapshot of the token state, for /_kaleidod/health. */
void upstream_auth_status(struct upstream *u, struct auth_status *out);
const char *upstream_url(const struct upstream *u);
const char *upstream_client_id(const struct upstream *u);
/*
 * This instance's name in Via (RFC 9110 7.6.3), "kaleidod-" and 16 random
 * hex digits: every request sent upstream, token requests included,
 * carries "Via: 1.1 NAME", so a request that comes back to this instance
 * (its API URL leads to itself, directly or through other proxies) can be
 * told from any other.
 */
const char *upstream_via_name(const struct upstream *u);
/* Records that a request came back (a loop), and whether one did within
 * the last `within` seconds. */
void upstream_note_loop(struct upstream *u);
int upstream_looped(struct upstream *u, double within);

/* Counters the worker keeps. */
struct upstream_counters {
	unsigned long long started, replayed_401, failed, active;
	/* Connection failures before an answer: GET/HEAD sent once more, and
	 * other methods' (never sent twice). */
	unsigned long long retried, not_retried;
	/* Transfers talking to the API now, waiting for one of the
	 * max_concurrent slots now, and refused because the queue was full. */
	unsigned long long running, queued, refused_busy;
	/* 429s from the API, requests kept from it during the pauses, and
	 * requests held back by the paced release after one. */
	unsigned long long throttled, refused_throttled, paced;
	/* Transfers that ended without a whole answer, by kind. */
	unsigned long long errors[UP_ERR_KINDS];
};
void upstream_counters(struct upstream *u, struct upstream_counters *out);
/* How long exchanges with the API took, from the request sent (connection
 * included) to the answer's last byte; one histogram series.  Each attempt
 * counts (a 401 replayed is two); the token endpoint's are not here. */
void upstream_durations(struct upstream *u, struct histo_snapshot *out);
/* Seconds left of the 429 pause on scope (its family's or everything's),
 * 0 when none is in force. */
double upstream_throttle_left(struct upstream *u, int scope);

/*
 * Hands a request to the worker.  The request is copied; the hooks and
 * the sink are kept.  Where the answer goes:
 *   - hooks, no sink: into the transfer's ring, read by the front with
 *     upstream_xfer_poll() and upstream_xfer_read() below;
 *   - a sink, no hooks: to the sink alone, nobody reads the ring; a sink
 *     that answers UP_STOP ends the transfer;
 *   - both: a tee, the ring and the sink each get all of the answer.  The
 *     sink must take every chunk (UP_TAKEN), or drop out with UP_STOP,
 *     which leaves the ring alone; its end() still comes.  The reader sees
 *     the end only after the sink's end() returned: until then the ring
 *     holds back the body's last byte, since a response of known length is
 *     over at its last byte, without a read that could see an end.
 * The sink's arg is the transfer's from here on, even when this fails.
 * The handle belongs to the caller until upstream_xfer_release().  NULL on
 * ENOMEM, or for a sink alone when the worker is gone (end() never comes
 * then); with hooks and the worker gone, a handle already failed with
 * UP_ERR_SHUTDOWN (end() comes at once, on the caller's thread).
 */
struct up_xfer *upstream_start(struct upstream *u, const struct up_request *req,
			       const struct up_hooks *hooks, const struct up_sink *sink);

/*
 * A sink that asked to wait (UP_TAKEN_WAIT, UP_FULL) has room again: the
 * transfer goes on.  Any thread; cheap when nothing waits.
 */
void upstream_xfer_resume(struct up_xfer *x);

/*
 * Request body (UP_BODY_STREAM): copies what fits and puts the count in
 * *consumed.  When not everything fits the front is parked (it offers the rest
 * again once unparked).
 * After the transfer ended (the API answered early, or failed) everything is
 * accepted and dropped.  upstream_xfer_write_end() marks the end of the body.
 */
void upstream_xfer_write(struct up_xfer *x, const char *data, size_t len, size_t *consumed);
void upstream_xfer_write_end(struct up_xfer *x);

/*
 * The ring: the answer as a front reads it (a transfer started with hooks).
 */
/* UP_HEADERS or UP_FAILED, or UP_PENDING after parking the front. */
enum up_state upstream_xfer_poll(struct up_xfer *x);
long upstream_xfer_status(struct up_xfer *x);
/* The response headers as received (hop-by-hop included); valid after UP_HEADERS. */
const struct hdr *upstream_xfer_headers(struct up_xfer *x);
/* Declared body length, or -1 when unknown or changed by decoding. */
long long upstream_xfer_length(struct up_xfer *x);
enum up_error upstream_xfer_error(struct up_xfer *x, const char **detail);

/*
 * Response body: copies up to max bytes.  Returns the count (> 0), 0 after
 * parking the front (no data yet), -1 at the clean end, -2 when the transfer
 * broke (the client must see a truncated answer).
 */
ssize_t upstream_xfer_read(struct up_xfer *x, char *buf, size_t max);

/* The caller is done with the handle: aborts a transfer still running.  NULLs *x. */
void upstream_xfer_release(struct up_xfer **x);

#endif
