/*
 * redislink: a connection to the cluster's Redis.  See redislink.h.
 */
#include "redislink.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* The first word of Redis's answer to a failed AUTH (WRONGPASS, NOAUTH,
 * ERR...): never the rest, which a proxy in between might make an echo of
 * what was sent. */
static void auth_failed(const redisReply *r, char *why, size_t len)
{
	int n = r->str != NULL ? (int)strcspn(r->str, " ") : 0;

	if (n > 0 && n < 32)
		snprintf(why, len, "authentication failed: %.*s", n, r->str);
	else
		snprintf(why, len, "authentication failed");
}

void rlink_hex(char *out, const unsigned char *in, size_t n)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

void rlink_random_hex(char *out, size_t bytes)
{
	unsigned char b[32];

	ASSERT(bytes <= sizeof(b));
	if (getrandom(b, bytes, 0) != (ssize_t)bytes) {
		/* getrandom(2) does not fail for 32 bytes once the pool is up;
		 * the clock still makes an instance's name its own */
		struct timespec ts;
		uint64_t t;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		t = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
		    ((uint64_t)getpid() << 32);
		for (size_t i = 0; i < bytes; i++)
			b[i] = (unsigned char)(t >> (8 * (i % 8)));
	}
	rlink_hex(out, b, bytes);
}

static void lost(redisContext *ctx, char *why, size_t len)
{
	snprintf(why, len, "%s", ctx->errstr[0] ? ctx->errstr : "connection lost");
}

redisReply *rlink_must(redisContext *ctx, char *why, size_t len, int argc, const char **argv,
		       const size_t *argvlen)
{
	redisReply *r = redisCommandArgv(ctx, argc, argv, argvlen);

	if (r == NULL) {
		lost(ctx, why, len);
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(why, len, "%s: %s", argv[0], r->str ? r->str : "error");
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

redisContext *rlink_dial(const struct rlink_target *t, const char *role, int timeout_ms, char *why,
			 size_t len)
{
	const struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	redisContext *ctx = t->port == 0 ? redisConnectUnixWithTimeout(t->host, tv) :
					   redisConnectWithTimeout(t->host, (int)t->port, tv);
	redisReply *r;
	char name[64];
	const char *argv[3];

	if (ctx == NULL) {
		snprintf(why, len, "out of memory");
		return NULL;
	}
	if (ctx->err) {
		snprintf(why, len, "%s", ctx->errstr);
		goto fail;
	}
	if (redisSetTimeout(ctx, tv) != REDIS_OK ||
	    (t->port != 0 && redisEnableKeepAlive(ctx) != REDIS_OK)) {
		snprintf(why, len, "%s", ctx->errstr[0] ? ctx->errstr : "socket options");
		goto fail;
	}
	if (t->password != NULL) {
		argv[0] = "AUTH";
		argv[1] = t->password;
		if ((r = redisCommandArgv(ctx, 2, argv, NULL)) == NULL) {
			lost(ctx, why, len);
			goto fail;
		}
		if (r->type == REDIS_REPLY_ERROR) {
			auth_failed(r, why, len);
			freeReplyObject(r);
			goto fail;
		}
		freeReplyObject(r);
	}
	/* CLIENT LIST then tells which instance and which link */
	snprintf(name, sizeof(name), "kaleidod-%s-%s", t->origin, role);
	argv[0] = "CLIENT";
	argv[1] = "SETNAME";
	argv[2] = name;
	/* Only a convenience: an ACL without it is no reason to stay apart. */
	if ((r = redisCommandArgv(ctx, 3, argv, NULL)) == NULL) {
		lost(ctx, why, len);
		goto fail;
	}
	freeReplyObject(r);
	return ctx;
fail:
	redisFree(ctx);
	return NULL;
}
