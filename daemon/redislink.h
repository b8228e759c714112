/*
 * redislink: one synchronous hiredis connection to the cluster's Redis,
 * made the same way by every thread that needs one (the cluster's links,
 * the shared cache's): the timeout on connect and on every command, TCP
 * keepalive, AUTH first, a CLIENT SETNAME that tells the links apart.
 */
#ifndef KD_REDISLINK_H
#define KD_REDISLINK_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct rlink_target {
	const char *host;     /* a host name, or a unix socket's path */
	unsigned port;        /* 0: host is a unix socket's path */
	const char *password; /* NULL: no AUTH */
	const char *origin;   /* names this instance in CLIENT LIST */
};

/* A connection named "kaleidod-ORIGIN-ROLE", or NULL with why (never the
 * password, nor more than the first word of a refused AUTH). */
redisContext *rlink_dial(const struct rlink_target *t, const char *role, int timeout_ms, char *why,
			 size_t len);

/* n bytes as 2n lowercase hex digits and a NUL (out has 2n + 1 bytes). */
void rlink_hex(char *out, const unsigned char *in, size_t n);
/* bytes (at most 32) random bytes in hex: the nonces, names and lease
 * values kaleidod writes to Redis.  Never fails: without getrandom(2) the
 * clock and the pid make them, which still tells instances apart. */
void rlink_random_hex(char *out, size_t bytes);

/* A command that must not fail (argvlen NULL: strings): the reply, to
 * free, or NULL with why; a Redis error is a failure too. */
redisReply *rlink_must(redisContext *ctx, char *why, size_t len, int argc, const char **argv,
		       const size_t *argvlen);

#endif
