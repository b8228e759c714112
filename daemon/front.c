/*
 * front: the request path of every client request, on the serve threads
 * (serve.c: one libmicrohttpd daemon per thread, epoll, suspend/resume).
 *
 * libmicrohttpd calls on_request() several times per request: once with the
 * headers (we only classify the request then: queueing a response on that
 * call would cost the connection its keep-alive), once per piece of body,
 * and once more with no body left, where we answer.  A request that must
 * wait for the API parks: the upstream module suspends the connection from
 * inside our own call, and resumes it from its worker when something
 * happened; libmicrohttpd then calls us again and we carry on where we were.
 */
#include "front.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "accounts.h"
#include "admin.h"
#include "audit.h"
#include "cache.h"
#include "check.h"
#include "cluster.h"
#include "clock.h"
#include "collect.h"
#include "config.h"
#include "conneg.h"
#include "deliver.h"
#include "flight.h"
#include "gateway.h"
#include "objtab.h"
#include "hdr.h"
#include "hitcache.h"
#include "ipcount.h"
#include "entry.h"
#include "keeper.h"
#include "localtoken.h"
#include "log.h"
#include "membuf.h"
#include "policy.h"
#include "reqcheck.h"
#include "scrape.h"
#include "serve.h"
#include "stats.h"
#include "statuspage.h"
#include "tls.h"
#include "traffic.h"
#include "upstream.h"

#define ADMIN_PREFIX "/_kaleidod/"
#define SMALL_BODY_MAX (64 * 1024) /* token endpoint and admin bodies */
#define READ_BLOCK (64 * 1024)
/* libmicrohttpd's per-connection pool (request headers, the send buffer):
 * it zeroes the whole pool for every request, so a large one costs every
 * hit (64 KiB measured at about 60% of 32 KiB's hit rate). */
#define CONN_POOL (32 * 1024)
#define HEADERS_MAX (16 * 1024) /* request header fields, answered 431 in JSON beyond */
#define NO_BODY (-2LL)          /* req.body_len: no Content-Length, no Transfer-Encoding */

struct front {
	struct front_deps d;
	struct serve *serve;
	unsigned threads;
	struct hitcache **hc;   /* one per serve thread, used by that thread alone */
	atomic_uint conns;      /* open client connections */
	struct ipcount *per_ip; /* open connections by address; NULL: no cap */
	unsigned id_prefix;     /* random, so ids differ across restarts */
	atomic_ullong next_id;
};

/* A connection's socket context points into marks, at the sum of what
 * on_connection() found: counted by address, past max_connections (its
 * first request is answered 503 and the connection closed), past
 * max_connections_per_ip (429, closed). */
enum { MARK_IP_COUNTED = 1, MARK_OVER_TOTAL = 2, MARK_OVER_IP = 4 };
static char marks[8];

enum step {
	STEP_RECV,   /* first call: strict checks, Host, Origin, loops */
	STEP_AUTH,   /* the gateway: whose token, and may they (scope, paths, rate) */
	STEP_ROUTE,  /* where it goes: admin, token, the cache or the API */
	STEP_BODY,   /* the body arrives: buffered, or streamed up as it comes */
	STEP_ADMIN,  /* /_kaleidod/... */
	STEP_PURGED, /* parked while the file thread purges; then the count */
	STEP_TOKEN,  /* the local token endpoint */
	STEP_LOGIN,  /* the gateway's token endpoint: parked while a secret is checked */
	STEP_LOOKUP, /* a cacheable GET or HEAD: hitcache, memory, file */
	STEP_WAIT,   /* parked on the key's fetch (objtab) */
	STEP_FETCH,  /* our own transfer: parked until the API's headers */
	STEP_STREAM, /* relay the answer (a write: once its invalidations are durable) */
	STEP_DONE,   /* answered */
};
/* A step's result when it set r->step and the next step runs now. */
#define GO_ON (-1)

/* X-Cache values, for cacheable requests only. */
enum xcache { XC_NONE = 0, XC_HIT, XC_MISS, XC_STALE, XC_BYPASS, XC_REVALIDATED };
const char *const front_outcome_names[FRONT_OUTCOMES] = { "none",  "HIT",    "MISS",
							  "STALE", "BYPASS", "REVALIDATED" };
#define xcache_names front_outcome_names

struct req {
	unsigned magic;
#define REQ_MAGIC 0x7a4d19e3u
	struct front *f;
	struct MHD_Connection *conn;
	int thread;           /* the serve thread whose daemon has the connection */
	char *target;         /* raw request target, as sent */
	enum step step;       /* where run() goes on; RECV until the first call */
	enum step after;      /* what runs once the body is read: ADMIN, TOKEN, LOOKUP or FETCH */
	atomic_int suspended; /* guards each suspend/resume pair */

	/* Cache decisions (family >= 0: a cacheable GET or HEAD). */
	int family;
	enum xcache xc;
	int may_store;
	int head;           /* HEAD: answered from the cache, never fetched for it */
	int only_if_cached; /* the client takes a stored answer or nothing */
	int gzip;           /* the client accepts gzip */
	int direct;         /* fetch on our own, streaming, outside the table's fetch */
	int counted;        /* hit/miss/bypass already counted */
	char *key;
	uint64_t hash;              /* objtab_hash(key) */
	struct entry *stale;        /* an expired entry: the fallback if the API fails */
	struct objtab_fetch *fetch; /* the key's fetch this request waits for */
	struct objtab_waiter wait;  /* its place among the fetch's waiters */

	/* Request body: buffered (token endpoint, small forwarded bodies) or streamed. */
	int streaming;
	long long body_len; /* declared; -1 chunked; NO_BODY */
	struct membuf body;
	int too_large;
	int write_ended;

	struct up_xfer *x;
	struct keeper_purge *purge; /* a purge under way (STEP_PURGED) */
	int invalidated;            /* a write's invalidations are done (durable, or given up on) */
	const char *reject;         /* why route_request() refused the request */
	char reject_buf[160];

	/* Who asks (the gateway): the account of the token, or of a login. */
	struct account *acct;
	struct gw_login *login;
	char login_name[ACCOUNTS_NAME_MAX + 1];

	/* For the debug access line and the audit trail. */
	char method[16];
	unsigned status;
	struct timespec started;
	char id[24];            /* X-Request-Id, with an audit trail */
	char cert_subject[256]; /* a verified client certificate's subject DN, or "" */
	uint64_t bytes_in;      /* request body */
	uint64_t bytes_out;     /* response body */
	struct timespec up_at;  /* when the API was asked (tv_sec 0: never) */
	double up_ms;           /* until its answer's headers; < 0 none */
};

/* ---- small helpers ---- */

static double ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) * 1e3 + (double)(now.tv_nsec - t->tv_nsec) / 1e6;
}

static int path_len(const char *target)
{
	const char *q = strchr(target, '?');

	return q ? (int)(q - target) : (int)strlen(target);
}

static int path_is(const struct req *r, const char *path)
{
	size_t n = strlen(path);

	return (size_t)path_len(r->target) == n && strncmp(r->target, path, n) == 0;
}

static enum MHD_Result queue_and_drop(struct req *r, unsigned status, struct MHD_Response *resp)
{
	enum MHD_Result ret;

	if (resp == NULL)
		return MHD_NO;
	if (r->xc != XC_NONE)
		MHD_add_response_header(resp, "X-Cache", xcache_names[r->xc]);
	if (r->id[0] != '\0')
		MHD_add_response_header(resp, "X-Request-Id", r->id);
	r->status = status;
	ret = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* A JSON answer owning body (malloc'd; freed on failure too), or NULL. */
static struct MHD_Response *json_response(char *body)
{
	struct MHD_Response *resp;

	if (body == NULL)
		return NULL;
	resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		free(body);
		return NULL;
	}
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	return resp;
}

/* A malloc'd body of the given type, with the admin pages' headers. */
static struct MHD_Response *text_response(char *body, size_t len, const char *type)
{
	struct MHD_Response *resp;

