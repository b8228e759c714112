/*
 * kaleidod: a caching proxy for the Kaleidoscope API.
 *
 * main() reads the configuration, opens the cache (moving a bad file aside
 * rather than refusing to start), starts the upstream worker and the HTTP
 * front, tells systemd it is ready, and waits for a signal to stop.  It runs
 * in the foreground and logs to stderr, systemd style.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "accountcmd.h"
#include "accounts.h"
#include "audit.h"
#include "auth.h"
#include "cache.h"
#include "clock.h"
#include "cluster.h"
#include "config.h"
#include "front.h"
#include "kdbuild.h"
#include "log.h"
#include "entry.h"
#include "flight.h"
#include "gateway.h"
#include "keeper.h"
#include "l2.h"
#include "objtab.h"
#include "policy.h"
#include "secret.h"
#include "stats.h"
#include "tls.h"
#include "traffic.h"
#include "upstream.h"
#include "versions.h"
#include "warm.h"

#define DRAIN_SECONDS 5.0
#define TICK_NS 250000000L /* the main loop's tick: warm-up and refresh-ahead */
#define STATUS_EVERY 2.0   /* s between checks of systemd's STATUS= line */
#define STALL_MIN 2.5      /* s: the least stall that withholds the watchdog's ping */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: kaleidod [--config FILE] [--listen ADDR:PORT] [--cache FILE]\n"
		"                [--log-level error|warn|info|debug] [--check-config [--quiet]]\n"
		"                [--purge all|FAMILY|/PREFIX] [--version] [--help]\n"
		"       kaleidod account [--config FILE | --accounts FILE] add|list|remove ...\n"
		"       kaleidod --hash-secret < SECRET\n"
		"\n"
		"A caching proxy for the Kaleidoscope API.  Credentials come from the\n"
		"environment (KALEIDOSCOPE_API_URL, KALEIDOSCOPE_API_CLIENT_ID,\n"
		"KALEIDOSCOPE_API_CLIENT_SECRET), a systemd credential, or the config\n"
		"file; never from the command line.  See kaleidod(8), kaleidod.conf(5).\n");
}

/* The version, and those of the libraries this process runs with (not the
 * ones it was built against): what a bug report needs. */
static void print_version(void)
{
	struct versions v;

	versions_get(&v);
	printf("kaleidod %s\n", v.kaleidod);
	printf("libmicrohttpd %s\n", v.libmicrohttpd);
	printf("libcurl %s (%s)\n", v.libcurl,
	       strcmp(v.libcurl_tls, "none") != 0 ? v.libcurl_tls : "no TLS");
	printf("SQLite %s\n", v.sqlite);
	printf("cJSON %s\n", v.cjson);
	printf("zlib %s\n", v.zlib);
	printf("GnuTLS %s\n", v.gnutls);
}

struct flags {
	const char *config, *listen, *cache, *log_level, *purge;
	int check, quiet;
};

