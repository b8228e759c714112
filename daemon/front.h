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
struct traffic;
struct cluster;
struct l2;
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
	struct gateway *gw;      /* NULL: no accounts, the personal daemon */
	struct audit *audit;     /* NULL: no audit trail */
	struct tls *tls;         /* NULL: plain HTTP */
	struct traffic *traffic; /* requests by label, for /_kaleidod/metrics */
	struct cluster *cluster; /* NULL: no [cluster] redis, this instance alone */
	struct l2 *l2;           /* NULL: no [cluster] shared_cache */
	double started;          /* wall-clock unix time the daemon started */
};

/* What the front knows that the admin pages show: its cache outcomes'
 * names (index 0 is "none": not a cacheable request) and open connections. */
#define FRONT_OUTCOMES 6
extern const char *const front_outcome_names[FRONT_OUTCOMES];
unsigned front_connections(struct front *f);
/* Seconds since the slowest thread serving clients came round its loop
 * (serve_stalled()): what the systemd watchdog is fed on. */
double front_stalled(struct front *f);

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