	if (body == NULL)
		return NULL;
	resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		free(body);
		return NULL;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	return resp;
}

static enum MHD_Result respond_json(struct req *r, unsigned status, char *body)
{
	r->bytes_out = body != NULL ? strlen(body) : 0;
	return queue_and_drop(r, status, json_response(body));
}

/*
 * The proxy's own errors: {"error": what went wrong, "detail": what
 * happened and what to do, "upstream": the API it talks to}, malloc'd.
 * detail is formatted whole before redaction: a secret cut at the end of a
 * short buffer would no longer match.
 */
static char *error_json(struct req *r, const char *error, const char *detail)
{
	char clean[1024];
	cJSON *o = cJSON_CreateObject();
	char *text;

	log_redact(clean, sizeof(clean), detail);
	cJSON_AddStringToObject(o, "error", error);
	cJSON_AddStringToObject(o, "detail", clean);
	cJSON_AddStringToObject(o, "upstream", upstream_url(r->f->d.up));
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

static enum MHD_Result respond_error(struct req *r, unsigned status, const char *error,
				     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result respond_error(struct req *r, unsigned status, const char *error,
				     const char *fmt, ...)
{
	char detail[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return respond_json(r, status, error_json(r, error, detail));
}

/* A connection past [server] max_connections: told so, and closed (an
 * answer queued on the first call closes the connection anyway). */
static enum MHD_Result respond_too_many(struct req *r, int per_ip)
{
	char detail[256];
	struct MHD_Response *resp;

	if (per_ip)
		snprintf(detail, sizeof(detail),
			 "this address already has %u connections open to kaleidod ([server] "
			 "max_connections_per_ip); reuse keep-alive connections, or close some",
			 r->f->d.cfg->max_connections_per_ip);
	else
		snprintf(detail, sizeof(detail),
			 "kaleidod already serves %u connections ([server] max_connections); "
			 "retry in a moment, reuse one keep-alive connection per client, or raise "
			 "the limit",
			 r->f->d.cfg->max_connections);
	if ((resp = json_response(error_json(r, "too many connections", detail))) != NULL) {
		MHD_add_response_header(resp, "Retry-After", "1");
		MHD_add_response_header(resp, "Connection", "close");
	}
	return queue_and_drop(r, per_ip ? MHD_HTTP_TOO_MANY_REQUESTS : MHD_HTTP_SERVICE_UNAVAILABLE,
			      resp);
}

/* status with Retry-After: the seconds in wait, rounded up (a client that
 * waits them gets in), at least 1. */
static enum MHD_Result respond_retry_later(struct req *r, unsigned status, const char *error,
					   const char *detail, double wait)
{
	struct MHD_Response *resp;
	long long secs = (long long)wait;
	char num[24];

	if ((double)secs < wait || secs < 1)
		secs++;
	snprintf(num, sizeof(num), "%lld", secs);
	if ((resp = json_response(error_json(r, error, detail))) != NULL)
		MHD_add_response_header(resp, "Retry-After", num);
	return queue_and_drop(r, status, resp);
}

/* Every connection to the API busy and the queue full (or too slow): 503
 * with Retry-After, so a client that honours it comes back later. */
static enum MHD_Result respond_busy(struct req *r, const char *detail)
{
	char text[1024];

	snprintf(text, sizeof(text), "%s. Retry in a moment.", detail);
	return respond_retry_later(r, MHD_HTTP_SERVICE_UNAVAILABLE, "upstream busy", text, 1);
}

/* Inside a pause the API asked for: its 429, passed on in kaleidod's words,
 * with the seconds the pause has left. */
static enum MHD_Result respond_throttled(struct req *r, const char *detail)
{
	char text[1024];

	snprintf(text, sizeof(text), "%s; retry after the pause.", detail);
	return respond_retry_later(r, MHD_HTTP_TOO_MANY_REQUESTS, "rate limited", text,
				   upstream_throttle_left(r->f->d.up, r->family));
}

static struct hitcache *thread_hitcache(struct front *f)
{
	int t = serve_thread();

	return t >= 0 && (unsigned)t < f->threads ? f->hc[t] : NULL;
}

/* Answers from an entry: a stored answer, or one a fetch brought.  A
 * fresh entry goes out as its shared HIT response; a client holding the
 * entry's ETag gets a 304. */
static enum MHD_Result respond_entry(struct req *r, struct entry *e, enum xcache xc)
{
	struct front *f = r->f;
	/* The shared HIT responses cannot carry a request's own id. */
	struct hitcache *hc = xc == XC_HIT && r->id[0] == '\0' ? thread_hitcache(f) : NULL;
	int64_t now = clock_wall();
	size_t len = 0;
	const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "If-None-Match");
	const struct hdr *h = entry_headers(e);
	struct MHD_Response *resp;
	int ok;

	r->xc = xc;
	if (xc == XC_HIT || xc == XC_STALE)
		stats_inc(f->d.stats, r->family, xc == XC_HIT ? STATS_HITS : STATS_STALE);
	if (entry_status(e) == 200 && conneg_etag_matches(inm, hdr_get(h, "ETag")))
		return queue_and_drop(r, MHD_HTTP_NOT_MODIFIED,
				      deliver_not_modified(e, r->gzip, NULL));
	if (!r->head && (!r->gzip || entry_gzip(e, &len) == NULL))
		entry_body(e, &len);
	r->bytes_out = len;
	/* A HIT goes out as this thread's own response when it holds e. */
	if (hc != NULL && (ok = hitcache_queue_hit(hc, e, r->hash, r->conn, r->gzip, now)) >= 0) {
		r->status = (unsigned)entry_status(e);
		return ok ? MHD_YES : MHD_NO;
	}
	resp = deliver_response(e, r->gzip, NULL, now);
	if (resp != NULL && xc == XC_STALE)
		MHD_add_response_header(resp, "Warning", "110 kaleidod \"Response is Stale\"");
	return queue_and_drop(r, (unsigned)entry_status(e), resp);
}

/* How long past expiry e may be served: while a refresh runs (*swr), and
 * when the API fails (*sie); kaleidod's settings, capped by the answer's
 * own Cache-Control. */
static void stale_limits(const struct req *r, struct entry *e, unsigned *swr, unsigned *sie)
{
	const struct config *cfg = r->f->d.cfg;

	policy_stale_limits(entry_headers(e), cfg->stale_while_revalidate, cfg->stale_if_error, swr,
			    sie);
}

static const char *request_field(void *arg, const char *name)
{
	return MHD_lookup_connection_value(arg, MHD_HEADER_KIND, name);
}

/* Whether e, stored only as the variant for requests without the fields
 * its Vary names, is not this request's answer (it carries one). */
static int other_variant(const struct req *r, const struct entry *e)
{
	const char *vary = entry_vary(e);

	return vary != NULL && policy_vary_carried(vary, request_field, r->conn);
}

/* objtab's usable(): whether e may answer the request arg. */
static int variant_ok(const struct entry *e, void *arg)
{
	return !other_variant(arg, e);
}

static const char *fetch_field(void *arg, const char *name)
{
	return hdr_get(arg, name);
}

/* Whether the answer a fetch brought is another variant than this
 * waiter's: its Vary names a field the two requests do not share. */
static int other_variant_of_fetch(const struct req *r, struct entry *e)
{
	const char *vary = entry_vary(e);

	return vary != NULL && !policy_vary_same(vary, request_field, r->conn, fetch_field,
						 (void *)objtab_fetch_request(r->fetch));
}

/* The expired entry may stand in for an answer the API failed to give. */
static int stale_usable(const struct req *r)
{
	unsigned swr, sie;

	if (r->stale == NULL || entry_status(r->stale) != 200)
		return 0;
	stale_limits(r, r->stale, &swr, &sie);
	return clock_wall() < entry_expires_at(r->stale) + (int64_t)sie;
}

/* ---- park/unpark: the upstream module suspends and resumes us ---- */

static void req_park(void *arg)
{
	struct req *r = arg;

	CHECK_OBJ(r, REQ_MAGIC);
	atomic_store(&r->suspended, 1);
	MHD_suspend_connection(r->conn);
}

static void req_unpark(void *arg)
{
	struct req *r = arg;

	/* Resuming a connection that is not suspended would cancel its next
	 * suspend in libmicrohttpd 0.9.75: resume only what we suspended.
	 * In external mode libmicrohttpd only marks it; its serve thread must
	 * be woken to run it (MHD_start_daemon drops MHD_USE_ITC there). */
	struct serve *serve;
	struct MHD_Connection *conn;
	int thread;

	CHECK_OBJ(r, REQ_MAGIC);
	serve = r->f->serve;
	conn = r->conn;
	thread = r->thread;
	/* Nothing of r after the resume: its serve thread may answer the
	 * connection and free r before we get to the wake-up. */
	if (atomic_exchange(&r->suspended, 0)) {
		MHD_resume_connection(conn);
		serve_wake(serve, thread);
	}
}

/* ---- the cache store of a streamed answer, on the upstream worker ----
 *
 * A cacheable answer a client streams itself (BYPASS: its no-cache asked
 * for a fresh copy) goes to a tee: the ring the client
 * reads and a collector that stores it.  The client's last byte waits for
 * the collector's end (upstream_start(), tee): a client that has the whole
 * answer finds it stored when it asks again.
 */

struct store {
	struct front *f;
	char *key, *path;
	int family;
	unsigned gen;
};

static void store_free(void *arg)
{
	struct store *s = arg;

	free(s->key);
	free(s->path);
	free(s);
}

/* The collector's done(): only a whole, framed answer is kept. */
static void store_done(void *arg, const struct collected *c)
{
	struct store *s = arg;

	if (c->end != COLLECT_WHOLE || !c->framed)
		return;
	flight_keep_streamed(s->f->d.flights, s->key, s->family, s->path, s->gen, c);
}

/* ---- forwarding ---- */

struct fwd_ctx {
	struct hdr *h;
	const char *connection;
	int accept_identity;
	int own_id; /* ours replaces the client's X-Request-Id */
	const char *xff;
};

/* Client fields that never go upstream as they came. */
static int fwd_skip(const struct fwd_ctx *c, const char *name)
{
	static const char *const own[] = {
		"Host",   "Authorization",   "X-Kal-Authorization", "Content-Length",
		"Expect", "X-Forwarded-For", "X-Forwarded-Proto",   "Via",
		NULL
	};

	for (int i = 0; own[i] != NULL; i++)
		if (strcasecmp(name, own[i]) == 0)
			return 1;
	if (c->accept_identity && strcasecmp(name, "Accept-Encoding") == 0)
		return 1;
	if (c->own_id && strcasecmp(name, "X-Request-Id") == 0)
		return 1;
	return hdr_is_hop_by_hop(name, c->connection);
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
				      size_t key_size, const char *value, size_t value_size)
{
	struct fwd_ctx *c = cls;

	if (fwd_skip(c, key))
		return MHD_YES;
	if (hdr_add(c->h, key, key_size, value ? value : "", value ? value_size : 0) < 0)
		return MHD_NO;
	return MHD_YES;
}

static int client_ip(struct MHD_Connection *conn, char *out, size_t len)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET)
		return inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, len) ?
			       0 :
			       -1;
	if (sa->sa_family == AF_INET6)
		return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out,
				 len) ?
			       0 :
			       -1;
	return -1;
}

/* The fields to forward: the client's end-to-end ones, plus X-Forwarded-*. */
static struct hdr *forward_headers(struct req *r, int accept_identity)
{
	struct fwd_ctx c = { 0 };
	char ip[INET6_ADDRSTRLEN] = "unknown", xff[1024], via[1024];
	const char *prev;

	if ((c.h = hdr_new()) == NULL)
		return NULL;
	c.connection = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Connection");
	c.accept_identity = accept_identity;
	c.own_id = r->id[0] != '\0';
	MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, collect_header, &c);
	client_ip(r->conn, ip, sizeof(ip));
	prev = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Forwarded-For");
	if (prev != NULL)
		snprintf(xff, sizeof(xff), "%s, %s", prev, ip);
	else
		snprintf(xff, sizeof(xff), "%s", ip);
	/* Via, ours appended (RFC 9110 7.6.3): how a loop is noticed. */
	prev = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Via");
	snprintf(via, sizeof(via), "%s%s1.1 %s", prev != NULL ? prev : "", prev != NULL ? ", " : "",
		 upstream_via_name(r->f->d.up));
	if (hdr_add(c.h, "X-Forwarded-For", 15, xff, strlen(xff)) < 0 ||
	    hdr_add(c.h, "X-Forwarded-Proto", 17, r->f->d.tls ? "https" : "http",
		    r->f->d.tls ? 5 : 4) < 0 ||
	    hdr_add(c.h, "Via", 3, via, strlen(via)) < 0 ||
	    (c.own_id && hdr_add(c.h, "X-Request-Id", 12, r->id, strlen(r->id)) < 0))
		hdr_free(&c.h);
	/* From here the API is asked: its time counts in the audit trail. */
	clock_gettime(CLOCK_MONOTONIC, &r->up_at);
	return c.h;
}