static int parse_flags(int argc, char **argv, struct flags *fl)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'l' },
		{ "cache", required_argument, NULL, 'C' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "check-config", no_argument, NULL, 'n' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "purge", required_argument, NULL, 'P' },
		{ "version", no_argument, NULL, 'V' },
		{ "hash-secret", no_argument, NULL, 'H' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "c:l:C:L:nqP:Vh", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			fl->config = optarg;
			break;
		case 'l':
			fl->listen = optarg;
			break;
		case 'C':
			fl->cache = optarg;
			break;
		case 'L':
			fl->log_level = optarg;
			break;
		case 'n':
			fl->check = 1;
			break;
		case 'q':
			fl->quiet = 1;
			break;
		case 'P':
			fl->purge = optarg;
			break;
		case 'V':
			print_version();
			exit(0);
		case 'H':
			exit(accountcmd_hash_secret());
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (fl->quiet && !fl->check) {
		fprintf(stderr, "kaleidod: --quiet goes with --check-config\n");
		usage(stderr);
		return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "kaleidod: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

/* Defaults, then the file, then the environment, then the flags. */
static struct config *load_config(const struct flags *fl)
{
	struct config *cfg = config_new();
	char err[1024];

	if (cfg == NULL) {
		fprintf(stderr, "kaleidod: out of memory\n");
		return NULL;
	}
	if ((fl->config != NULL && config_load_file(cfg, fl->config, err, sizeof(err)) < 0) ||
	    config_apply_env(cfg, err, sizeof(err)) < 0 ||
	    (fl->listen != NULL &&
	     config_set(cfg, "server", "listen", fl->listen, "--listen", err, sizeof(err)) < 0) ||
	    (fl->cache != NULL &&
	     config_set(cfg, "cache", "file", fl->cache, "--cache", err, sizeof(err)) < 0) ||
	    (fl->log_level != NULL &&
	     config_set(cfg, "log", "level", fl->log_level, "--log-level", err, sizeof(err)) < 0) ||
	    config_finish(cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "kaleidod: %s\n", err);
		config_free(&cfg);
		return NULL;
	}
	return cfg;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		const uint8_t *b = in6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
	}
	return 0;
}

#define NOT_LOOPBACK                                                                  \
	"refusing to listen on %s: it is not a loopback address, and anyone who can " \
	"connect would use the workspace's credentials. Listen on 127.0.0.1, or "     \
	"make this a lab gateway with local accounts ([gateway] accounts; see "       \
	"kaleidod account add), or set [gateway] allow_anonymous = yes if everyone "  \
	"who can reach the address may act as the workspace"

/* Whether a non-loopback address may be served: accounts guard it, or
 * its operator said anyone may use it. */
static int open_to_network(const struct config *cfg)
{
	return cfg->accounts_file != NULL || cfg->allow_anonymous;
}

/* Resolves [server] listen (numeric or "localhost"), refusing what is not
 * loopback.  *out comes from getaddrinfo().  0 or -1. */
static int resolve_listen(const struct config *cfg, struct addrinfo **out, char *err, size_t errlen)
{
	char host[256], portstr[16];
	unsigned port;
	struct addrinfo hints = { 0 };
	int rc;

	if (config_parse_listen(cfg->listen, host, sizeof(host), &port) < 0) {
		snprintf(err, errlen, "listen: cannot parse '%s'", cfg->listen);
		return -1;
	}
	snprintf(portstr, sizeof(portstr), "%u", port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, portstr, &hints, out)) != 0) {
		snprintf(err, errlen, "listen %s: %s", cfg->listen, gai_strerror(rc));
		return -1;
	}
	if (!open_to_network(cfg) &&
	    !is_loopback((const struct sockaddr_storage *)(void *)(*out)->ai_addr)) {
		snprintf(err, errlen, NOT_LOOPBACK, cfg->listen);
		freeaddrinfo(*out);
		*out = NULL;
		return -1;
	}
	return 0;
}

/*
 * The listening socket: handed over by systemd (socket activation), or
 * bound here.  Only loopback is served unless local accounts guard the
 * address (or allow_anonymous says anyone may act as the workspace).
 */
