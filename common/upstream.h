/*
 * upstream: the one worker thread that talks to the Kaleidoscope API.
 *
 * It owns one libcurl multi handle (so upstream connections are pooled and
 * reused), the upstream token (through auth), and every transfer in flight.
 * Front threads never touch curl: they hand a request over, then move bytes
 * through two bounded buffers per transfer (request body up, response body
 * down).  When a side must wait, the transfer calls the front's park hook
 * while holding its lock (the front suspends the client connection there),
 * and later the unpark hook from the worker (the front resumes it).  So memory
 * stays flat whatever the body size, and one slow upstream call never holds
 * up another client.
 *
 * A transfer answered 401 is replayed once after a fresh token when its body
 * is replayable (none, or buffered whole).
 */
#ifndef KD_UPSTREAM_H
#define KD_UPSTREAM_H

#include <stddef.h>
#include <sys/types.h>

/* The API's token endpoint, which kaleidod also answers for its clients. */
#define UPSTREAM_TOKEN_PATH "/auth/oauth/token"

struct config;
struct hdr;
struct auth_status;
struct upstream;
struct up_xfer;

struct up_hooks {
	/* Called with the transfer locked, on the front thread inside a read or
	 * write call that cannot proceed: suspend the client connection. */
	void (*park)(void *arg);
	/* Called unlocked from the worker once a parked front may proceed:
	 * resume it.  Called exactly once per park. */
	void (*unpark)(void *arg);
	void *arg;
	/* Called on the worker when a transfer with collect_max > 0 completed
	 * whole (CURLE_OK, framed by Content-Length or chunked, collected body
	 * within collect_max); the front stores it.  complete_arg belongs to
	 * the transfer from upstream_start() on: complete_free (may be NULL)
	 * releases it when the transfer is freed, whichever side lets go last,
	 * so the hook never sees a front context that is already gone. */
	void (*complete)(void *complete_arg, struct up_xfer *x);
	void (*complete_free)(void *complete_arg);
	void *complete_arg;
};

/* Told on the worker whenever the token state changes (a grant, a refresh,
 * a failure); retry_in is auth_next_due().  For the daemon's log. */
struct up_events {
	void (*auth_changed)(void *arg, const struct auth_status *st, double retry_in);
	/* When set, libcurl's own account of every exchange (connections,
	 * header lines in and out, never bodies) arrives here one line at a
	 * time, dir being '*', '>' or '<'.  Lines may hold secrets: the
	 * receiver redacts them (log.c does). */
	void (*trace)(void *arg, char dir, const char *line, size_t len);
	void *arg;
};

enum up_body_mode {
	UP_BODY_NONE = 0, /* no request body */
	UP_BODY_BUFFERED, /* body given whole in up_request.body: replayable */
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
	int identity;       /* cacheable: ask for and deliver identity encoding */
	size_t collect_max; /* keep up to this many body bytes for complete(); 0 none */
	/* No client reads this transfer (a cache fetch others wait on): the
	 * body is only collected, a body over collect_max ends the transfer,
	 * and complete() is called exactly once at the end whatever happened;
	 * upstream_xfer_whole() then tells a whole answer from a failure. */
	int detached;
};

enum up_state {
	UP_PENDING = 0, /* nothing to report yet (the caller was parked) */
	UP_HEADERS,     /* status and headers are final; body may follow */
	UP_FAILED,      /* failed before the headers: see upstream_xfer_error() */
};

enum up_error {
	UP_ERR_NONE = 0,
	UP_ERR_CONNECT, /* could not reach the API (DNS, refused, TLS, reset) */
	UP_ERR_TIMEOUT, /* no answer in time */
	UP_ERR_AUTH, /* no upstream token: the API refused our credentials or is unreachable for them */
	UP_ERR_PROTOCOL, /* the API answered something that is not HTTP */
	UP_ERR_SHUTDOWN, /* the daemon is stopping */
	UP_ERR_INTERNAL, /* out of memory and the like */
};

/* Starts the worker thread.  NULL with a message in err on failure. */
struct upstream *upstream_new(const struct config *cfg, const struct up_events *ev, char *err,
			      size_t errlen);
/* Fails every transfer with UP_ERR_SHUTDOWN (unparking every parked front),
 * then stops the worker. */
void upstream_shutdown(struct upstream *u);
void upstream_free(struct upstream **u);

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
};
void upstream_counters(struct upstream *u, struct upstream_counters *out);

/*
 * Hands a request to the worker.  The request is copied; the hooks are kept.
 * The returned handle belongs to the caller until upstream_xfer_release().
 * NULL on ENOMEM, or for a detached request when the worker is gone.
 */
struct up_xfer *upstream_start(struct upstream *u, const struct up_request *req,
			       const struct up_hooks *hooks);

/*
 * Request body (UP_BODY_STREAM): copies what fits and stores the count in
 * *consumed.  When not everything fits the front is parked (it offers the rest
 * again once unparked).
 * After the transfer ended (the API answered early, or failed) everything is
 * accepted and dropped.  upstream_xfer_write_end() marks the end of the body.
 */
void upstream_xfer_write(struct up_xfer *x, const char *data, size_t len, size_t *consumed);
void upstream_xfer_write_end(struct up_xfer *x);

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

/* In a detached transfer's complete() hook: 1 when the answer arrived whole
 * (status, headers and the collected body are final), 0 when it did not:
 * upstream_xfer_error() says why, or upstream_xfer_too_large() is 1. */
int upstream_xfer_whole(struct up_xfer *x);
int upstream_xfer_too_large(struct up_xfer *x);
/* 1 when the body's end was framed (Content-Length, chunked, or no body by
 * status): an answer ended by a close may have been cut short. */
int upstream_xfer_framed(struct up_xfer *x);

/* The collected body, for the complete() hook. */
const void *upstream_xfer_collected(struct up_xfer *x, size_t *len);

/* The front is done with the handle: aborts a transfer still running.  NULLs *x. */
void upstream_xfer_release(struct up_xfer **x);

#endif