static int start_upstream(struct req *r, const char *method)
{
	struct front *f = r->f;
	struct up_request rq = { 0 };
	struct up_hooks hooks = { 0 };
	struct up_sink sink;
	struct store *s = NULL;
	struct hdr *h;

	/* A cacheable answer is asked for, and kept, in identity. */
	rq.accept_identity = r->family >= 0 && r->may_store;
	if ((h = forward_headers(r, rq.accept_identity)) == NULL)
		return -1;
	rq.method = method;
	rq.target = r->target;
	rq.headers = h;
	rq.scope = r->family;
	if (r->streaming) {
		rq.body_mode = UP_BODY_STREAM;
		rq.body_len = r->body_len;
	} else if (r->body.data != NULL || r->body_len == 0) {
		rq.body_mode = UP_BODY_BUFFERED;
		rq.body = r->body.data;
		rq.body_size = r->body.len;
	}
	hooks.park = req_park;
	hooks.unpark = req_unpark;
	hooks.arg = r;
	if (r->family >= 0 && r->may_store && !r->head && f->d.cfg->max_entry_size > 0) {
		if ((s = calloc(1, sizeof(*s))) == NULL || (s->key = strdup(r->key)) == NULL ||
		    (s->path = strndup(r->target, (size_t)path_len(r->target))) == NULL ||
		    collect_sink(f->d.cfg->max_entry_size, store_done, store_free, s, &sink) < 0) {
			if (s != NULL)
				store_free(s);
			hdr_free(&h);
			return -1;
		}
		s->f = f;
		s->family = r->family;
		s->gen = objtab_gen(f->d.tab, r->family);
	}
	r->x = upstream_start(f->d.up, &rq, &hooks, s != NULL ? &sink : NULL);
	hdr_free(&h);
	if (r->x == NULL)
		return -1;
	stats_inc(f->d.stats, r->family, STATS_FORWARDED);
	return 0;
}

static ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct req *r = cls;
	ssize_t n = upstream_xfer_read(r->x, buf, max);

	if (n > 0) {
		r->bytes_out += (uint64_t)n;
		return n;
	}
	if (n == 0)
		return 0; /* parked: suspended until the worker has more */
	if (n == -1)
		return MHD_CONTENT_READER_END_OF_STREAM;
	log_warnx("%.*s: the API's answer broke off; the client sees it truncated",
		  path_len(r->target), r->target);
	return MHD_CONTENT_READER_END_WITH_ERROR;
}

/* Only these change what the API holds; OPTIONS and the like do not. */
static int is_write(const char *method)
{
	return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	       strcmp(method, "PATCH") == 0 || strcmp(method, "DELETE") == 0;
}

/* Forgets the lists a successful write changed.  Returns the number to
 * wait on (keeper_await_durable()), 0 when nothing was invalidated. */
static unsigned long long invalidate_after_write(struct req *r, const char *method)
{
	struct front *f = r->f;
	uint32_t mask = policy_invalidates(f->d.policy, method, r->target, path_len(r->target));
	unsigned long long seq = 0;

	for (int i = 0; mask != 0 && i < policy_family_count(f->d.policy); i++) {
		if (!(mask & (1u << i)))
			continue;
		/* The cluster first: from here the shared cache neither reads
		 * nor fills the family here until Redis has the bump, so a
		 * fetch begun after the local invalidation cannot bring the
		 * pre-write list back from Redis. */
		cluster_invalidated(f->d.cluster, i);
		seq = keeper_invalidate(f->d.keeper, i);
		stats_inc(f->d.stats, i, STATS_INVALIDATIONS);
		log_debug("%s %.*s invalidated %s", method, path_len(r->target), r->target,
			  policy_family_name(f->d.policy, i));
	}
	return seq;
}

/* Headers that the proxy sets itself on a relayed answer. */
static const char *const relay_skip[] = { "Content-Length", NULL };

/* The API's status and fields, and its body streamed as it comes. */
static enum MHD_Result relay_answer(struct req *r)
{
	const struct hdr *h = upstream_xfer_headers(r->x);
	long status = upstream_xfer_status(r->x);
	long long len = upstream_xfer_length(r->x);
	struct MHD_Response *resp;
	struct hdr *out;

	if ((out = hdr_new()) == NULL || hdr_copy_end_to_end(out, h, relay_skip) < 0) {
		hdr_free(&out);
		return MHD_NO;
	}
	if (r->xc != XC_NONE)
		hdr_remove(out, "X-Cache"); /* ours says what this proxy did */
	/* Answers that never have a body get an empty one: a body reader of
	 * unknown size would make libmicrohttpd frame a 304 as chunked. */
	if (status < 200 || status == 204 || status == 304)
		resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	else
		resp = MHD_create_response_from_callback(len >= 0 ? (uint64_t)len :
								    MHD_SIZE_UNKNOWN,
							 READ_BLOCK, body_reader, r, NULL);
	for (size_t i = 0; resp != NULL && i < hdr_count(out); i++)
		MHD_add_response_header(resp, hdr_name(out, i), hdr_value(out, i));
	hdr_free(&out);
	return queue_and_drop(r, (unsigned)status, resp);
}

/* The API gave no answer: a stale copy if one may stand in, else our error. */
static enum MHD_Result answer_failure(struct req *r, enum up_error e, const char *detail)
{
	const char *url = upstream_url(r->f->d.up);

	stats_inc(r->f->d.stats, r->family, STATS_UPSTREAM_ERRORS);
	if (stale_usable(r) &&
	    (e == UP_ERR_CONNECT || e == UP_ERR_TIMEOUT || e == UP_ERR_AUTH ||
	     e == UP_ERR_PROTOCOL || e == UP_ERR_BUSY || e == UP_ERR_THROTTLED)) {
		log_info("%s: serving stale copy: %s", r->target, detail);
		return respond_entry(r, r->stale, XC_STALE);
	}
	switch (e) {
	case UP_ERR_TIMEOUT:
		return respond_error(r, MHD_HTTP_GATEWAY_TIMEOUT, "upstream timeout",
				     "%s did not answer in time (%s). The Kaleidoscope API is slow "
				     "or overloaded; retry later, or raise [upstream] timeout.",
				     url, detail);
	case UP_ERR_AUTH:
		return respond_error(r, MHD_HTTP_BAD_GATEWAY, "upstream authentication failed",
				     "%s. Check the API client id and secret kaleidod uses "
				     "(KALEIDOSCOPE_API_CLIENT_ID / _SECRET); kaleidod keeps "
				     "retrying by itself.",
				     detail);
	case UP_ERR_SHUTDOWN:
		return respond_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down",
				     "kaleidod is stopping; retry in a moment.");
	case UP_ERR_BUSY:
		return respond_busy(r, detail);
	case UP_ERR_THROTTLED:
		return respond_throttled(r, detail);
	case UP_ERR_INTERNAL:
		return respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error", "%s",
				     detail);
	case UP_ERR_PROTOCOL:
		return respond_error(r, MHD_HTTP_BAD_GATEWAY, "bad answer from upstream",
				     "%s answered something kaleidod cannot relay: %s", url,
				     detail);
	default:
		return respond_error(r, MHD_HTTP_BAD_GATEWAY, "upstream unreachable",
				     "cannot reach %s: %s. Check the network and "
				     "KALEIDOSCOPE_API_URL.",
				     url, detail);
	}
}

static void count(struct req *r, enum stats_counter c)
{
	if (!r->counted) {
		r->counted = 1;
		stats_inc(r->f->d.stats, r->family, c);
	}
}

/*
 * ---- the request's steps ----
 *
 * A request moves through named steps, kept in r->step, so that a
 * connection parked while the API, a fetch or the file works re-enters
 * the step it stopped in.  run() strings them together; each step answers
 * (and the request is DONE), parks (returning MHD_YES; libmicrohttpd calls
 * again once the connection is resumed), or sets the next step and returns
 * GO_ON.
 */

/* A step that answered: nothing more runs for this request. */
static int answered(struct req *r, enum MHD_Result ret)
{
	r->step = STEP_DONE;
	return ret;
}

/* A step that hands the request on to the next. */
static int go(struct req *r, enum step next)
{
	r->step = next;
	return GO_ON;
}

/* Fetched for this client alone and not kept (a variant the entry is not,
 * a HEAD, an answer lately too large, a fetch that could not start). */
static int fetch_alone(struct req *r)
{
	r->may_store = 0;
	return go(r, STEP_FETCH);
}

/* Sends the table's fetch to the API with this client's fields. */
static void run_fetch(struct req *r, struct objtab_fetch *fetch)
{
	struct hdr *h = forward_headers(r, 1); /* NULL (no memory): sent without */

	flight_run(r->f->d.flights, fetch, r->target, h);
	hdr_free(&h);
}

/*
 * LOOKUP: this thread's hitcache (no lock), then the object table, whose
 * verdict decides: a fresh entry is a HIT; an expired one within
 * stale-while-revalidate is served STALE while one refresh runs behind it;
 * MISS starts the key's one fetch and BUSY joins it, and both WAIT; PASS
 * goes to the API alone.
 */