static int open_listener(const struct config *cfg, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct addrinfo *ai = NULL;
	int fd = -1, n, on = 1;

	if ((n = sd_listen_fds(1)) > 1) {
		snprintf(err, errlen, "systemd passed %d sockets; kaleidod takes one", n);
		return -1;
	}
	if (n == 1) {
		fd = SD_LISTEN_FDS_START;
		if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
			snprintf(err, errlen,
				 "the socket systemd passed is not a listening stream socket");
			return -1;
		}
		if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
		    (!open_to_network(cfg) && !is_loopback(&ss))) {
			snprintf(err, errlen, NOT_LOOPBACK, "the socket systemd passed");
			return -1;
		}
		return fd;
	}
	if (resolve_listen(cfg, &ai, err, errlen) < 0)
		return -1;
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		snprintf(err, errlen, "listen %s: %s", cfg->listen, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

/* A cache that cannot be opened never stops the proxy: move it aside, or run without. */
static struct cache *open_cache(const char *path)
{
	char err[512], moved[4096];
	enum cache_err why;
	struct cache *c = cache_open(path, &why, err, sizeof(err));

	if (c != NULL)
		return c;
	if (why == CACHE_ERR_CORRUPT || why == CACHE_ERR_SCHEMA) {
		if (cache_quarantine(path, moved, sizeof(moved)) == 0) {
			log_warnx("cache: %s; moved it aside to %s and starting a new one", err,
				  moved);
			if ((c = cache_open(path, &why, err, sizeof(err))) != NULL)
				return c;
		} else {
			log_warn("cache: %s; cannot move it aside", err);
		}
	}
	log_warnx("cache: %s; running WITHOUT a cache file (answers are kept in memory only, "
		  "and lost at exit)",
		  err);
	return NULL;
}

static void on_auth_changed(void *arg, const struct auth_status *st, double retry_in)
{
	static enum auth_state last = AUTH_STARTING;
	const char *url = arg;

	if (st->state == AUTH_OK && last != AUTH_OK)
		log_info("authenticated to %s", url);
	else if (st->state == AUTH_FAILING && last != AUTH_FAILING)
		log_error("cannot authenticate to %s: %s; serving the cache, retrying in %.0f s",
			  url, st->last_error, retry_in > 0 ? retry_in : 0);
	else if (st->state == AUTH_FAILING)
		log_debug("authentication still failing: %s; next try in %.0f s", st->last_error,
			  retry_in > 0 ? retry_in : 0);
	else if (st->last_error[0] != '\0' && st->state == AUTH_OK)
		log_debug("token refresh: %s", st->last_error);
	last = st->state;
}

/* Waits up to limit seconds for the transfers in flight to end (on the
 * clock, not by counting naps: a loaded host makes each nap longer). */
static void drain(struct upstream *up, double limit)
{
	struct upstream_counters c;
	struct timespec step = { 0, 20 * 1000 * 1000 };
	double end = clock_mono() + limit;

	for (int first = 1;; first = 0) {
		upstream_counters(up, &c);
		if (c.active == 0)
			return;
		if (clock_mono() >= end)
			break;
		if (first)
			log_info("waiting up to %.0f s for %llu upstream transfers", limit,
				 c.active);
		nanosleep(&step, NULL);
	}
	log_warnx("stopping with upstream transfers still running; their clients see an error");
}

/* SIGHUP, for the gateway: the accounts file again (revoking the tokens
 * of removed accounts and changed secrets), the audit file reopened
 * (logrotate moved it), and the TLS certificate and key read again. */
static void reload_gateway(const struct front_deps *d)
{
	char err[1024];
	size_t n, revoked;

	if (d->gw != NULL) {
		if (gateway_reload(d->gw, &n, &revoked, err, sizeof(err)) < 0)
			log_error("SIGHUP: [gateway] accounts: %s; keeping the accounts in force",
				  err);
		else
			log_info("SIGHUP: %zu account%s; %zu token%s revoked", n, n == 1 ? "" : "s",
				 revoked, revoked == 1 ? "" : "s");
	}
	if (d->audit != NULL && audit_reopen(d->audit, err, sizeof(err)) < 0)
		log_error("SIGHUP: [log] audit: %s; writing on to the old file", err);
	if (d->tls != NULL) {
		if (tls_reload(d->tls, err, sizeof(err)) < 0)
			log_error("SIGHUP: [server] %s; serving on with the certificate in use",
				  err);
		else
			log_info("SIGHUP: TLS certificate and key read again");
	}
}

/*
 * SIGHUP: read the configuration again and take a new client secret (a
 * rotated or corrected one) and log level without a restart; the cache and
 * connections stay.  Anything else needs a restart, and saying so beats
 * applying half of it.
 */
static void reload(const struct flags *fl, const struct config *cur, struct upstream *up,
		   char **secret)
{
	struct config *next = load_config(fl);
	enum log_level lvl;
	char *copy = NULL;

	if (next == NULL) {
		log_error("SIGHUP: the configuration has errors (above); keeping the running one");
		return;
	}
	if (log_level_parse(next->log_level, &lvl) == 0)
		log_setlevel(lvl);
	if ((cur->client_id == NULL) != (next->client_id == NULL) ||
	    (cur->client_id != NULL && strcmp(cur->client_id, next->client_id) != 0))
		log_warnx("SIGHUP: a new client id takes a restart (cache keys depend on it)");
	else if (next->client_secret != NULL &&
		 (*secret == NULL || strcmp(*secret, next->client_secret) != 0)) {
		log_add_secret(next->client_secret);
		if ((copy = strdup(next->client_secret)) != NULL &&
		    upstream_set_secret(up, next->client_secret) == 0) {
			/* Compared with the secret in use, not the one read at start. */
			secret_free(secret);
			*secret = copy;
			log_info("SIGHUP: new client secret (from %s); authenticating again",
				 next->client_secret_source);
		} else {
			secret_free(&copy);
			log_error("SIGHUP: out of memory; keeping the running secret");
		}
	} else {
		log_info("SIGHUP: client secret unchanged; other settings apply at restart");
	}
	config_free(&next);
}

static void on_trace(void *arg, char dir, const char *line, size_t len)
{
	char *copy = strndup(line, len), *masked = copy ? audit_mask_target(copy) : NULL;

	/* The request line may carry a client's token in its query. */
	log_debug("upstream %c %s", dir, masked != NULL ? masked : "(no memory)");
	free(masked);
	free(copy);
}

/*
 * kaleidod --purge: acts on the cache file itself, so it works whether or
 * not a daemon runs on it (WAL and SQLite's locks make that safe; the daemon
 * notices within a second and drops what it holds in memory).
 */
static int purge_cli(const struct config *cfg, const char *what)
{
	enum cache_purge kind = CACHE_PURGE_FAMILY;
	enum cache_err why;
	struct cache *c;
	char err[1024];
	int n, known = 0;

	if (strcmp(what, "all") == 0) {
		kind = CACHE_PURGE_ALL;
	} else if (what[0] == '/') {
		kind = CACHE_PURGE_PREFIX;
	} else {
		for (int i = 0; i < cfg->nfamilies; i++)
			known |= strcmp(cfg->families[i].name, what) == 0;
		if (!known) {
			fprintf(stderr,
				"kaleidod: --purge %s: no such family; give all, a family (", what);
			for (int i = 0; i < cfg->nfamilies; i++)
				fprintf(stderr, "%s%s", i ? ", " : "", cfg->families[i].name);
			fprintf(stderr, ") or a path prefix starting with '/'\n");
			return 1;
		}
	}
	if ((c = cache_open(cfg->cache_file, &why, err, sizeof(err))) == NULL) {
		fprintf(stderr, "kaleidod: --purge: %s\n", err);
		return 1;
	}
	if ((n = cache_purge(c, kind, what, NULL, NULL)) < 0) {
		fprintf(stderr, "kaleidod: --purge: %s\n", cache_errmsg(c));
		cache_close(&c);
		return 1;
	}
	if (cache_vacuum(c) < 0)
		fprintf(stderr, "kaleidod: --purge: vacuum: %s (the entries are gone)\n",
			cache_errmsg(c));
	printf("purged %d entr%s from %s\n", n, n == 1 ? "y" : "ies", cache_path(c));
	cache_close(&c);
	return 0;
}

/* "ADDR:PORT" of the socket actually served (systemd may have passed it). */
static void sock_name(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(out, len, "[%s]:%u", host, port);
		return;
	}
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	}
	snprintf(out, len, "%s:%u", host, port);
}

