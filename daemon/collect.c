/*
 * collect: an upstream answer kept whole in memory, up to a limit, for
 * the cache.  Called by the upstream worker alone (headers, data, end),
 * so it needs no lock; freed by whichever thread lets the transfer go.
 */
#include "collect.h"

#include <stdlib.h>

#include "check.h"
#include "membuf.h"

struct collect {
	unsigned magic;
#define COLLECT_MAGIC 0x3e9a57c1u
	size_t max;
	void (*done)(void *arg, const struct collected *c);
	void (*free_arg)(void *arg);
	void *arg;
	long status;
	const struct hdr *headers; /* the transfer's, valid until collect_free() */
	struct membuf body;
	int over; /* outgrew max (or no memory): dropped out */
	int ended;
};

static void collect_headers(void *arg, long status, const struct hdr *h, long long length)
{
	struct collect *c = arg;

	(void)length; /* a decoded body's length is known at its end only */
	CHECK_OBJ(c, COLLECT_MAGIC);
	ASSERT(c->headers == NULL && !c->ended);
	c->status = status;
	c->headers = h;
}

static enum up_take collect_data(void *arg, const char *buf, size_t len)
{
	struct collect *c = arg;

	CHECK_OBJ(c, COLLECT_MAGIC);
	ASSERT(c->headers != NULL && !c->ended && !c->over);
	if (c->body.len + len > c->max || membuf_append(&c->body, buf, len) < 0) {
		/* Too large to keep (or no memory): what came is let go now,
		 * and nothing more is wanted. */
		c->over = 1;
		membuf_free(&c->body, 0);
		return UP_STOP;
	}
	return UP_TAKEN;
}

static void collect_end(void *arg, enum up_error err, const char *detail, int framed)
{
	struct collect *c = arg;
	struct collected out = { 0 };

	CHECK_OBJ(c, COLLECT_MAGIC);
	ASSERT(!c->ended);
	c->ended = 1;
	if (c->over) {
		out.end = COLLECT_TOO_LARGE;
	} else if (err == UP_ERR_NONE) {
		AN(c->headers);
		out.end = COLLECT_WHOLE;
		out.status = c->status;
		out.headers = c->headers;
		out.body = c->body.data != NULL ? c->body.data : "";
		out.len = c->body.len;
		out.framed = framed;
	} else {
		out.end = COLLECT_FAILED;
		out.err = err;
		out.detail = detail;
		if (c->headers != NULL) {
			/* Whatever broke it, an answer begun and not ended is a
			 * bad answer, not an unreachable API. */
			out.err = UP_ERR_PROTOCOL;
			out.detail = "the API's answer broke off before its end";
		}
	}
	c->done(c->arg, &out);
}

static void collect_free(void *arg)
{
	struct collect *c = arg;

	CHECK_OBJ(c, COLLECT_MAGIC);
	if (c->free_arg != NULL)
		c->free_arg(c->arg);
	membuf_free(&c->body, 0);
	FINI_OBJ(c);
	free(c);
}

int collect_sink(size_t max, void (*done)(void *arg, const struct collected *c),
		 void (*free_arg)(void *arg), void *arg, struct up_sink *out)
{
	struct collect *c = calloc(1, sizeof(*c));

	AN(done);
	if (c == NULL)
		return -1;
	INIT_OBJ(c, COLLECT_MAGIC);
	c->max = max;
	c->done = done;
	c->free_arg = free_arg;
	c->arg = arg;
	*out = (struct up_sink){ collect_headers, collect_data, collect_end, collect_free, c };
	return 0;
}