static int step_lookup(struct req *r)
{
	struct front *f = r->f;
	struct hitcache *hc = thread_hitcache(f);
	struct objtab_ask ask = { 0 };
	struct objtab_answer ans;
	enum objtab_verdict v;
	enum MHD_Result ret;
	struct entry *e;
	int64_t now = clock_wall();

	/* The hit path: this thread's own copy, no lock and no shared write
	 * (the copy is borrowed, and respond_entry() needs no more). */
	if (hc != NULL && (e = hitcache_get(hc, r->key, r->hash)) != NULL &&
	    entry_status(e) == 200 && now < entry_expires_at(e) && !other_variant(r, e))
		return answered(r, respond_entry(r, e, XC_HIT));
	ask.key = r->key;
	ask.hash = r->hash;
	ask.family = r->family;
	ask.now = now;
	ask.flags = (r->only_if_cached ? OBJTAB_CACHED_ONLY : 0) | (r->head ? OBJTAB_NO_WAIT : 0);
	ask.usable = variant_ok;
	ask.arg = r;
	ask.park = req_park;
	ask.w = &r->wait;
	r->wait.unpark = req_unpark;
	r->wait.arg = r;
	/* MISS and BUSY park the request: it resumes in WAIT (and never
	 * before this returns, on this thread). */
	r->step = STEP_WAIT;
	v = objtab_lookup(f->d.tab, &ask, &ans);
	r->stale = ans.entry;
	r->fetch = ans.fetch;
	if (r->stale != NULL && hc != NULL && v != OBJTAB_PASS)
		hitcache_keep(hc, r->stale, r->hash);
	switch (v) {
	case OBJTAB_HIT:
		ret = respond_entry(r, r->stale, XC_HIT);
		entry_unref(&r->stale);
		return answered(r, ret);
	case OBJTAB_STALE:
		if (r->fetch != NULL) {
			run_fetch(r, r->fetch);
			objtab_fetch_unref(&r->fetch);
			stats_inc(f->d.stats, r->family, STATS_REFRESHES);
		}
		return answered(r, respond_entry(r, r->stale, XC_STALE));
	case OBJTAB_PASS:
		/* A variant, a HEAD on a miss, an answer lately too large. */
		return fetch_alone(r);
	case OBJTAB_MISS:
	case OBJTAB_BUSY:
		break;
	}
	if (r->only_if_cached) {
		if (stale_usable(r))
			return answered(r, respond_entry(r, r->stale, XC_STALE));
		r->xc = XC_MISS;
		count(r, STATS_MISSES);
		return answered(r,
				respond_error(r, MHD_HTTP_GATEWAY_TIMEOUT, "not cached",
					      "the request said only-if-cached and kaleidod "
					      "has no stored answer for it; ask again without it"));
	}
	r->xc = XC_MISS;
	count(r, STATS_MISSES);
	if (r->fetch == NULL)
		return go(r, STEP_FETCH); /* no memory for a fetch: on our own, still stored */
	if (v == OBJTAB_MISS)
		run_fetch(r, r->fetch);
	stats_inc(f->d.stats, r->family, v == OBJTAB_MISS ? STATS_FORWARDED : STATS_COALESCED);
	return MHD_YES; /* parked; resumed in WAIT when the fetch ends */
}

/*
 * WAIT: what the key's fetch ended with.  Its entry is this request's
 * answer (a MISS, or REVALIDATED after a 304), unless the API failed and a
 * stale copy may stand in; its error is answered; an answer too large to
 * keep, or a variant for fields this request does not share, is fetched
 * again for this client alone.
 */
static int step_wait(struct req *r)
{
	struct entry *e;
	const char *detail;
	int err, reval = 0;

	switch (objtab_fetch_outcome(r->fetch)) {
	case OBJTAB_ENTRY:
		e = objtab_fetch_entry(r->fetch, &reval);
		if (other_variant_of_fetch(r, e))
			break;
		if ((entry_status(e) >= 500 || entry_status(e) == 429) && stale_usable(r)) {
			log_info("%s: the API answered %ld; serving stale copy", r->target,
				 entry_status(e));
			stats_inc(r->f->d.stats, r->family, STATS_UPSTREAM_ERRORS);
			return answered(r, respond_entry(r, r->stale, XC_STALE));
		}
		if (reval)
			stats_inc(r->f->d.stats, r->family, STATS_REVALIDATED);
		return answered(r, respond_entry(r, e, reval ? XC_REVALIDATED : XC_MISS));
	case OBJTAB_ERROR:
		err = objtab_fetch_error(r->fetch, &detail);
		return answered(r, answer_failure(r, (enum up_error)err, detail));
	case OBJTAB_DIRECT:
		break;
	}
	objtab_fetch_unref(&r->fetch);
	return fetch_alone(r);
}

/*
 * FETCH: this request's own transfer (everything but a cacheable GET, and
 * what LOOKUP and WAIT hand on), started here unless a streamed upload
 * started it in ROUTE.  Parked until the API's status and fields are in.
 */
static int step_fetch(struct req *r, const char *method)
{
	struct front *f = r->f;

	if (r->x == NULL) {
		if (r->family >= 0) {
			if (r->xc == XC_NONE)
				r->xc = XC_MISS;
			count(r, r->xc == XC_BYPASS ? STATS_BYPASS : STATS_MISSES);
		}
		if (start_upstream(r, method) < 0)
			return answered(
				r,
				respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error",
					      "out of memory starting the upstream request"));
	}
	if (r->streaming && !r->write_ended) {
		upstream_xfer_write_end(r->x);
		r->write_ended = 1;
	}
	switch (upstream_xfer_poll(r->x)) {
	case UP_PENDING:
		return MHD_YES; /* parked; resumed in FETCH when the API answered */
	case UP_FAILED: {
		const char *detail;
		enum up_error e = upstream_xfer_error(r->x, &detail);

		return answered(r, answer_failure(r, e, detail));
	}
	case UP_HEADERS:
		break;
	}
	if (r->up_at.tv_sec != 0 && r->up_ms < 0)
		r->up_ms = ms_since(&r->up_at);
	if (stale_usable(r) &&
	    (upstream_xfer_status(r->x) >= 500 || upstream_xfer_status(r->x) == 429)) {
		log_info("%s: the API answered %ld; serving stale copy", r->target,
			 upstream_xfer_status(r->x));
		stats_inc(f->d.stats, r->family, STATS_UPSTREAM_ERRORS);
		upstream_xfer_release(&r->x);
		return answered(r, respond_entry(r, r->stale, XC_STALE));
	}
	return go(r, STEP_STREAM);
}

/* STREAM: the API's answer goes out.  The client learns of a write only
 * once the lists it changed are gone from the file too, so a crash right
 * after cannot bring them back. */
static int step_stream(struct req *r, const char *method)
{
	long status = upstream_xfer_status(r->x);

	if (status >= 200 && status < 300 && is_write(method) && !r->invalidated) {
		r->invalidated = 1;
		if (keeper_await_durable(r->f->d.keeper, invalidate_after_write(r, method),
					 req_park, req_unpark, r))
			return MHD_YES; /* parked; resumed in STREAM once durable */
	}
	return answered(r, relay_answer(r));
}

/* ---- the local token endpoint ---- */

/* The gateway's grant: a refresh answers at once, a login parks in LOGIN
 * while a login thread checks the secret. */
static int gateway_token(struct req *r, struct localtoken_request *req)
{
	char ip[INET6_ADDRSTRLEN] = "unknown";
	int parked;

	client_ip(r->conn, ip, sizeof(ip));
	r->login = gateway_login(r->f->d.gw, req, ip, req_park, req_unpark, r, &parked);
	if (r->login == NULL)
		return respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error",
				     "out of memory for a login");
	r->step = STEP_LOGIN;
	return parked ? MHD_YES : GO_ON;
}

/* LOGIN: the gateway's verdict on a token request. */
static int step_login(struct req *r)
{
	char *answer = NULL;
	double wait;
	enum gw_login_result res = gateway_login_result(&r->login, &answer, r->login_name,
							sizeof(r->login_name), &wait);

	switch (res) {
	case GW_LOGIN_OK:
		stats_inc(r->f->d.stats, -1, STATS_LOCAL_GRANTS);
		return answered(r, respond_json(r, MHD_HTTP_OK, answer));
	case GW_LOGIN_DENIED:
		return answered(
			r,
			respond_error(r, MHD_HTTP_UNAUTHORIZED, "invalid_client",
				      "the client id and secret (or the refresh token) are not "
				      "those of an account of this gateway; ask its administrator "
				      "for an account (kaleidod account add)"));
	case GW_LOGIN_GUESSING:
		return answered(r, respond_retry_later(
					   r, MHD_HTTP_TOO_MANY_REQUESTS, "too many failed logins",
					   "this address sent too many wrong secrets; the "
					   "login was not checked. Retry after the "
					   "Retry-After seconds, with the right secret",
					   wait));
	case GW_LOGIN_FULL:
		return answered(r, respond_busy(r, "the gateway holds as many tokens as it can"));
	case GW_LOGIN_STOPPING:
		return answered(r, respond_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down",
						 "kaleidod is stopping; retry in a moment."));
	case GW_LOGIN_ERROR:
	default:
		return answered(r,
				respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error",
					      "no memory or randomness for a token"));
	}
}

/* TOKEN: the answer, or (the gateway) on to LOGIN. */
static int local_token(struct req *r, const char *method)
{
	const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
	char *answer;

	if (strcmp(method, "POST") != 0)
		return respond_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
				     "the token endpoint takes POST with a form or JSON body");
	if (r->too_large)
		return respond_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request too large",
				     "a token request body is at most 64 KiB");
	struct localtoken_request req;

	localtoken_read(ct, r->body.data ? r->body.data : "", r->body.len, &req);
	switch (req.grant) {
	case LOCALTOKEN_CLIENT_CREDENTIALS:
	case LOCALTOKEN_REFRESH:
		if (r->f->d.gw != NULL)
			return gateway_token(r, &req);
		localtoken_request_clear(&req);
		break;
	case LOCALTOKEN_MISSING:
		localtoken_request_clear(&req);
		return respond_error(r, MHD_HTTP_BAD_REQUEST, "invalid_request",
				     "grant_type is missing: send grant_type=client_credentials "
				     "(form-encoded or JSON)");
	case LOCALTOKEN_UNSUPPORTED:
		localtoken_request_clear(&req);
		return respond_error(r, MHD_HTTP_BAD_REQUEST, "unsupported_grant_type",
				     "grant_type must be client_credentials, or refresh_token with "
				     "a refresh_token");
	}
	if ((answer = localtoken_answer(r->f->d.cfg->token_lifetime)) == NULL)
		return respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error",
				     "no randomness or memory available for a token");
	stats_inc(r->f->d.stats, -1, STATS_LOCAL_GRANTS);
	return respond_json(r, MHD_HTTP_OK, answer);
}