/* Descriptors kaleidod needs besides its clients: the API's connections,
 * the cache file and its readers, the listening socket, pipes, logs. */
#define FD_RESERVE 256

/*
 * Every client connection is a descriptor: raises the soft RLIMIT_NOFILE
 * to the hard limit (a shell's soft 1024 would otherwise cap a gateway at
 * about 1000 clients, with accept() failing silently past it), and lowers
 * max_connections, with a warning, where even the hard limit is too low.
 */
static void fit_fd_limit(struct config *cfg)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)cfg->max_connections + front_spare_connections(cfg->max_connections) +
		      FD_RESERVE;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur >= need)
		return;
	unsigned fit = rl.rlim_cur > FD_RESERVE + 32 ? (unsigned)(rl.rlim_cur - FD_RESERVE) : 32;

	fit -= front_spare_connections(fit) < fit ? front_spare_connections(fit) : 0;
	log_warnx("the open-file limit is %llu: max_connections lowered from %u to %u (raise "
		  "LimitNOFILE= or ulimit -n)",
		  (unsigned long long)rl.rlim_cur, cfg->max_connections, fit);
	cfg->max_connections = fit;
}

static unsigned port_of(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return 0;
}

/*
 * Whether the API URL names the socket kaleidod listens on: a user who
 * exported KALEIDOSCOPE_API_URL=http://127.0.0.1:8765 for their scripts and
 * then starts kaleidod from the same shell.  Only addresses and localhost
 * are looked at (no DNS at start); a name that leads back is caught at run
 * time by Via.
 */
