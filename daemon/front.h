/*
 * front: the libmicrohttpd server and the request path, read top to bottom:
 * admin route -> local token endpoint -> cache lookup -> upstream fetch ->
 * store -> respond.  The only place that picks HTTP statuses.
 */
#ifndef KD_FRONT_H
#define KD_FRONT_H

#include <stddef.h>

struct config;
struct upstream;
struct cache;
struct policy;
struct stats;
struct objtab;
struct keeper;
struct flights;
struct warm;
struct gateway;
struct audit;
struct tls;
struct front;

struct front_deps {
	const struct config *cfg;
	struct upstream *up;
	struct cache *cache; /* NULL: run without a cache file (memory only) */
	struct policy *policy;
	struct stats *stats;
	struct objtab *tab;
	struct keeper *keeper;
	struct flights *flights;
	struct warm *warm;
	struct gateway *gw;  /* NULL: no accounts, the personal daemon */
	struct audit *audit; /* NULL: no audit trail */
	struct tls *tls;     /* NULL: plain HTTP */
};

/*
 * Starts serving on listen_fd (already bound and listening; from socket
 * activation or from main).  NULL with a message in err on failure.
 */
struct front *front_new(const struct front_deps *deps, int listen_fd, char *err, size_t errlen);
/* How many connections past max_connections are accepted only to be
 * answered 503 (the rest wait in the listen backlog). */
unsigned front_spare_connections(unsigned max_connections);
/* Stops accepting new connections; requests in progress continue. */
void front_quiesce(struct front *f);
/* Stops the server; every connection must have been unparked first
 * (upstream_shutdown() does that). */
void front_free(struct front **f);

#endif