/* ---- admin ---- */

/* Whether a Content-Type is application/json (parameters aside). */
static int is_json(const char *ct)
{
	size_t n;

	if (ct == NULL)
		return 0;
	ct += strspn(ct, " \t");
	n = strcspn(ct, "; \t");
	return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* ADMIN, the pages that are not JSON: the metrics (Prometheus text), the
 * status page and its script.  The page's policy lets it load nothing but
 * its own script and talk to nothing but this daemon. */
static int step_admin_page(struct req *r)
{
	struct MHD_Response *resp;
	size_t len = 0;
	char *body;

	if (path_is(r, ADMIN_PREFIX "metrics")) {
		body = scrape_metrics(&r->f->d, front_connections(r->f), &len);
		resp = text_response(body, len, "text/plain; version=0.0.4; charset=utf-8");
	} else if (path_is(r, ADMIN_PREFIX "status.js")) {
		body = statuspage_script(&len);
		resp = text_response(body, len, "text/javascript; charset=utf-8");
	} else {
		const char *q = strchr(r->target, '?');

		body = statuspage_html(&r->f->d, q != NULL ? q + 1 : NULL, front_connections(r->f),
				       &len);
		resp = text_response(body, len, "text/html; charset=utf-8");
		if (resp != NULL) {
			MHD_add_response_header(resp, "Content-Security-Policy", STATUSPAGE_CSP);
			MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
		}
	}
	if (resp == NULL)
		return answered(r, respond_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR,
						 "internal error", "out of memory"));
	r->bytes_out = len;
	return answered(r, queue_and_drop(r, MHD_HTTP_OK, resp));
}

/* ADMIN: /_kaleidod/health and /stats answer at once; a purge runs on the
 * file thread while the request is parked (PURGED answers it). */
static int step_admin(struct req *r, const char *method)
{
	unsigned status = 200;
	char *body = NULL;

	if (path_is(r, ADMIN_PREFIX "purge")) {
		const char *why = NULL;
		int parked;

		if (strcmp(method, "POST") != 0)
			return answered(
				r, respond_error(
					   r, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
					   "purge takes POST with a JSON body: {\"family\": NAME}, "
					   "{\"prefix\": \"/path\"} or {\"all\": true}"));
		if (r->too_large)
			return answered(r, respond_error(r, MHD_HTTP_CONTENT_TOO_LARGE,
							 "request too large",
							 "a purge request body is at most 64 KiB"));
		/* A form or text/plain body is what a page can post cross-site
		 * without asking first: the admin takes JSON only. */
		if (!is_json(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type")))
			return answered(
				r, respond_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
						 "unsupported media type",
						 "purge takes Content-Type: application/json"));
		r->purge =
			admin_purge_start(&r->f->d, r->body.data ? r->body.data : "", r->body.len,
					  req_park, req_unpark, r, &parked, &status, &why);
		if (r->purge == NULL && status == MHD_HTTP_BAD_REQUEST)
			return answered(r,
					respond_error(r, status, "bad purge request",
						      "%s: send {\"family\": NAME}, "
						      "{\"prefix\": \"/path\"} or {\"all\": true}",
						      why));
		if (r->purge == NULL)
			return answered(r, respond_error(r, status, "internal error", "%s", why));
		r->step = STEP_PURGED;
		if (!parked)
			return GO_ON;
		log_debug("purge queued for the cache file's thread");
		return MHD_YES; /* parked: resumed in PURGED */
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return answered(r,
				respond_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
					      "the admin endpoints take GET (purge takes POST)"));
	if (path_is(r, ADMIN_PREFIX "health"))
		body = admin_health(&r->f->d, &status);
	else if (path_is(r, ADMIN_PREFIX "stats"))
		body = admin_stats(&r->f->d, &status);
	else if (path_is(r, ADMIN_PREFIX "metrics") || path_is(r, ADMIN_PREFIX) ||
		 path_is(r, ADMIN_PREFIX "status.js"))
		return step_admin_page(r);
	else
		return answered(r, respond_error(r, MHD_HTTP_NOT_FOUND, "not found",
						 "kaleidod's own endpoints are " ADMIN_PREFIX
						 " (the status page), " ADMIN_PREFIX
						 "health, " ADMIN_PREFIX "stats, " ADMIN_PREFIX
						 "metrics and " ADMIN_PREFIX "purge"));
	return answered(r, respond_json(r, status, body));
}

/* PURGED: the purge ran (or the daemon is stopping): its count. */
static int step_purged(struct req *r)
{
	unsigned status;
	const char *why = NULL;
	char *body = admin_purge_answer(&r->purge, &status, &why);

	if (body == NULL && why != NULL)
		return answered(r, respond_error(r, status,
						 status == MHD_HTTP_SERVICE_UNAVAILABLE ?
							 "shutting down" :
							 "purge failed",
						 "%s", why));
	return answered(r, respond_json(r, status, body));
}

/* ---- libmicrohttpd callbacks ---- */

/* What RECV's checks found: CHECK_OK, or why the request is refused. */
enum {
	CHECK_OK = 0,
	CHECK_REJECT_FRAMING,
	CHECK_REJECT_HOST,
	CHECK_REJECT_TARGET,
	CHECK_REJECT_HOST_NAME,
	CHECK_REJECT_CROSS_SITE,
	CHECK_REJECT_CLIENT_CERT,    /* 403: mTLS without a good certificate */
	CHECK_REJECT_HEADERS_SIZE,   /* 431 */
	CHECK_REJECT_LOOP,           /* 508: the request came back to us */
	CHECK_REJECT_MALFORMED,      /* 400, reason in r->reject */
	CHECK_REJECT_UNSUPPORTED_TE, /* 501 */
};

/* What the strict reading of the header fields found. */
#define MAX_CL 8
struct fields {
	const char *why; /* the first bad field's reason */
	char name[64];   /* its name, as far as printable */
	const char *cl[MAX_CL];
	size_t ncl;
	char te[256]; /* Transfer-Encoding field lines joined */
	int te_overflow;
	int nte;      /* Transfer-Encoding field lines */
	size_t bytes; /* of all the fields, names and values */
};

/*
 * Whether a field was continued on the next line (obs-fold, RFC 9112 5.2).
 * libmicrohttpd 0.9.75 glues the continuation to the field's *name*
 * ("X-Fold: a" + " b" becomes "X-Foldb: a"), in a copy of the name made in
 * its connection pool; unfolded, the name and the value still sit where
 * the request line put them, "Name" NUL (was ':') optional whitespace
 * "value", in the same read buffer.  So a value that does not follow its
 * name that way was folded.  Both pointers are into the one pool, so the
 * bytes between them can be read.
 */
static int folded(const char *key, size_t key_size, const char *value)
{
	const char *p = key + key_size;

	if (value == NULL || value <= p || value - p > 4096 || *p != '\0')
		return 1;
	for (p++; p < value; p++)
		if (*p != ' ' && *p != '\t')
			return 1;
	return 0;
}

static enum MHD_Result check_field(void *cls, enum MHD_ValueKind kind, const char *key,
				   size_t key_size, const char *value, size_t value_size)
{
	struct fields *fl = cls;
	const char *why = reqcheck_field(key, key_size, value, value_size);

	fl->bytes += key_size + value_size + 4; /* ": " and CRLF */
	if (why == NULL && folded(key, key_size, value))
		why = "a header field is continued on the next line (obs-fold); send it on one "
		      "line";

	(void)kind;
	if (why != NULL) {
		size_t n = 0;

		for (size_t i = 0; i < key_size && n + 1 < sizeof(fl->name); i++)
			fl->name[n++] = key[i] > 0x20 && key[i] < 0x7f ? key[i] : '?';
		fl->name[n] = '\0';
		fl->why = why;
		return MHD_NO;
	}
	if (strcasecmp(key, "Content-Length") == 0) {
		if (fl->ncl == MAX_CL) {
			fl->why = "too many Content-Length fields";
			return MHD_NO;
		}
		fl->cl[fl->ncl++] = value != NULL ? value : "";
	} else if (strcasecmp(key, "Transfer-Encoding") == 0) {
		size_t at = strlen(fl->te);

		fl->nte++;
		if (at + value_size + 3 > sizeof(fl->te))
			fl->te_overflow = 1;
		else
			snprintf(fl->te + at, sizeof(fl->te) - at, "%s%s", at > 0 ? ", " : "",
				 value != NULL ? value : "");
	}
	return MHD_YES;
}

/* The strict reading of the request line and fields (libmicrohttpd
 * 0.9.75 is lenient): CHECK_OK or a refusal, its reason in r->reject. */
static int check_request(struct req *r)
{
	struct fields fl = { 0 };

	if ((r->reject = reqcheck_target(r->target)) != NULL)
		return CHECK_REJECT_MALFORMED;
	MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, check_field, &fl);
	/* Beyond CONN_POOL libmicrohttpd answers 431 itself, in HTML; below it
	 * this one says so in JSON. */
	if (fl.bytes > HEADERS_MAX)
		return CHECK_REJECT_HEADERS_SIZE;
	if (fl.why == NULL && fl.ncl > 0)
		fl.why = reqcheck_content_length(fl.cl, fl.ncl);
	if (fl.why != NULL) {
		/* The field's name, in printable bytes, goes into the answer. */
		snprintf(r->reject_buf, sizeof(r->reject_buf), "%s%s%s", fl.why,
			 fl.name[0] ? ": " : "", fl.name);
		r->reject = r->reject_buf;
		return CHECK_REJECT_MALFORMED;
	}
	if (fl.nte > 0) {
		/* libmicrohttpd reads the first field line only: one, exactly. */
		switch (fl.te_overflow || fl.nte > 1 ? REQCHECK_TE_BAD :
						       reqcheck_transfer_encoding(fl.te)) {
		case REQCHECK_TE_CHUNKED:
			break;
		case REQCHECK_TE_BAD:
			r->reject = "Transfer-Encoding must end in chunked (RFC 9112 6.3)";
			return CHECK_REJECT_MALFORMED;
		case REQCHECK_TE_UNSUPPORTED:
			r->reject = "kaleidod takes no transfer coding but chunked";
			return CHECK_REJECT_UNSUPPORTED_TE;
		}
	}
	return CHECK_OK;
}