static int points_at_itself(const char *url, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	CURLU *h = curl_url();
	char *host = NULL, *port = NULL;
	struct addrinfo hints = { 0 }, *ai = NULL;
	int self = 0;

	if (h == NULL || curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		goto out;
	if ((unsigned)atoi(port) != port_of((const struct sockaddr *)&ss))
		goto out;
	if (strcasecmp(host, "localhost") == 0) {
		self = is_loopback(&ss);
		goto out;
	}
	if (host[0] == '[') { /* curl keeps an IPv6 literal's brackets */
		memmove(host, host + 1, strlen(host));
		host[strcspn(host, "]")] = '\0';
	}
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port, &hints, &ai) != 0)
		goto out;
	for (struct addrinfo *p = ai; p != NULL && !self; p = p->ai_next)
		self = is_loopback((const struct sockaddr_storage *)(void *)p->ai_addr) &&
		       is_loopback(&ss);
out:
	if (ai != NULL)
		freeaddrinfo(ai);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(h);
	return self;
}

/* The table's stale window: how long past expiry an entry may be served
 * while one refresh runs (kaleidod's setting, capped by the answer's own
 * Cache-Control). */
static unsigned stale_window(const struct entry *e, void *arg)
{
	const struct config *cfg = arg;
	unsigned swr, sie;

	policy_stale_limits(entry_headers(e), cfg->stale_while_revalidate, cfg->stale_if_error,
			    &swr, &sie);
	return swr;
}

/*
 * systemd: WATCHDOG=1 while every thread serving clients comes round its
 * loop (a wedged one stops the pings, and systemd restarts the service),
 * and a STATUS= line that `systemctl status` shows, sent when it changes.
 */
struct watchdog {
	uint64_t usec; /* WatchdogSec=, 0 without */
	struct timespec pinged, status_at;
	int withheld; /* pings stopped: said once */
	char status[160];
};

static void watchdog_init(struct watchdog *w)
{
	memset(w, 0, sizeof(*w));
	if (sd_watchdog_enabled(0, &w->usec) <= 0)
		w->usec = 0;
	else
		log_info("systemd watchdog every %.1f s", (double)w->usec / 1e6);
}

static double since(const struct timespec *t, const struct timespec *now)
{
	return (double)(now->tv_sec - t->tv_sec) + (double)(now->tv_nsec - t->tv_nsec) / 1e9;
}

static void watchdog_tick(struct watchdog *w, struct front *front, const struct front_deps *d)
{
	struct timespec now;
	struct auth_status st;
	unsigned long long hits, looked;
	int64_t entries = 0, bytes = 0;
	char line[sizeof(w->status)], ratio[16] = "-";
	double period = (double)w->usec / 1e6, stalled;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (w->usec > 0 && since(&w->pinged, &now) >= period / 4) {
		/* Pings come four times a period; a front stalled for half of
		 * one gets none, so systemd acts within about WatchdogSec.  An
		 * idle serve thread comes round about once a second, so less
		 * than STALL_MIN proves nothing (WatchdogSec= under 5 s then
		 * acts later than its period says). */
		double limit = period / 2 > STALL_MIN ? period / 2 : STALL_MIN;

		if ((stalled = front_stalled(front)) < limit) {
			sd_notify(0, "WATCHDOG=1");
			w->pinged = now;
			if (w->withheld)
				log_info("the front answers again; watchdog pings resumed");
			w->withheld = 0;
		} else if (!w->withheld) {
			log_error(
				"a thread serving clients has not come round its loop for %.1f s; "
				"no watchdog pings until it does",
				stalled);
			w->withheld = 1;
		}
	}
	if (since(&w->status_at, &now) < STATUS_EVERY)
		return;
	w->status_at = now;
	upstream_auth_status(d->up, &st);
	objtab_usage(d->tab, &entries, &bytes);
	if (d->cache != NULL)
		cache_usage(d->cache, &entries, &bytes);
	hits = stats_get(d->stats, -1, STATS_HITS);
	looked = hits + stats_get(d->stats, -1, STATS_MISSES) +
		 stats_get(d->stats, -1, STATS_STALE) + stats_get(d->stats, -1, STATS_REVALIDATED);
	if (looked > 0)
		snprintf(ratio, sizeof(ratio), "%.1f%%", 100.0 * (double)hits / (double)looked);
	snprintf(line, sizeof(line), "auth %s, hit ratio %s of %llu, %lld entries, %u connections",
		 auth_state_name(st.state), ratio, looked, (long long)entries,
		 front_connections(front));
	if (strcmp(line, w->status) != 0) {
		sd_notifyf(0, "STATUS=%s", line);
		memcpy(w->status, line, sizeof(line));
	}
}

int main(int argc, char **argv)
{
	struct flags fl = { 0 };
	struct config *cfg = NULL;
	struct front_deps deps = { 0 };
	struct objtab_config tcfg = { 0 };
	struct objtab_backend backend;
	struct front *front = NULL;
	struct up_events ev = { 0 };
	struct watchdog wd;
	enum log_level lvl = LOG_LVL_INFO;
	sigset_t set;
	char err[1024], where[INET6_ADDRSTRLEN + 16], *secret = NULL;
	int fd, sig, rc = 1;

	log_init("kaleidod", LOG_LVL_INFO);
	if (argc >= 2 && strcmp(argv[1], "account") == 0)
		return accountcmd_main(argc - 1, argv + 1);
	if (parse_flags(argc, argv, &fl) < 0)
		return 1;
	if ((cfg = load_config(&fl)) == NULL)
		return 1;
	if (fl.check) {
		struct addrinfo *ai = NULL;

		/* The listen address is part of a valid configuration. */
		if (resolve_listen(cfg, &ai, err, sizeof(err)) < 0) {
			fprintf(stderr, "kaleidod: %s\n", err);
			config_free(&cfg);
			return 1;
		}
		freeaddrinfo(ai);
		if (cfg->accounts_file != NULL) {
			struct accounts *as = NULL;

			if (accounts_load(cfg->accounts_file, &as, err, sizeof(err)) < 0) {
				fprintf(stderr, "kaleidod: [gateway] accounts: %s\n", err);
				config_free(&cfg);
				return 1;
			}
			accounts_free(&as);
		}
		if (cfg->tls_cert != NULL) {
			struct tls *t = tls_new(cfg, err, sizeof(err));

			if (t == NULL) {
				fprintf(stderr, "kaleidod: [server] %s\n", err);
				config_free(&cfg);
				return 1;
			}
			tls_free(&t);
		}
		/* --quiet: ExecStartPre= wants the verdict, not the whole
		 * configuration in the journal at every start. */
		/* the prefix in effect, which cluster.c derives when unset */
		if (cfg->cluster_redis != NULL && cfg->cluster_prefix == NULL)
			cfg->cluster_prefix = cluster_default_prefix(cfg);
		if (!fl.quiet)
			config_print(cfg, stdout);
		config_free(&cfg);
		return 0;
	}
	if (fl.purge != NULL) {
		rc = purge_cli(cfg, fl.purge);
		config_free(&cfg);
		return rc;
	}
	log_level_parse(cfg->log_level, &lvl);
	log_setlevel(lvl);
	/* Configured header values may be credentials for a proxy in front of
	 * the API; they never need to appear in a log line either. */
	for (int i = 0; i < cfg->nheaders; i++) {
		const char *v = strchr(cfg->headers[i], ':');

		if (v != NULL)
			log_add_secret(v + 1 + strspn(v + 1, " \t"));
	}
	if (cfg->client_secret != NULL) {
		log_add_secret(cfg->client_secret);
		if ((secret = strdup(cfg->client_secret)) == NULL)
			fatalx("out of memory");
	}

	/* Threads inherit this mask, so signals reach only sigwait() below. */
	signal(SIGPIPE, SIG_IGN);
	/* A file size limit must fail a cache write (EFBIG), not kill us. */
	signal(SIGXFSZ, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	fit_fd_limit(cfg);
	if ((fd = open_listener(cfg, err, sizeof(err))) < 0) {
		log_error("%s", err);
		goto out;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error("libcurl failed to initialise");
		goto out;
	}
	if (points_at_itself(cfg->upstream_url, fd)) {
		sock_name(fd, where, sizeof(where));
		log_error(
			"the API URL %s is kaleidod's own address (%s): every request would "
			"come back here.  KALEIDOSCOPE_API_URL is for the scripts that use "
			"kaleidod; start kaleidod without it (or with the real API's URL), or set "
			"[upstream] url",
			cfg->upstream_url, where);
		goto out;
	}
	if (cfg->client_id == NULL || cfg->client_secret == NULL)
		log_warnx("no API client credentials: set KALEIDOSCOPE_API_CLIENT_ID and "
			  "KALEIDOSCOPE_API_CLIENT_SECRET (or client_secret_file); only cached "
			  "answers can be served");
	deps.cfg = cfg;
	deps.cache = open_cache(cfg->cache_file);
	deps.policy = policy_new(cfg);
	deps.stats = stats_new(deps.policy ? policy_family_count(deps.policy) : 0);
	deps.traffic =
		traffic_new(deps.policy ? policy_family_count(deps.policy) : 0, FRONT_OUTCOMES);
	deps.started = (double)time(NULL);
	if (deps.policy == NULL || deps.stats == NULL || deps.traffic == NULL) {
		log_error("out of memory");
		goto out;
	}
	ev.auth_changed = on_auth_changed;
	if (lvl >= LOG_LVL_DEBUG)
		ev.trace = on_trace;
	ev.arg = cfg->upstream_url;
	/* The shared cache's and token's thread starts with the cluster; the
	 * upstream's first token request waits for it if the token is shared. */
	if ((cfg->cluster_shared_cache || cfg->cluster_share_token) &&
	    (deps.l2 = l2_new(cfg)) == NULL) {
		log_error("[cluster] out of memory");
		goto out;
	}
	if (cfg->cluster_share_token) {
		ev.broker.ask = l2_token_ask;
		ev.broker.got = l2_token_got;
		ev.broker.arg = deps.l2;
	}
	if ((deps.up = upstream_new(cfg, &ev, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		goto out;
	}
	tcfg.max_bytes = cfg->memory;
	tcfg.nfamilies = policy_family_count(deps.policy);
	tcfg.stale_window = stale_window;
	tcfg.stale_arg = (void *)cfg;
	deps.tab = objtab_new(&tcfg);
	if (deps.tab == NULL ||
	    (deps.keeper = keeper_new(cfg, deps.cache, deps.tab, deps.policy, err, sizeof(err))) ==
		    NULL ||
	    (deps.flights = flights_new(cfg, deps.up, deps.keeper, deps.tab, deps.policy)) ==
		    NULL ||
	    (deps.warm = warm_new(cfg, deps.up, deps.tab, deps.flights, deps.policy, deps.stats)) ==
		    NULL) {
		log_error("cannot set up the cache: %s",
			  deps.tab && !deps.keeper ? err : "out of memory");
		goto out;
	}
	keeper_backend(deps.keeper, &backend);
	objtab_set_backend(deps.tab, &backend);
	if (cfg->accounts_file != NULL) {
		if ((deps.gw = gateway_new(cfg, err, sizeof(err))) == NULL) {
			log_error("[gateway] accounts: %s", err);
			goto out;
		}
	} else if (cfg->allow_anonymous) {
		sock_name(fd, where, sizeof(where));
		log_warnx("allow_anonymous: anyone who can reach %s acts as the workspace, "
			  "unnamed and unaudited by account; add local accounts "
			  "([gateway] accounts) to know who does what",
			  where);
	}
	/* Before the front: an instance whose Redis answers has caught up
	 * with the others' writes before it serves its first request. */
	if (cfg->cluster_redis != NULL &&
	    (deps.cluster = cluster_new(cfg, deps.policy, deps.tab, deps.keeper, deps.gw, err,
					sizeof(err))) == NULL) {
		log_error("[cluster] %s", err);
		goto out;
	}
	if (deps.l2 != NULL) {
		if (l2_start(deps.l2, deps.cluster, err, sizeof(err)) < 0) {
			log_error("[cluster] %s", err);
			goto out;
		}
		if (cfg->cluster_shared_cache)
			flights_set_l2(deps.flights, deps.l2);
	}
	if (cfg->tls_cert != NULL && (deps.tls = tls_new(cfg, err, sizeof(err))) == NULL) {
		log_error("[server] %s", err);
		goto out;
	}
	deps.audit = audit_open(cfg->audit, err, sizeof(err));
	if (deps.audit == NULL && err[0] != '\0') {
		log_error("[log] audit: %s", err);
		goto out;
	}
	if ((front = front_new(&deps, fd, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		goto out;
	}
	sock_name(fd, where, sizeof(where));
	log_info("kaleidod %s serving %s on %s for %s, cache %s", PACKAGE_VERSION,
		 deps.tls != NULL ? "https" : "http", where, cfg->upstream_url,
		 deps.cache ? cache_path(deps.cache) : "(none)");
	/* The first STATUS= line before READY=1; it also opens this thread's
	 * reader of the cache file now, not at some later tick. */
	watchdog_init(&wd);
	watchdog_tick(&wd, front, &deps);
	sd_notify(0, "READY=1");

	for (;;) {
		const struct timespec tick = { 0, TICK_NS };

		if ((sig = sigtimedwait(&set, NULL, &tick)) < 0) {
			watchdog_tick(&wd, front, &deps);
			warm_tick(deps.warm);
			if (deps.gw != NULL)
				gateway_tick(deps.gw);
			keeper_expire_waits(deps.keeper);
			objtab_sweep(deps.tab);
			continue;
		}
		if (sig == SIGHUP) {
			reload(&fl, cfg, deps.up, &secret);
			reload_gateway(&deps);
			continue;
		}
		log_info("signal %d: stopping", sig);
		break;
	}
	sd_notify(0, "STOPPING=1");
	rc = 0;
out:
	/* Stop taking connections, give what is in flight a moment, fail the
	 * rest (which resumes every parked connection), then stop the server. */
	front_quiesce(front);
	/* Logins still queued are answered (no one stays parked on them). */
	gateway_stop(deps.gw);
	/* Lookups waiting on another instance's lease go to the API now,
	 * while it can still answer them. */
	l2_stop(deps.l2);
	if (deps.up != NULL && rc == 0)
		drain(deps.up, DRAIN_SECONDS);
	if (deps.up != NULL)
		upstream_shutdown(deps.up);
	/* Writes waiting for their invalidations to reach the file are
	 * answered now: no connection may stay suspended. */
	if (deps.keeper != NULL)
		keeper_release_waits(deps.keeper);
	/* Waiters wake only once their flight is over; libmicrohttpd aborts if
	 * stopped with a connection still suspended, so if flights will not
	 * end, leave the server to the exit rather than stop it. */
	if (deps.flights != NULL && !flights_drain(deps.flights, DRAIN_SECONDS)) {
		log_warnx("cache fetches did not end in time; exiting without closing "
			  "connections");
		return rc;
	}
	front_free(&front);
	/* every flight is over: nothing asks the shared cache any more */
	l2_free(&deps.l2);
	/* publishes what is pending; calls into the keeper and the gateway */
	cluster_free(&deps.cluster);
	tls_free(&deps.tls); /* after the daemons that use it */
	gateway_free(&deps.gw);
	audit_close(&deps.audit);
	warm_free(&deps.warm);
	keeper_free(&deps.keeper); /* writes what is queued; calls into the table */
	flights_free(&deps.flights);
	objtab_free(&deps.tab);
	upstream_free(&deps.up);
	cache_close(&deps.cache);
	policy_free(&deps.policy);
	stats_free(&deps.stats);
	traffic_free(&deps.traffic);
	config_free(&cfg);
	secret_free(&secret);
	curl_global_cleanup();
	return rc;
}