/* Whether the space-separated list names word (len bytes), ignoring case. */
static int word_in(const char *list, const char *word, size_t len)
{
	while (list != NULL && *list != '\0') {
		size_t n = strcspn(list, " ");

		if (n == len && n > 0 && strncasecmp(list, word, n) == 0)
			return 1;
		list += n;
		list += strspn(list, " ");
	}
	return 0;
}

/*
 * Whether a Host names this daemon: a loopback address, localhost, or one of
 * [server] server_names.  Any other name is how a DNS-rebinding page reaches
 * a daemon on the loopback (its name now resolves to 127.0.0.1, and the
 * browser lets it read the answers as its own).
 */
static int host_allowed(const struct front *f, const char *host)
{
	char name[256];
	size_t n;
	struct in_addr a4;
	struct in6_addr a6;

	if (host[0] == '[') {
		n = strcspn(host + 1, "]");
		if (host[1 + n] != ']' || n >= sizeof(name))
			return 0;
		memcpy(name, host + 1, n);
		name[n] = '\0';
		return inet_pton(AF_INET6, name, &a6) == 1 &&
		       (IN6_IS_ADDR_LOOPBACK(&a6) ||
			(IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127));
	}
	if ((n = strcspn(host, ":")) >= sizeof(name))
		return 0;
	memcpy(name, host, n);
	name[n] = '\0';
	if (n > 0 && name[n - 1] == '.')
		name[--n] = '\0'; /* the absolute form of the same name */
	if (strcasecmp(name, "localhost") == 0)
		return 1;
	if (inet_pton(AF_INET, name, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127)
		return 1;
	return word_in(f->d.cfg->server_names, name, n);
}

/*
 * Whether a browser page of another site sent this: an Origin that
 * [server] allowed_origins does not list, or Sec-Fetch-Site saying so.
 * Such a page could otherwise post through the workspace token, or purge
 * the cache, from the user's own browser (scripts and SDKs send neither).
 */
/* Origin names this daemon as the request's Host does (checked before):
 * our own status page posting a purge. */
static int same_origin(const struct front *f, struct MHD_Connection *conn, const char *origin)
{
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
	const char *scheme = f->d.tls != NULL ? "https://" : "http://";
	size_t n = strlen(scheme);

	return host != NULL && strncmp(origin, scheme, n) == 0 && strcmp(origin + n, host) == 0;
}

static int cross_site(const struct front *f, struct MHD_Connection *conn)
{
	const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
	const char *site = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-Fetch-Site");

	if (origin != NULL)
		return !same_origin(f, conn, origin) &&
		       !word_in(f->d.cfg->allowed_origins, origin, strlen(origin));
	return site != NULL &&
	       (strcasecmp(site, "cross-site") == 0 || strcasecmp(site, "same-site") == 0);
}

/* The strict reading of the request line and fields, Via, framing, Host
 * and Origin: CHECK_OK or why the request is refused. */
static int check_message(struct req *r, const char *method, const char *version)
{
	struct front *f = r->f;
	const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
	const char *te = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Transfer-Encoding");
	const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Host");
	const char *via;
	int rc;

	r->body_len = te != NULL ? -1 : (cl != NULL ? strtoll(cl, NULL, 10) : NO_BODY);
	if ((rc = check_request(r)) != CHECK_OK)
		return rc;
	/* Our own name in Via: we sent this, and it came back. */
	if ((via = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Via")) != NULL &&
	    strstr(via, upstream_via_name(f->d.up)) != NULL) {
		upstream_note_loop(f->d.up);
		return CHECK_REJECT_LOOP;
	}
	/* Both framings at once is how requests are smuggled past proxies
	 * (RFC 9112 6.1), and HTTP/1.1 requires Host (3.2): refuse both.
	 * Answering on this first call also makes libmicrohttpd close the
	 * connection, so nothing that follows is read as another request. */
	if (cl != NULL && te != NULL)
		return CHECK_REJECT_FRAMING;
	/* Only origin-form ("/path?query"): kaleidod is not a forward proxy,
	 * and nothing but a path may follow the API's URL. */
	if (r->target[0] != '/' || strchr(r->target, '#') != NULL)
		return CHECK_REJECT_TARGET;
	/* A bodiless method that declares an empty body has none. */
	if (r->body_len == 0 && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
		r->body_len = NO_BODY;
	if (strcmp(version, MHD_HTTP_VERSION_1_1) == 0 && host == NULL)
		return CHECK_REJECT_HOST;
	if (host != NULL && !host_allowed(f, host))
		return CHECK_REJECT_HOST_NAME;
	if (cross_site(f, r->conn))
		return CHECK_REJECT_CROSS_SITE;
	if (f->d.tls != NULL) {
		switch (tls_check_client(f->d.tls, r->conn, r->cert_subject,
					 sizeof(r->cert_subject))) {
		case TLS_CLIENT_NONE:
		case TLS_CLIENT_VERIFIED:
			break;
		case TLS_CLIENT_MISSING:
			r->reject = "this gateway takes only clients with a certificate its "
				    "[server] tls_client_ca signed; present one";
			return CHECK_REJECT_CLIENT_CERT;
		case TLS_CLIENT_INVALID:
			r->reject = "the client certificate is not one [server] tls_client_ca "
				    "signed, or it expired";
			return CHECK_REJECT_CLIENT_CERT;
		}
	}
	return CHECK_OK;
}

/* RECV: the first call, with the request line and fields.  Nothing is
 * forwarded or routed before these checks pass. */
static int step_recv(struct req *r, const char *method, const char *version)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	/* Kept for the access line; a longer method is cut, not an error. */
	size_t mlen = strnlen(method, sizeof(r->method) - 1);
	int verdict, mark;

	memcpy(r->method, method, mlen);
	r->method[mlen] = '\0';
	r->family = -1;
	mark = ci != NULL && ci->socket_context != NULL ?
		       (int)((const char *)ci->socket_context - marks) :
		       0;
	if (mark & MARK_OVER_TOTAL)
		return answered(r, respond_too_many(r, 0));
	if (mark & MARK_OVER_IP)
		return answered(r, respond_too_many(r, 1));
	verdict = check_message(r, method, version);
	if (verdict == CHECK_OK)
		return go(r, STEP_AUTH);
	stats_inc(r->f->d.stats, -1, STATS_REQUESTS);
	switch (verdict) {
	case CHECK_REJECT_FRAMING:
		return answered(r, respond_error(r, MHD_HTTP_BAD_REQUEST, "bad request",
						 "the request has both Content-Length and "
						 "Transfer-Encoding; send one"));
	case CHECK_REJECT_HOST:
		return answered(r, respond_error(r, MHD_HTTP_BAD_REQUEST, "bad request",
						 "an HTTP/1.1 request needs a Host header"));
	case CHECK_REJECT_TARGET:
		return answered(
			r, respond_error(r, MHD_HTTP_BAD_REQUEST, "bad request",
					 "the request target must be a path starting with '/' "
					 "(kaleidod is the API's base URL, not a forward proxy)"));
	case CHECK_REJECT_LOOP:
		return answered(
			r, respond_error(r, MHD_HTTP_LOOP_DETECTED, "loop detected",
					 "this request was sent by this kaleidod and came back to "
					 "it: its API URL (KALEIDOSCOPE_API_URL or [upstream] url) "
					 "leads to itself, directly or through another proxy; "
					 "point it at the Kaleidoscope API"));
	case CHECK_REJECT_MALFORMED:
		return answered(
			r, respond_error(r, MHD_HTTP_BAD_REQUEST, "bad request", "%s", r->reject));
	case CHECK_REJECT_UNSUPPORTED_TE:
		return answered(r, respond_error(r, MHD_HTTP_NOT_IMPLEMENTED, "not implemented",
						 "%s", r->reject));
	case CHECK_REJECT_HOST_NAME:
		return answered(r, respond_error(r, MHD_HTTP_MISDIRECTED_REQUEST, "unknown host",
						 "kaleidod answers requests for a loopback "
						 "address, localhost or a name in [server] "
						 "server_names; this Host is none of them"));
	case CHECK_REJECT_HEADERS_SIZE:
		return answered(
			r, respond_error(r, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE,
					 "request header fields too large",
					 "the request's header fields take more than %d KiB; "
					 "send less (a cookie jar or a long token in a header?)",
					 HEADERS_MAX / 1024));
	case CHECK_REJECT_CLIENT_CERT:
		return answered(r, respond_error(r, MHD_HTTP_FORBIDDEN,
						 "client certificate refused", "%s", r->reject));
	case CHECK_REJECT_CROSS_SITE:
		return answered(r,
				respond_error(r, MHD_HTTP_FORBIDDEN, "cross-site request refused",
					      "a web page of another site sent this request "
					      "(Origin or Sec-Fetch-Site); kaleidod serves "
					      "scripts and SDKs, and browser pages only from "
					      "[server] allowed_origins"));
	}
	return answered(r, MHD_NO);
}

/* ---- the gateway's checks ---- */

static int client_is_loopback(struct req *r)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	if (sa != NULL && sa->sa_family == AF_INET)
		return ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >>
			       24 ==
		       127;
	if (sa != NULL && sa->sa_family == AF_INET6) {
		const struct in6_addr *a =
			&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

/* 401, with the way to a token. */
static int refuse_unauthenticated(struct req *r, const char *error, const char *detail)
{
	struct MHD_Response *resp = json_response(error_json(r, error, detail));

	if (resp != NULL)
		MHD_add_response_header(resp, "WWW-Authenticate",
					"Bearer realm=\"kaleidod\", error=\"invalid_token\"");
	return answered(r, queue_and_drop(r, MHD_HTTP_UNAUTHORIZED, resp));
}

#define HOW_TO_LOG_IN                                                                \
	"this kaleidod is a lab gateway: get a token with POST " UPSTREAM_TOKEN_PATH \
	" (grant_type=client_credentials with your account's client id and secret, " \
	"as the SDKs do), then send it as Authorization: Bearer TOKEN or "           \
	"X-Kal-Authorization: Bearer TOKEN"

/*
 * AUTH: with accounts, every request but the token endpoint and health
 * needs a token of an account whose scopes, paths and rate allow it;
 * this runs before any cache lookup, so a stored answer reaches only
 * those allowed to ask for it.  Without accounts it lets everything on.
 */
static int auth_check(struct req *r, const char *method)
{
	struct front *f = r->f;
	int admin = strncmp(r->target, ADMIN_PREFIX, strlen(ADMIN_PREFIX)) == 0;
	const char *token;
	enum accounts_verdict verdict;
	char scopes[32];
	double wait;
	size_t limit;
	int writer;

	if (f->d.gw == NULL || path_is(r, UPSTREAM_TOKEN_PATH) ||
	    path_is(r, ADMIN_PREFIX "health") ||
	    (admin && f->d.cfg->admin_from_loopback && client_is_loopback(r)))
		return go(r, STEP_ROUTE);
	token = gateway_bearer(
		MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Kal-Authorization"),
		MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization"));
	if (token == NULL)
		return refuse_unauthenticated(r, "authentication required", HOW_TO_LOG_IN);
	if ((r->acct = gateway_check(f->d.gw, token)) == NULL)
		return refuse_unauthenticated(
			r, "invalid token",
			"the token is unknown, expired or revoked; " HOW_TO_LOG_IN);
	account_count(r->acct, ACCOUNT_REQUESTS);
	/* An account bound to a client certificate: that one, or nothing. */
	if (account_cert(r->acct)[0] != '\0' &&
	    strcmp(account_cert(r->acct), r->cert_subject) != 0) {
		account_count(r->acct, ACCOUNT_DENIED);
		return answered(
			r,
			respond_error(r, MHD_HTTP_FORBIDDEN, "client certificate refused",
				      "account '%s' is used only with its own client "
				      "certificate (subject %s); this connection %s",
				      account_name(r->acct), account_cert(r->acct),
				      r->cert_subject[0] ? "presented another" : "presented none"));
	}
	verdict = account_allows(r->acct, method, r->target, (size_t)path_len(r->target), admin);
	if (verdict != ACCOUNTS_ALLOWED) /* the words for the refusal, only then */
		accounts_scopes_text(account_scopes(r->acct), scopes, sizeof(scopes));
	switch (verdict) {
	case ACCOUNTS_ALLOWED:
		break;
	case ACCOUNTS_NEEDS_WRITE:
		account_count(r->acct, ACCOUNT_DENIED);
		return answered(r, respond_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
						 "account '%s' has scope %s: %s needs scope write",
						 account_name(r->acct), scopes, method));
	case ACCOUNTS_NEEDS_ADMIN:
		account_count(r->acct, ACCOUNT_DENIED);
		return answered(r, respond_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
						 "account '%s' has scope %s: kaleidod's own "
						 "endpoints need scope admin",
						 account_name(r->acct), scopes));
	case ACCOUNTS_OUTSIDE:
		account_count(r->acct, ACCOUNT_DENIED);
		return answered(r, respond_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
						 "account '%s' may use only its own paths; %.*s is "
						 "not among them",
						 account_name(r->acct), path_len(r->target),
						 r->target));
	}
	/* Before any byte of it is read, or sent on; by scope, since a reader's
	 * body (a search) is small and a writer's (an import) may be large. */
	writer = (account_scopes(r->acct) & ACCOUNTS_WRITE) != 0;
	limit = writer ? f->d.cfg->max_body : f->d.cfg->max_body_read;
	if (r->body_len > 0 && (unsigned long long)r->body_len > limit)
		return answered(r, respond_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request too large",
						 "the body declares %lld bytes; account '%s' may "
						 "send at most %zu ([gateway] %s)",
						 r->body_len, account_name(r->acct), limit,
						 writer ? "max_body" : "max_body_read"));
	if ((wait = account_take(r->acct, (double)r->started.tv_sec +
						  (double)r->started.tv_nsec / 1e9)) > 0) {
		char detail[256];

		account_count(r->acct, ACCOUNT_RATE_LIMITED);
		snprintf(detail, sizeof(detail),
			 "account '%s' may make %s requests; retry after the Retry-After "
			 "seconds",
			 account_name(r->acct), account_rate_text(r->acct));
		return answered(r, respond_retry_later(r, MHD_HTTP_TOO_MANY_REQUESTS,
						       "rate limited", detail, wait));
	}
	return go(r, STEP_ROUTE);
}

static int step_auth(struct req *r, const char *method)
{
	int ret = auth_check(r, method);

	/* A request let through is counted in ROUTE, by family. */
	if (r->step == STEP_DONE)
		stats_inc(r->f->d.stats, -1, STATS_REQUESTS);
	return ret;
}

/* The cache decisions for a GET or HEAD of a family's list: its key,
 * whether the answer may be kept, and what the client asks of it.
 * -1 on ENOMEM. */
static int route_cacheable(struct req *r, int fam)
{
	struct front *f = r->f;
	const char *cc = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Cache-Control");
	const char *pragma = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Pragma");
	const char *range = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Range");
	struct policy_cc pc;

	r->family = fam;
	policy_parse_cache_control(cc, &pc);
	r->may_store = !pc.no_store && !r->head;
	r->only_if_cached = pc.only_if_cached;
	r->gzip = conneg_accepts_gzip(
		MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Accept-Encoding"));
	if (pc.no_cache || pc.no_store ||
	    (pragma != NULL && strcasestr(pragma, "no-cache") != NULL))
		r->xc = XC_BYPASS;
	/* A slice, or a GET with a body, is not the answer others get; a URL
	 * that carries a credential is not written to the cache file. */
	if (range != NULL || r->body_len != NO_BODY || audit_has_credential(r->target)) {
		r->xc = XC_BYPASS;
		r->may_store = 0;
	}
	r->key = policy_cache_key(upstream_url(f->d.up), upstream_client_id(f->d.up), "GET",
				  r->target);
	if (r->key == NULL)
		return -1;
	r->hash = objtab_hash(r->key);
	return 0;
}

/* ROUTE: which step answers once the body is in, and how the body
 * travels: small bodies are buffered whole, so a 401 can replay them; the
 * rest streams up to the API as it arrives, with bounded memory. */
static int step_route(struct req *r, const char *method)
{
	struct front *f = r->f;
	int plen = path_len(r->target), fam, rc = 0;

	r->after = STEP_FETCH;
	r->head = strcmp(method, "HEAD") == 0;
	if (strncmp(r->target, ADMIN_PREFIX, strlen(ADMIN_PREFIX)) == 0) {
		r->after = STEP_ADMIN;
	} else if (path_is(r, UPSTREAM_TOKEN_PATH)) {
		r->after = STEP_TOKEN;
		r->body.secret = 1; /* it holds a client secret */
	} else if ((strcmp(method, "GET") == 0 || r->head) &&
		   (fam = policy_family(f->d.policy, r->target, (size_t)plen)) >= 0 &&
		   policy_family_ttl(f->d.policy, fam) > 0) {
		rc = route_cacheable(r, fam);
		if (r->xc != XC_BYPASS)
			r->after = STEP_LOOKUP;
	}
	/* Once, in its family (which counts in the total too) or the total. */
	stats_inc(f->d.stats, r->family, STATS_REQUESTS);
	if (rc == 0 && r->after == STEP_FETCH &&
	    (r->body_len == -1 ||
	     (r->body_len > 0 && (size_t)r->body_len > f->d.cfg->max_buffered_body))) {
		r->streaming = 1;
		rc = start_upstream(r, method);
	}
	if (rc < 0)
		return answered(r, MHD_NO);
	r->step = STEP_BODY;
	return MHD_YES; /* the body, if any, comes in the next calls */
}

static void append_body(struct req *r, const char *data, size_t len, size_t limit)
{
	if (r->too_large || r->body.len + len > limit || membuf_append(&r->body, data, len) < 0) {
		r->too_large = 1;
		membuf_free(&r->body, 0);
	}
}

/* BODY: the upload, a piece per call, then the step ROUTE chose. */
static int step_body(struct req *r, const char *data, size_t *size)
{
	if (*size > 0) {
		r->bytes_in += *size;
		if (r->streaming) {
			size_t used = 0;

			upstream_xfer_write(r->x, data, *size, &used);
			*size -= used;
		} else {
			append_body(r, data, *size,
				    r->after == STEP_ADMIN || r->after == STEP_TOKEN ?
					    SMALL_BODY_MAX :
					    r->f->d.cfg->max_buffered_body);
			*size = 0;
		}
		return MHD_YES;
	}
	if (r->too_large && (r->after == STEP_LOOKUP || r->after == STEP_FETCH))
		return answered(
			r, respond_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request too large",
					 "the request body exceeds what kaleidod accepts here"));
	return go(r, r->after);
}

/*
 * Runs the request's steps from where it stands.  The whole path of a
 * request reads here, top to bottom:
 *
 *   RECV ─► ROUTE ─► BODY ─┬─► ADMIN, TOKEN: answered at once (a purge parks in PURGED)
 *                          ├─► LOOKUP: the object table's verdict
 *                          │     HIT, STALE (+ a refresh) ─► answered
 *                          │     MISS (runs the key's fetch), BUSY (joins it)
 *                          │       ─► WAIT ─► MISS, REVALIDATED, or an error;
 *                          │                  too large, another variant ─► FETCH
 *                          │     PASS (HEAD, variant, too large) ─► FETCH for this client alone
 *                          └─► FETCH (writes, BYPASS, uncached paths) ─► STREAM
 *
 * A parked step returns MHD_YES; libmicrohttpd calls again once the
 * connection is resumed, and the same step runs again.
 */
static enum MHD_Result run(struct req *r, const char *method, const char *version,
			   const char *upload_data, size_t *upload_data_size)
{
	int ret;

	do {
		switch (r->step) {
		case STEP_RECV:
			ret = step_recv(r, method, version);
			break;
		case STEP_AUTH:
			ret = step_auth(r, method);
			break;
		case STEP_ROUTE:
			ret = step_route(r, method);
			break;
		case STEP_BODY:
			ret = step_body(r, upload_data, upload_data_size);
			break;
		case STEP_ADMIN:
			ret = step_admin(r, method);
			break;
		case STEP_PURGED:
			ret = step_purged(r);
			break;
		case STEP_TOKEN:
			ret = local_token(r, method);
			if (r->step == STEP_TOKEN)
				ret = answered(r, (enum MHD_Result)ret);
			break;
		case STEP_LOGIN:
			ret = step_login(r);
			break;
		case STEP_LOOKUP:
			ret = step_lookup(r);
			break;
		case STEP_WAIT:
			ret = step_wait(r);
			break;
		case STEP_FETCH:
			ret = step_fetch(r, method);
			break;
		case STEP_STREAM:
			ret = step_stream(r, method);
			break;
		case STEP_DONE:
		default:
			/* answered already: libmicrohttpd does not call again */
			ASSERT(r->step == STEP_DONE);
			ret = MHD_NO;
			break;
		}
	} while (ret == GO_ON);
	return (enum MHD_Result)ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct req *r = *con_cls;

	if (r == NULL)
		return MHD_NO;
	CHECK_OBJ(r, REQ_MAGIC);
	r->conn = conn;
	return run(r, method, version, upload_data, upload_data_size);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct req *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	INIT_OBJ(r, REQ_MAGIC);
	r->f = cls;
	r->conn = conn;
	r->thread = serve_thread();
	r->family = -1;
	clock_gettime(CLOCK_MONOTONIC, &r->started);
	atomic_init(&r->suspended, 0);
	r->up_ms = -1;
	if (r->f->d.audit != NULL)
		snprintf(r->id, sizeof(r->id), "%08x%012llx", r->f->id_prefix,
			 atomic_fetch_add(&r->f->next_id, 1) & 0xffffffffffffULL);
	if ((r->target = strdup(uri != NULL ? uri : "/")) == NULL) {
		FINI_OBJ(r);
		free(r);
		return NULL;
	}
	return r;
}

/* The request's line in the audit trail. */
static void audit_request(struct req *r)
{
	struct audit_record rec = { 0 };
	char ip[INET6_ADDRSTRLEN] = "unknown";
	struct timespec wall;

	clock_gettime(CLOCK_REALTIME, &wall);
	client_ip(r->conn, ip, sizeof(ip));
	if (r->up_at.tv_sec != 0 && r->up_ms < 0)
		r->up_ms = ms_since(&r->up_at);
	rec.time_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
	rec.id = r->id;
	rec.account = r->acct != NULL          ? account_name(r->acct) :
		      r->login_name[0] != '\0' ? r->login_name :
						 NULL;
	rec.ip = ip;
	rec.method = r->method;
	rec.target = r->target;
	rec.status = r->status;
	rec.cache = r->xc != XC_NONE ? xcache_names[r->xc] : NULL;
	rec.upstream_ms = r->up_ms;
	rec.bytes_in = r->bytes_in;
	rec.bytes_out = r->bytes_out;
	if (audit_write(r->f->d.audit, &rec) < 0 && audit_errors(r->f->d.audit) % 1000 == 1)
		log_warn("audit trail: a record could not be written (%llu so far)",
			 audit_errors(r->f->d.audit));
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct req *r = *con_cls;

	if (r == NULL)
		return;
	CHECK_OBJ(r, REQ_MAGIC);
	*con_cls = NULL;
	if (r->status != 0)
		traffic_count(r->f->d.traffic, r->family, traffic_method(r->method), r->status,
			      (int)r->xc, ms_since(&r->started) / 1e3);
	if (log_getlevel() >= LOG_LVL_DEBUG && r->step != STEP_RECV) {
		struct timespec end;
		char *target = audit_mask_target(r->target);

		clock_gettime(CLOCK_MONOTONIC, &end);
		log_debug("%s %s -> %u%s%s %.1f ms%s", r->method, target ? target : "?", r->status,
			  r->xc != XC_NONE ? " " : "", r->xc != XC_NONE ? xcache_names[r->xc] : "",
			  (double)(end.tv_sec - r->started.tv_sec) * 1e3 +
				  (double)(end.tv_nsec - r->started.tv_nsec) / 1e6,
			  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (cut short)");
		free(target);
	}
	if (r->f->d.audit != NULL && r->step != STEP_RECV)
		audit_request(r);
	account_unref(&r->acct);
	if (r->login != NULL) {
		/* Resumed by its login thread, then closed before it ran on. */
		char *answer = NULL;
		double wait;

		gateway_login_result(&r->login, &answer, r->login_name, sizeof(r->login_name),
				     &wait);
		free(answer);
	}
	upstream_xfer_release(&r->x);
	if (r->fetch != NULL)
		objtab_leave(r->fetch, &r->wait);
	objtab_fetch_unref(&r->fetch);
	entry_unref(&r->stale);
	if (r->purge != NULL)
		keeper_purge_result(&r->purge); /* only drops the ticket */
	free(r->key);
	membuf_free(&r->body, 1); /* it may hold a client's secret */
	free(r->target);
	FINI_OBJ(r);
	free(r);
}

/* fmt is libmicrohttpd's own format; the attribute tells the compiler so */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	size_t n;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	log_debug("libmicrohttpd: %s", line);
}

/* Counts connections, in all and by address; marks those past a limit
 * (see marks). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct front *f = cls;
	const union MHD_ConnectionInfo *ci;
	int mark = 0;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		if (atomic_fetch_add(&f->conns, 1) >= f->d.cfg->max_connections)
			mark |= MARK_OVER_TOTAL;
		if (f->per_ip != NULL &&
		    (ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS)) !=
			    NULL) {
			unsigned n = ipcount_open(f->per_ip, ci->client_addr);

			if (n > 0)
				mark |= MARK_IP_COUNTED;
			if (n > f->d.cfg->max_connections_per_ip)
				mark |= MARK_OVER_IP;
		}
		*socket_context = mark != 0 ? &marks[mark] : NULL;
	} else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		atomic_fetch_sub(&f->conns, 1);
		mark = *socket_context != NULL ? (int)((char *)*socket_context - marks) : 0;
		if ((mark & MARK_IP_COUNTED) &&
		    (ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS)) !=
			    NULL)
			ipcount_close(f->per_ip, ci->client_addr);
	}
}

/* serve.c's start hook: one daemon, driven by the serve thread's loop. */
static struct MHD_Daemon *start_daemon(void *arg, unsigned thread, int listen_fd,
				       unsigned conn_limit)
{
	struct front *f = arg;
	const struct config *cfg = f->d.cfg;
	/* TLS, when configured: the certificate through tls.c's callback (so a
	 * reload swaps it), the priorities, and the CA of client certificates. */
	struct MHD_OptionItem tls[4] = { { MHD_OPTION_END, 0, NULL } };
	unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	int n = 0;

	(void)thread;
	if (f->d.tls != NULL) {
		flags |= MHD_USE_TLS;
		tls[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
						    tls_cert_callback(f->d.tls) };
		tls[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_PRIORITIES, 0,
						    (void *)tls_priorities(f->d.tls) };
		if (tls_client_ca(f->d.tls) != NULL)
			tls[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_TRUST, 0,
							    (void *)tls_client_ca(f->d.tls) };
		tls[n] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
	}
	return MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, f, MHD_OPTION_ARRAY, tls,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, f, MHD_OPTION_LISTEN_SOCKET, listen_fd,
		MHD_OPTION_CONNECTION_LIMIT, conn_limit, MHD_OPTION_CONNECTION_TIMEOUT,
		cfg->connection_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_POOL,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, f, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
		f, MHD_OPTION_NOTIFY_CONNECTION, on_connection, f, MHD_OPTION_END);
}

static void on_tick(void *arg, unsigned thread)
{
	struct front *f = arg;

	hitcache_sweep(f->hc[thread]);
}

unsigned front_connections(struct front *f)
{
	return atomic_load_explicit(&f->conns, memory_order_relaxed);
}

double front_stalled(struct front *f)
{
	return f != NULL && f->serve != NULL ? serve_stalled(f->serve) : 0;
}

unsigned front_spare_connections(unsigned max_connections)
{
	return max_connections / 16 > 16 ? max_connections / 16 : 16;
}

struct front *front_new(const struct front_deps *deps, int listen_fd, char *err, size_t errlen)
{
	struct front *f = calloc(1, sizeof(*f));
	struct serve_params sp = { 0 };
	unsigned threads = deps->cfg->threads;

	if (f == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	f->d = *deps;
	atomic_init(&f->conns, 0);
	atomic_init(&f->next_id, 0);
	if (getrandom(&f->id_prefix, sizeof(f->id_prefix), 0) != sizeof(f->id_prefix))
		f->id_prefix = (unsigned)time(NULL);
	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		/* One core is left to the clients, which mostly run on the same
		 * machine, and to the upstream and cache threads: on two cores a
		 * second server thread bought no throughput and doubled the hit
		 * p99 (benchmark, docs/performance.md). */
		threads = n > 2 ? (unsigned)n - 1 : 1;
	}
	f->threads = threads;
	if ((f->hc = calloc(threads, sizeof(*f->hc))) == NULL ||
	    (deps->cfg->max_connections_per_ip > 0 && (f->per_ip = ipcount_new()) == NULL))
		goto nomem;
	for (unsigned i = 0; i < threads; i++)
		if ((f->hc[i] = hitcache_new()) == NULL)
			goto nomem;
	sp.listen_fd = listen_fd;
	sp.threads = threads;
	/* A few past the limit are accepted only to be told so (503). */
	sp.conn_limit =
		deps->cfg->max_connections + front_spare_connections(deps->cfg->max_connections);
	sp.start = start_daemon;
	sp.tick = on_tick;
	sp.arg = f;
	if ((f->serve = serve_new(&sp, err, errlen)) == NULL)
		goto fail;
	return f;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	front_free(&f);
	return NULL;
}

void front_quiesce(struct front *f)
{
	if (f != NULL)
		serve_quiesce(f->serve);
}

void front_free(struct front **fp)
{
	struct front *f = *fp;

	if (f == NULL)
		return;
	serve_free(&f->serve);
	for (unsigned i = 0; f->hc != NULL && i < f->threads; i++)
		hitcache_free(&f->hc[i]);
	free(f->hc);
	ipcount_free(&f->per_ip); /* after the daemons: they count into it */
	free(f);
	*fp = NULL;
}
