/*
 * config: every setting kaleidod has, in one table (lighttpd's cpk[] idea).
 *
 * A key is {section, name, type, default, where it is stored, bounds,
 * validator, one-line doc}.  The doc repeats kaleidod.conf(5) in a few words;
 * tests/unit/test_config checks that the page documents exactly these keys
 * and names the same defaults.
 *
 * config_new() applies the defaults through the same setter the file, the
 * environment and the flags use, so a default can never be a value the parser
 * would refuse.  config_finish() is the single pass for rules that span keys
 * and for defaults that depend on the environment.
 *
 * The INI file is read by inih through our own line reader, which keeps the
 * physical line number for "file:line" messages, refuses lines longer than
 * inih's buffer instead of letting it split them, and strips indentation so
 * inih's multi-line continuation (which would hand us the same key twice, and
 * add a second upstream header) never applies.
 *
 * Nothing here prints except config_print(); no error text ever contains a
 * configured value, so a secret cannot leak through one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "errbuf.h"
#include "log.h"
#include "secret.h"

#define FAMILY_PREFIX "family."
#define FAMILY_NAME_MAX 32
#define SECRET_MAX 4096
#define MASK "********"

enum ctype {
	CT_STRING,
	CT_UINT,     /* a count */
	CT_DURATION, /* seconds, suffix s/m/h/d */
	CT_SIZE,     /* bytes, suffix K/M/G (powers of 1024) */
	CT_AUTH,     /* enum config_auth_header */
	CT_HEADER,   /* repeatable "Name: value" */
	CT_PREFIXES, /* space-separated path prefixes */
	CT_BOOL,     /* yes/no, true/false, on/off, 1/0 */
};

enum cscope {
	SC_MAIN,   /* offset into struct config */
	SC_FAMILY, /* offset into struct config_family; section "family.NAME" */
};

/* Checks (and may normalise in place) a string value; NULL or the reason. */
typedef const char *(*cvalidator)(char *value);

struct ckey {
	const char *section; /* "family" stands for every [family.NAME] */
	const char *key;
	enum ctype type;
	const char *def; /* NULL: unset / empty */
	enum cscope scope;
	size_t off;
	size_t count_off; /* lists: the int holding the count */
	unsigned long long min, max;
	cvalidator check;
	const char *doc; /* one line for users; agrees with kaleidod.conf(5) */
};

static const char *check_url(char *value);
static const char *check_listen(char *value);
static const char *check_level(char *value);
static const char *check_names(char *value);
static const char *check_origins(char *value);
static const char *check_audit(char *value);
static const char *check_redis(char *value);
static const char *check_prefix(char *value);

#define M(f) SC_MAIN, offsetof(struct config, f)
#define F(f) SC_FAMILY, offsetof(struct config_family, f)
#define U_MAX UINT_MAX

static const struct ckey ckeys[] = {
	{ "upstream", "url", CT_STRING, "https://api.kaleidoscope.bio", M(upstream_url), 0, 0, 0,
	  check_url,
	  "Base URL of the API, no query (string, default https://api.kaleidoscope.bio)" },
	{ "upstream", "client_id", CT_STRING, NULL, M(client_id), 0, 0, 0, NULL,
	  "The API client id; required, here or in the environment (no default)" },
	{ "upstream", "client_secret", CT_STRING, NULL, M(client_secret), 0, 0, 0, NULL,
	  "The API client secret; prefer client_secret_file or the environment (no default)" },
	{ "upstream", "client_secret_file", CT_STRING, NULL, M(client_secret_file), 0, 0, 0, NULL,
	  "File holding the secret on one line, read if no other source gave one (no default)" },
	{ "upstream", "auth_header", CT_AUTH, "both", M(auth_header), 0, 0, 0, NULL,
	  "Upstream token header: both, authorization or x-kal-authorization (default both)" },
	{ "upstream", "header", CT_HEADER, NULL, M(headers), offsetof(struct config, nheaders), 0,
	  0, NULL,
	  "An extra \"Name: value\" header on every upstream request; repeatable, at most 16" },
	{ "upstream", "connect_timeout", CT_DURATION, "10", M(connect_timeout), 0, 1, U_MAX, NULL,
	  "How long to wait for a connection to the API, TLS included (duration, default 10)" },
	{ "upstream", "timeout", CT_DURATION, "30", M(timeout), 0, 1, U_MAX, NULL,
	  "How long to wait for the API's response headers, then 504 (duration, default 30)" },
	{ "upstream", "auth_retry_min", CT_DURATION, "1", M(auth_retry_min), 0, 1, U_MAX, NULL,
	  "First wait after a failed token request, doubled per failure (duration, default 1)" },
	{ "upstream", "auth_retry_max", CT_DURATION, "300", M(auth_retry_max), 0, 1, U_MAX, NULL,
	  "The cap on the wait between failed token requests (duration, default 300)" },
	{ "upstream", "max_concurrent", CT_UINT, "32", M(max_concurrent), 0, 1, 100000, NULL,
	  "Requests sent to the API at once; the rest wait their turn (count, default 32)" },
	{ "upstream", "max_queued", CT_UINT, "1024", M(max_queued), 0, 0, 1000000, NULL,
	  "Requests that may wait for one of those; beyond, 503 (count, default 1024)" },

	{ "server", "listen", CT_STRING, "127.0.0.1:8765", M(listen), 0, 0, 0, check_listen,
	  "Loopback ADDR:PORT or [IPv6]:PORT that clients connect to (default 127.0.0.1:8765)" },
	{ "server", "max_connections", CT_UINT, "4096", M(max_connections), 0, 1, U_MAX, NULL,
	  "Client connections served at once, idle keep-alive ones too (count, default 4096)" },
	{ "server", "max_connections_per_ip", CT_UINT, "0", M(max_connections_per_ip), 0, 0,
	  1000000, NULL,
	  "Connections one client address may hold open; 0 means no cap (count, default 0)" },
	{ "server", "connection_timeout", CT_DURATION, "60", M(connection_timeout), 0, 1, U_MAX,
	  NULL, "A client connection with no traffic this long is closed (duration, default 60)" },
	{ "server", "threads", CT_UINT, "0", M(threads), 0, 0, 1024, NULL,
	  "Threads serving clients; 0 means one per CPU core but one (count, default 0)" },
	{ "server", "token_lifetime", CT_DURATION, "3600", M(token_lifetime), 0, 1, U_MAX, NULL,
	  "The expires_in of the local tokens handed out (duration, default 3600)" },
	{ "server", "max_buffered_body", CT_SIZE, "1M", M(max_buffered_body), 0, 0, SIZE_MAX, NULL,
	  "Request bodies up to this are buffered, replayable after a 401 (size, default 1M)" },
	{ "server", "server_names", CT_STRING, NULL, M(server_names), 0, 0, 0, check_names,
	  "Host names, space-separated, accepted besides loopback and localhost (default none)" },
	{ "server", "allowed_origins", CT_STRING, NULL, M(allowed_origins), 0, 0, 0, check_origins,
	  "Web page origins, space-separated, whose pages may use this daemon (default none)" },
	{ "server", "tls_cert", CT_STRING, NULL, M(tls_cert), 0, 0, 0, NULL,
	  "PEM certificate chain, the server's first; set, the listener speaks TLS (default none)" },
	{ "server", "tls_key", CT_STRING, NULL, M(tls_key), 0, 0, 0, NULL,
	  "PEM private key of tls_cert, unencrypted; required with it (default none)" },
	{ "server", "tls_priorities", CT_STRING, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
	  M(tls_priorities), 0, 0, 0, NULL,
	  "GnuTLS priority string (default NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2)" },
	{ "server", "tls_client_ca", CT_STRING, NULL, M(tls_client_ca), 0, 0, 0, NULL,
	  "PEM CA certificates that sign client certificates; set, clients are asked (default none)" },
	{ "server", "tls_client_required", CT_BOOL, "no", M(tls_client_required), 0, 0, 0, NULL,
	  "Refuse requests without a client certificate the CA signed (boolean, default no)" },

	{ "cache", "file", CT_STRING, NULL, M(cache_file), 0, 0, 0, NULL,
	  "The SQLite cache file (default: cache.db in the state directory)" },
	/* SQLite's own limit on one blob is 1,000,000,000 bytes. */
	{ "cache", "max_entry_size", CT_SIZE, "64M", M(max_entry_size), 0, 0, 900 * 1024 * 1024,
	  NULL, "Larger answers are forwarded, not stored; at most 900M (size, default 64M)" },
	{ "cache", "max_size", CT_SIZE, "256M", M(max_size), 0, 0, SIZE_MAX, NULL,
	  "What the entries may take; least recently used go beyond it (size, default 256M)" },
	{ "cache", "memory", CT_SIZE, "8M", M(memory), 0, 0, SIZE_MAX, NULL,
	  "Recently used entries also kept in memory (size, default 8M)" },
	{ "cache", "stale_while_revalidate", CT_DURATION, "60", M(stale_while_revalidate), 0, 0,
	  U_MAX, NULL,
	  "After expiry, serve stale this long while refreshing behind (duration, default 60)" },
	{ "cache", "stale_if_error", CT_DURATION, "7d", M(stale_if_error), 0, 0, U_MAX, NULL,
	  "After expiry, serve stale this long when the API fails (duration, default 7d)" },
	{ "cache", "refresh_ahead", CT_BOOL, "yes", M(refresh_ahead), 0, 0, 0, NULL,
	  "Fetch each family's base list at start and before it expires (boolean, default yes)" },
	{ "cache", "records", CT_BOOL, "no", M(records), 0, 0, 0, NULL,
	  "Cache records and record operations briefly too; see RECORDS (boolean, default no)" },
	{ "cache", "maintenance_interval", CT_DURATION, "60", M(maintenance_interval), 0, 1, U_MAX,
	  NULL, "How often pruning, eviction and vacuum run (duration, default 60)" },

	{ "log", "level", CT_STRING, "info", M(log_level), 0, 0, 0, check_level,
	  "The least important messages logged: error, warn, info or debug (default info)" },
	{ "log", "audit", CT_STRING, "off", M(audit), 0, 0, 0, check_audit,
	  "The audit trail, a JSON line a request: an absolute FILE, journal or off (default off)" },

	{ "gateway", "accounts", CT_STRING, NULL, M(accounts_file), 0, 0, 0, NULL,
	  "The local accounts file; set, every request needs an account's token (default none)" },
	{ "gateway", "allow_anonymous", CT_BOOL, "no", M(allow_anonymous), 0, 0, 0, NULL,
	  "Serve a non-loopback address without accounts, anyone as the workspace (default no)" },
	{ "gateway", "max_body", CT_SIZE, "1G", M(max_body), 0, 0, SIZE_MAX, NULL,
	  "The largest body a write-scoped account may declare; beyond, 413 (size, default 1G)" },
	{ "gateway", "max_body_read", CT_SIZE, "64K", M(max_body_read), 0, 0, SIZE_MAX, NULL,
	  "The largest body an account without write may declare (size, default 64K)" },
	{ "gateway", "admin_from_loopback", CT_BOOL, "yes", M(admin_from_loopback), 0, 0, 0, NULL,
	  "Admin endpoints open to loopback clients without a token (boolean, default yes)" },

	{ "cluster", "redis", CT_STRING, NULL, M(cluster_redis), 0, 0, 0, check_redis,
	  "The Redis that keeps gateways coherent: unix:/PATH or redis://HOST:PORT (default none)" },
	{ "cluster", "prefix", CT_STRING, NULL, M(cluster_prefix), 0, 0, 0, check_prefix,
	  "Namespace of this workspace's keys in Redis, kaleidod:HASH of url and client_id (default derived)" },
	{ "cluster", "shared_cache", CT_BOOL, "no", M(cluster_shared_cache), 0, 0, 0, NULL,
	  "A local miss asks Redis before the API; one fetch a key for the cluster (boolean, default no)" },
	{ "cluster", "share_token", CT_BOOL, "no", M(cluster_share_token), 0, 0, 0, NULL,
	  "One upstream token for the cluster, kept in Redis (readable there!) (boolean, default no)" },

	{ "metrics", "per_account", CT_BOOL, "no", M(metrics_per_account), 0, 0, 0, NULL,
	  "Label the gateway's per-account counters in /_kaleidod/metrics (boolean, default no)" },

	{ "family", "paths", CT_PREFIXES, NULL, F(paths), offsetof(struct config_family, npaths), 0,
	  0, NULL, "The path prefixes the family covers, at most 8 (required for a new family)" },
	{ "family", "ttl", CT_DURATION, "300", F(ttl), 0, 0, U_MAX, NULL,
	  "How long an answer is served fresh; 0 turns caching off (duration, default 300)" },
	{ "family", "invalidated_by", CT_PREFIXES, NULL, F(invalidated_by),
	  offsetof(struct config_family, ninvalidated_by), 0, 0, NULL,
	  "Other prefixes whose writes empty the family too, at most 8 (default none)" },
	{ "family", "except", CT_PREFIXES, NULL, F(except), offsetof(struct config_family, nexcept),
	  0, 0, NULL,
	  "Prefixes within paths that are forwarded, never cached, at most 8 (default none)" },
	{ "family", "refresh_ahead", CT_BOOL, "yes", F(refresh_ahead), 0, 0, 0, NULL,
	  "Whether the first path is a base list fetched at start and ahead (boolean, default yes)" },
};

#undef M
#undef F

/*
 * The families a fresh config has, in this order: every list the SDKs keep
 * in-process, with the API's writes that change each (shared/
 * kaleidoscope-api.md); a family's own prefix always invalidates it.  The
 * records families are short-lived and only there with [cache] records.
 */
static const struct {
	const char *name, *paths, *invalidated_by, *except, *ttl;
	int no_refresh, records;
} default_families[] = {
	{ "programs", "/programs", NULL, NULL, NULL, 0, 0 },
	{ "entity_slices", "/entity_slices", "/push/imports /key_fields /data_fields", NULL, NULL,
	  0, 0 },
	{ "record_views", "/record_views", "/push/imports /key_fields /data_fields", NULL, NULL, 0,
	  0 },
	{ "key_fields", "/key_fields", "/push/imports", NULL, NULL, 0, 0 },
	{ "data_fields", "/data_fields", "/push/imports", NULL, NULL, 0, 0 },
	{ "property_fields", "/property_fields", "/properties", NULL, NULL, 0, 0 },
	{ "activities", "/activities", NULL, NULL, NULL, 0, 0 },
	{ "activity_definitions", "/activity_definitions", NULL, NULL, NULL, 0, 0 },
	{ "activity_labels", "/activity_labels", NULL, NULL, NULL, 0, 0 },
	{ "dashboards", "/dashboards", NULL, NULL, NULL, 0, 0 },
	{ "workspace_active", "/workspaces/active", NULL, NULL, NULL, 0, 0 },
	{ "workspace_members", "/workspaces/members", NULL, NULL, NULL, 0, 0 },
	{ "workspace_groups", "/workspaces/groups", NULL, NULL, NULL, 0, 0 },
	/* kalbio's own TTLs; exports are files, forwarded as they come. */
	{ "records", "/records", "/operations /properties", "/records/export", "60", 1, 1 },
	{ "record_operations", "/records/*/operations /operations/*/records",
	  "/records /properties", NULL, "10", 1, 1 },
};

static const char *const auth_names[] = { "both", "authorization", "x-kal-authorization" };

/* Outcome of set_key(), so callers can word the message. */
enum set_result { SET_OK = 0, SET_BAD_VALUE = -1, SET_NO_SECTION = -2, SET_NO_KEY = -3 };

static void *field(void *base, size_t off)
{
	return (char *)base + off;
}

static const void *cfield(const void *base, size_t off)
{
	return (const char *)base + off;
}

static void free_list(char **list, int *n)
{
	int i;

	for (i = 0; i < *n; i++) {
		free(list[i]);
		list[i] = NULL;
	}
	*n = 0;
}

static int has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

/* --- validators and parsers; each returns NULL or why the value is bad --- */

int config_parse_redis(const char *spec, char *host, size_t hostlen, unsigned *port)
{
	const char *p, *colon;
	size_t hl;
	unsigned long v = 0;

	if (spec == NULL)
		return -1;
	if (strncmp(spec, "unix:", 5) == 0) {
		/* 107: what fits in sockaddr_un, which hiredis would cut short */
		if (spec[5] != '/' || strlen(spec + 5) >= hostlen || strlen(spec + 5) > 107)
			return -1;
		snprintf(host, hostlen, "%s", spec + 5);
		*port = 0;
		return 0;
	}
	if (strncmp(spec, "redis://", 8) != 0)
		return -1;
	p = spec + 8;
	if ((colon = strrchr(p, ':')) == NULL || strchr(p, '@') != NULL || strchr(p, '/') != NULL)
		return -1;
	hl = (size_t)(colon - p);
	if (p[0] == '[' && hl > 2 && p[hl - 1] == ']') {
		p++;
		hl -= 2;
	}
	if (hl == 0 || hl >= hostlen || memchr(p, ' ', hl) != NULL)
		return -1;
	for (const char *d = colon + 1; *d != '\0'; d++) {
		if (*d < '0' || *d > '9' || (v = v * 10 + (unsigned long)(*d - '0')) > 65535)
			return -1;
	}
	if (colon[1] == '\0' || v == 0)
		return -1;
	memcpy(host, p, hl);
	host[hl] = '\0';
	*port = (unsigned)v;
	return 0;
}

static const char *check_redis(char *value)
{
	char host[256];
	unsigned port;

	if (strchr(value, '@') != NULL)
		return "must not carry a password; set KALEIDOD_REDIS_PASSWORD or the "
		       "systemd credential redis_password";
	if (config_parse_redis(value, host, sizeof(host), &port) < 0)
		return "must be unix:/ABSOLUTE/PATH or redis://HOST:PORT";
	return NULL;
}

static const char *check_prefix(char *value)
{
	size_t n = strlen(value);

	if (n == 0 || n > 64)
		return "must be 1 to 64 bytes";
	for (const char *c = value; *c != '\0'; c++)
		if (*c <= ' ' || *c > '~')
			return "must be printable ASCII without spaces";
	return NULL;
}

static const char *check_url(char *value)
{
	size_t skip, len;

	if (strncasecmp(value, "http://", 7) == 0)
		skip = 7;
	else if (strncasecmp(value, "https://", 8) == 0)
		skip = 8;
	else
		return "must start with http:// or https://";
	if (strpbrk(value, " \t?#") != NULL)
		return "must be a base URL without spaces, query or fragment";
	len = strlen(value);
	while (len > skip && value[len - 1] == '/')
		value[--len] = '\0';
	if (len == skip || value[skip] == '/')
		return "has no host";
	/* user:password@ would travel in logs, health and error bodies. */
	if (memchr(value + skip, '@', strcspn(value + skip, "/")) != NULL)
		return "must not carry credentials (user@ or user:password@); kaleidod "
		       "authenticates with the client id and secret";
	return NULL;
}

int config_parse_listen(const char *spec, char *host, size_t hostlen, unsigned *port)
{
	unsigned char addr[sizeof(struct in6_addr)];
	char h[INET6_ADDRSTRLEN + 1];
	const char *colon, *p;
	size_t hl;
	unsigned long v = 0;

	if (spec == NULL)
		return -1;
	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (close == NULL || close[1] != ':')
			return -1;
		hl = (size_t)(close - spec - 1);
		if (hl == 0 || hl >= sizeof(h))
			return -1;
		memcpy(h, spec + 1, hl);
		h[hl] = '\0';
		if (inet_pton(AF_INET6, h, addr) != 1)
			return -1;
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL)
			return -1;
		hl = (size_t)(colon - spec);
		if (hl == 0 || hl >= sizeof(h))
			return -1;
		memcpy(h, spec, hl);
		h[hl] = '\0';
		if (strcmp(h, "localhost") != 0 && inet_pton(AF_INET, h, addr) != 1)
			return -1;
	}
	p = colon + 1;
	if (*p == '\0' || strlen(p) > 5)
		return -1;
	for (; *p != '\0'; p++) {
		if (!isdigit((unsigned char)*p))
			return -1;
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v > 65535 || hl >= hostlen)
		return -1;
	memcpy(host, h, hl + 1);
	*port = (unsigned)v;
	return 0;
}

static const char *check_listen(char *value)
{
	char host[INET6_ADDRSTRLEN + 1];
	unsigned port;

	if (config_parse_listen(value, host, sizeof(host), &port) < 0)
		return "expected ADDR:PORT (ADDR an IPv4 address, localhost or [IPv6]; PORT "
		       "0-65535)";
	return NULL;
}

/* Lower-cases value; 1 when every space-separated word is made of the
 * bytes in ok (and is not empty), else 0. */
static int words_of(char *value, const char *ok)
{
	int words = 0;

	for (char *p = value; *p != '\0'; p++) {
		*p = (char)tolower((unsigned char)*p);
		if (*p != ' ' && strchr(ok, *p) == NULL)
			return 0;
		words += *p != ' ' && (p == value || p[-1] == ' ');
	}
	return words > 0;
}

#define HOST_BYTES "abcdefghijklmnopqrstuvwxyz0123456789.-"

static const char *check_names(char *value)
{
	if (!words_of(value, HOST_BYTES))
		return "expected host names separated by spaces (letters, digits, '.', '-')";
	return NULL;
}

static const char *check_origins(char *value)
{
	if (!words_of(value, HOST_BYTES ":/[]"))
		return "expected origins separated by spaces, as a browser sends them: "
		       "https://host[:port]";
	for (char *w = value; *w != '\0'; w += strcspn(w, " "), w += strspn(w, " ")) {
		size_t n = strcspn(w, " ");
		const char *host = strncmp(w, "https://", 8) == 0 ? w + 8 :
				   strncmp(w, "http://", 7) == 0  ? w + 7 :
								    NULL;

		if (host == NULL || host >= w + n || memchr(host, '/', (size_t)(w + n - host)))
			return "expected origins separated by spaces, as a browser sends them: "
			       "https://host[:port] (no path)";
	}
	return NULL;
}

static const char *check_audit(char *value)
{
	if (strcmp(value, "off") == 0 || strcmp(value, "journal") == 0 || value[0] == '/')
		return NULL;
	return "expected an absolute file name, journal or off";
}

static const char *check_level(char *value)
{
	enum log_level lvl;

	if (log_level_parse(value, &lvl) < 0)
		return "expected error, warn, info or debug";
	/* canonical names are never longer than what log_level_parse accepts */
	strcpy(value, log_level_name(lvl));
	return NULL;
}

/*
 * Digits with an optional one-letter suffix from units/mults; the product
 * must lie in [min, max].
 */
static const char *parse_number(const char *value, const char *units,
				const unsigned long long *mults, unsigned long long min,
				unsigned long long max, unsigned long long *out, const char *what)
{
	unsigned long long v = 0, mult = 1;
	const char *p = value, *u;

	if (!isdigit((unsigned char)*p))
		return what;
	for (; isdigit((unsigned char)*p); p++) {
		if (v > (ULLONG_MAX - 9) / 10)
			return "number too large";
		v = v * 10 + (unsigned long long)(*p - '0');
	}
	if (*p != '\0') {
		if (units == NULL || p[1] != '\0' || (u = strchr(units, *p)) == NULL)
			return what;
		mult = mults[u - units];
	}
	if (v != 0 && mult > ULLONG_MAX / v)
		return "number too large";
	v *= mult;
	if (v < min)
		return min == 1 ? "must be greater than 0" : "number too small";
	if (v > max)
		return "number too large";
	*out = v;
	return NULL;
}

static const unsigned long long dur_mults[] = { 1, 1, 60, 60, 3600, 3600, 86400, 86400 };
static const unsigned long long size_mults[] = { 1ULL << 10, 1ULL << 10, 1ULL << 20,
						 1ULL << 20, 1ULL << 30, 1ULL << 30 };

static int is_tchar(int c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Headers kaleidod or libcurl must own for the exchange to stay well framed. */
static const char *const reserved_headers[] = { "Host", "Content-Length", "Transfer-Encoding",
						"Connection" };

/* "Name: value" normalised into *out (malloc'd). */
static const char *parse_header(const char *value, char **out)
{
	const char *colon = value, *v, *end;
	size_t nl, i;

	while (is_tchar((unsigned char)*colon))
		colon++;
	if (colon == value || *colon != ':')
		return "expected Name: value with a token as name";
	if (strpbrk(value, "\r\n") != NULL)
		return "must not contain CR or LF";
	nl = (size_t)(colon - value);
	for (i = 0; i < sizeof(reserved_headers) / sizeof(reserved_headers[0]); i++)
		if (strlen(reserved_headers[i]) == nl &&
		    strncasecmp(value, reserved_headers[i], nl) == 0)
			return "this header is managed by kaleidod";
	v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	end = v + strlen(v);
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end == v)
		return "header value is empty";
	/* printed back as "Name: ;x", whose " ;" the reader takes for a
	 * comment (found by tests/fuzz/fuzz_config) */
	if (*v == ';')
		return "header value must not start with ';'";
	for (const char *p = v; p < end; p++)
		if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
			return "must not contain control characters";
	if (asprintf(out, "%.*s: %.*s", (int)nl, value, (int)(end - v), v) < 0) {
		*out = NULL;
		return "out of memory";
	}
	return NULL;
}

/* Space-separated prefixes into list (replacing it). */
/* A '*' stands for one whole segment, never the first (that would match
 * every path, like "/"). */
static const char *check_wildcards(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != '*')
			continue;
		if (p[i - 1] != '/' || (i + 1 < len && p[i + 1] != '/'))
			return "a '*' in a prefix stands for one whole segment: /records/*/values";
		if (i == 1)
			return "a prefix must start with a named segment, not '*'";
	}
	return NULL;
}

static const char *parse_prefixes(const char *value, char **list, int *n)
{
	char *tmp[CONFIG_MAX_PREFIXES] = { NULL };
	const char *p = value, *why = NULL;
	int cnt = 0, i;

	for (;;) {
		size_t len;

		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		len = strcspn(p, " \t");
		if (*p != '/') {
			why = "each prefix must start with '/'";
			goto fail;
		}
		if (cnt == CONFIG_MAX_PREFIXES) {
			why = "too many prefixes (at most 8)";
			goto fail;
		}
		if (memchr(p, '?', len) != NULL || memchr(p, '#', len) != NULL) {
			why = "a prefix is a path, without query or fragment";
			goto fail;
		}
		while (len > 1 && p[len - 1] == '/')
			len--;
		if (len == 1) {
			why = "\"/\" would match every path";
			goto fail;
		}
		if ((why = check_wildcards(p, len)) != NULL)
			goto fail;
		tmp[cnt] = strndup(p, len);
		if (tmp[cnt] == NULL) {
			why = "out of memory";
			goto fail;
		}
		cnt++;
		p += strcspn(p, " \t");
	}
	free_list(list, n);
	for (i = 0; i < cnt; i++)
		list[i] = tmp[i];
	*n = cnt;
	return NULL;

fail:
	free_list(tmp, &cnt);
	return why;
}

/* --- families --- */

static const char *check_family_name(const char *name)
{
	const char *p;

	if (*name == '\0')
		return "a family needs a name: [family.NAME]";
	if (strlen(name) > FAMILY_NAME_MAX)
		return "family name too long (at most 32 characters)";
	for (p = name; *p != '\0'; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_'))
			return "family names use only a-z, 0-9 and _";
	return NULL;
}

static int set_value(struct config *cfg, void *base, const struct ckey *k, const char *value,
		     const char *origin, const char **why);

/* Finds family name, or with create adds it with the table's defaults. */
static struct config_family *family_get(struct config *cfg, const char *name, int create,
					const char **why)
{
	struct config_family *fam;
	size_t i;
	int j;

	for (j = 0; j < cfg->nfamilies; j++)
		if (strcmp(cfg->families[j].name, name) == 0)
			return &cfg->families[j];
	if (!create)
		return NULL;
	if (cfg->nfamilies == CONFIG_MAX_FAMILIES) {
		*why = "too many families (at most 32)";
		return NULL;
	}
	fam = &cfg->families[cfg->nfamilies];
	memset(fam, 0, sizeof(*fam));
	fam->name = strdup(name);
	if (fam->name == NULL) {
		*why = "out of memory";
		return NULL;
	}
	cfg->nfamilies++;
	for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++)
		if (ckeys[i].scope == SC_FAMILY && ckeys[i].def != NULL &&
		    set_value(cfg, fam, &ckeys[i], ckeys[i].def, NULL, why) < 0)
			return NULL;
	return fam;
}

/* Sets one of fam's keys to a built-in default (not counted as set). */
static int family_default(struct config *cfg, struct config_family *fam, const char *key,
			  const char *value, const char **why)
{
	for (size_t i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++)
		if (ckeys[i].scope == SC_FAMILY && strcmp(ckeys[i].key, key) == 0)
			return set_value(cfg, fam, &ckeys[i], value, NULL, why);
	*why = "unknown key";
	return -1;
}

static void family_clear(struct config_family *fam)
{
	free(fam->name);
	fam->name = NULL;
	free_list(fam->paths, &fam->npaths);
	free_list(fam->invalidated_by, &fam->ninvalidated_by);
	free_list(fam->except, &fam->nexcept);
}

/* --- the setter every source goes through --- */

static int set_value(struct config *cfg, void *base, const struct ckey *k, const char *value,
		     const char *origin, const char **why)
{
	unsigned long long n;
	char *copy = NULL;
	int i;

	if (has_control(value)) {
		*why = "must not contain control characters";
		return -1;
	}
	switch (k->type) {
	case CT_STRING: {
		char **dst = field(base, k->off);

		/* an empty value returns an optional key to "not set" */
		if (*value != '\0') {
			copy = strdup(value);
			if (copy == NULL) {
				*why = "out of memory";
				return -1;
			}
			if (k->check != NULL && (*why = k->check(copy)) != NULL)
				goto fail;
		} else if (k->def != NULL) {
			*why = "must not be empty";
			return -1;
		}
		if (k->off == offsetof(struct config, client_secret) && base == cfg) {
			char *src = NULL;

			if (copy != NULL &&
			    (src = strdup(origin != NULL ? origin : "config file")) == NULL) {
				*why = "out of memory";
				goto fail;
			}
			free(cfg->client_secret_source);
			cfg->client_secret_source = src;
			secret_free(dst);
		} else {
			free(*dst);
		}
		*dst = copy;
		return 0;
	}
	case CT_UINT:
		*why = parse_number(value, NULL, NULL, k->min, k->max, &n, "expected a number");
		if (*why != NULL)
			return -1;
		*(unsigned *)field(base, k->off) = (unsigned)n;
		return 0;
	case CT_DURATION:
		*why = parse_number(value, "sSmMhHdD", dur_mults, k->min, k->max, &n,
				    "expected seconds, or a number with suffix s, m, h or d");
		if (*why != NULL)
			return -1;
		*(unsigned *)field(base, k->off) = (unsigned)n;
		return 0;
	case CT_SIZE:
		*why = parse_number(value, "kKmMgG", size_mults, k->min, k->max, &n,
				    "expected bytes, or a number with suffix K, M or G");
		if (*why != NULL)
			return -1;
		*(size_t *)field(base, k->off) = (size_t)n;
		return 0;
	case CT_BOOL: {
		static const char *const yes[] = { "yes", "true", "on", "1" }, *const no[] = {
			"no", "false", "off", "0"
		};

		for (i = 0; i < 4; i++) {
			if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
				*(int *)field(base, k->off) = strcasecmp(value, yes[i]) == 0;
				return 0;
			}
		}
		*why = "expected yes or no";
		return -1;
	}
	case CT_AUTH:
		for (i = 0; i < (int)(sizeof(auth_names) / sizeof(auth_names[0])); i++) {
			if (strcasecmp(value, auth_names[i]) == 0) {
				*(enum config_auth_header *)field(base, k->off) =
					(enum config_auth_header)i;
				return 0;
			}
		}
		*why = "expected both, authorization or x-kal-authorization";
		return -1;
	case CT_HEADER: {
		char **list = field(base, k->off);
		int *cnt = field(base, k->count_off);

		if (*cnt == CONFIG_MAX_HEADERS) {
			*why = "too many headers (at most 16)";
			return -1;
		}
		if ((*why = parse_header(value, &copy)) != NULL)
			return -1;
		list[(*cnt)++] = copy;
		return 0;
	}
	case CT_PREFIXES:
		*why = parse_prefixes(value, field(base, k->off), field(base, k->count_off));
		return *why != NULL ? -1 : 0;
	}
	*why = "internal error: unknown key type";
	return -1;

fail:
	secret_free(&copy);
	return -1;
}

static int section_known(const char *section)
{
	size_t i;

	for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++)
		if (ckeys[i].scope == SC_MAIN && strcmp(ckeys[i].section, section) == 0)
			return 1;
	return 0;
}

/* NULL when section is a valid heading, else why not. */
static const char *check_section(const char *section)
{
	if (strncmp(section, FAMILY_PREFIX, strlen(FAMILY_PREFIX)) == 0)
		return check_family_name(section + strlen(FAMILY_PREFIX));
	return section_known(section) ? NULL : "unknown section";
}

static enum set_result set_key(struct config *cfg, const char *section, const char *key,
			       const char *value, const char *origin, const char **why)
{
	enum cscope scope = SC_MAIN;
	const char *tsection = section;
	void *base = cfg;
	size_t i;

	if ((*why = check_section(section)) != NULL)
		return SET_NO_SECTION;
	if (strncmp(section, FAMILY_PREFIX, strlen(FAMILY_PREFIX)) == 0) {
		scope = SC_FAMILY;
		tsection = "family";
	}
	for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++) {
		if (ckeys[i].scope != scope || strcmp(ckeys[i].section, tsection) != 0 ||
		    strcmp(ckeys[i].key, key) != 0)
			continue;
		if (scope == SC_FAMILY) {
			base = family_get(cfg, section + strlen(FAMILY_PREFIX), 1, why);
			if (base == NULL)
				return SET_BAD_VALUE;
			((struct config_family *)base)->set = 1;
		}
		return set_value(cfg, base, &ckeys[i], value, origin, why) < 0 ? SET_BAD_VALUE :
										 SET_OK;
	}
	*why = "unknown key";
	return SET_NO_KEY;
}

/* --- public interface --- */

void config_free(struct config **cfgp)
{
	struct config *cfg;
	int i;

	if (cfgp == NULL || *cfgp == NULL)
		return;
	cfg = *cfgp;
	free(cfg->upstream_url);
	free(cfg->client_id);
	secret_free(&cfg->client_secret);
	free(cfg->client_secret_source);
	free(cfg->client_secret_file);
	/* extra headers often carry credentials of a proxy in front of the API */
	for (i = 0; i < cfg->nheaders; i++)
		secret_free(&cfg->headers[i]);
	free(cfg->listen);
	free(cfg->server_names);
	free(cfg->allowed_origins);
	free(cfg->cache_file);
	free(cfg->log_level);
	free(cfg->audit);
	free(cfg->cluster_redis);
	free(cfg->cluster_prefix);
	secret_free(&cfg->cluster_password);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_priorities);
	free(cfg->tls_client_ca);
	free(cfg->accounts_file);
	for (i = 0; i < cfg->nfamilies; i++)
		family_clear(&cfg->families[i]);
	free(cfg->config_file);
	free(cfg);
	*cfgp = NULL;
}

struct config *config_new(void)
{
	struct config *cfg = calloc(1, sizeof(*cfg));
	struct config_family *fam;
	const char *why;
	size_t i;

	if (cfg == NULL)
		return NULL;
	for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++)
		if (ckeys[i].scope == SC_MAIN && ckeys[i].def != NULL &&
		    set_value(cfg, cfg, &ckeys[i], ckeys[i].def, NULL, &why) < 0)
			goto fail;
	for (i = 0; i < sizeof(default_families) / sizeof(default_families[0]); i++) {
		fam = family_get(cfg, default_families[i].name, 1, &why);
		if (fam == NULL ||
		    parse_prefixes(default_families[i].paths, fam->paths, &fam->npaths) != NULL)
			goto fail;
		if (default_families[i].invalidated_by != NULL &&
		    parse_prefixes(default_families[i].invalidated_by, fam->invalidated_by,
				   &fam->ninvalidated_by) != NULL)
			goto fail;
		if (default_families[i].except != NULL &&
		    parse_prefixes(default_families[i].except, fam->except, &fam->nexcept) != NULL)
			goto fail;
		if (default_families[i].ttl != NULL &&
		    family_default(cfg, fam, "ttl", default_families[i].ttl, &why) < 0)
			goto fail;
		fam->refresh_ahead = !default_families[i].no_refresh;
		fam->records = default_families[i].records;
	}
	return cfg;

fail:
	config_free(&cfg);
	return NULL;
}

struct parse_ctx {
	struct config *cfg;
	FILE *fp;
	int lineno;    /* physical line just handed to inih */
	int err_line;  /* first error we found ourselves, 0: none */
	char err[512]; /* its text, without "file:line: " */
};

static void ctx_error(struct parse_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void ctx_error(struct parse_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	if (ctx->err_line != 0)
		return;
	ctx->err_line = ctx->lineno;
	va_start(ap, fmt);
	vsnprintf(ctx->err, sizeof(ctx->err), fmt, ap);
	va_end(ap);
}

/*
 * inih's fgets-style reader.  One call consumes exactly one physical line, so
 * inih's line count (and the number it returns on error) stays the file's.
 */
static char *cfg_reader(char *str, int num, void *stream)
{
	struct parse_ctx *ctx = stream;
	size_t len, skip;
	int c;

	if (fgets(str, num, ctx->fp) == NULL)
		return NULL;
	ctx->lineno++;
	len = strlen(str);
	if (len > 0 && str[len - 1] != '\n' && !feof(ctx->fp)) {
		c = getc(ctx->fp);
		if (c == '\r')
			c = getc(ctx->fp);
		if (c != '\n' && c != EOF) {
			while (c != '\n' && c != EOF)
				c = getc(ctx->fp);
			ctx_error(ctx, "line too long (at most %d bytes)", num - 1);
		}
	}
	skip = 0;
	/* A UTF-8 byte-order mark may open the file.  inih drops one from the
	 * start of what the first line hands it; drop it here instead, so that
	 * one after blanks (which the stripping below would bring to the start)
	 * is not taken for a mark, and so hides no section or value from the
	 * checks below (found by tests/fuzz/fuzz_config). */
	if (ctx->lineno == 1 && len >= 3 && memcmp(str, "\xEF\xBB\xBF", 3) == 0)
		skip = 3;
	while (str[skip] != '\0' && isspace((unsigned char)str[skip]) && str[skip] != '\n')
		skip++;
	memmove(str, str + skip, len - skip + 1);
	if (ctx->lineno == 1 && strncmp(str, "\xEF\xBB\xBF", 3) == 0)
		ctx_error(ctx, "a byte-order mark may only open the file");
	/* Debian's inih cuts a value at " ;" (an inline comment) without a
	 * word: a secret or header holding one would be silently shortened.
	 * inih takes ':' as well as '=' between key and value, and a value
	 * starting with ';' would print (--check-config: "key = ;x") as one
	 * that does not load back (found by tests/fuzz/fuzz_config). */
	if (str[0] != ';' && str[0] != '#' && str[0] != '[') {
		const char *eq = strpbrk(str, "=:");

		for (const char *p = eq; p != NULL && *p != '\0'; p++) {
			if (*p == ';' && (p == eq + 1 || isspace((unsigned char)p[-1]))) {
				ctx_error(ctx,
					  "inline comments are not supported (' ;' in a value); "
					  "put comments on their own line, and a secret holding "
					  "' ;' in client_secret_file");
				break;
			}
		}
	}

	/* inih does not report sections; check them here so an empty one fails too */
	if (str[0] == '[') {
		char *close = strchr(str, ']');
		const char *why;

		if (close != NULL) {
			*close = '\0';
			why = check_section(str + 1);
			if (why != NULL)
				ctx_error(ctx, "[%s]: %s", str + 1, why);
			*close = ']';
		}
	}
	return str;
}

static int cfg_handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *ctx = user;
	const char *why;

	if (*section == '\0') {
		ctx_error(ctx, "%s: key outside any [section]", name);
		return 0;
	}
	switch (set_key(ctx->cfg, section, name, value, NULL, &why)) {
	case SET_OK:
		return 1;
	case SET_NO_SECTION:
		ctx_error(ctx, "[%s]: %s", section, why);
		break;
	default:
		ctx_error(ctx, "[%s] %s: %s", section, name, why);
		break;
	}
	return 0;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct parse_ctx ctx;
	char *dup = NULL;
	int ret;

	memset(&ctx, 0, sizeof(ctx));
	ctx.cfg = cfg;
	ctx.fp = fopen(path, "re");
	if (ctx.fp == NULL) {
		errbuf_set(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	ret = ini_parse_stream(cfg_reader, &ctx, cfg_handler, &ctx);
	if (ret == -2) {
		errbuf_set(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	if (ferror(ctx.fp)) {
		errbuf_set(err, errlen, "%s: read error", path);
		goto fail;
	}
	if (ret > 0 && (ctx.err_line == 0 || ret < ctx.err_line)) {
		errbuf_set(err, errlen, "%s:%d: syntax error: expected [section] or key = value",
			   path, ret);
		goto fail;
	}
	if (ctx.err_line != 0) {
		errbuf_set(err, errlen, "%s:%d: %s", path, ctx.err_line, ctx.err);
		goto fail;
	}
	dup = strdup(path);
	if (dup == NULL) {
		errbuf_set(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	free(cfg->config_file);
	cfg->config_file = dup;
	fclose(ctx.fp);
	return 0;

fail:
	if (ctx.fp != NULL)
		fclose(ctx.fp);
	return -1;
}

int config_set(struct config *cfg, const char *section, const char *key, const char *value,
	       const char *origin, char *err, size_t errlen)
{
	enum set_result r;
	const char *why;

	r = set_key(cfg, section, key, value, origin, &why);
	if (r == SET_OK)
		return 0;
	if (origin != NULL && r == SET_NO_SECTION)
		errbuf_set(err, errlen, "%s: [%s]: %s", origin, section, why);
	else if (origin != NULL && r == SET_NO_KEY)
		errbuf_set(err, errlen, "%s: [%s] %s: %s", origin, section, key, why);
	else if (origin != NULL)
		errbuf_set(err, errlen, "%s: %s", origin, why);
	else if (r == SET_NO_SECTION)
		errbuf_set(err, errlen, "[%s]: %s", section, why);
	else
		errbuf_set(err, errlen, "[%s] %s: %s", section, key, why);
	return -1;
}

/*
 * Reads a one-line secret from path into *out (malloc'd; the caller wipes
 * and frees it).  Returns 0, -1 with *why set, or ENOENT's -2 when absent
 * and missing_ok.
 */
static int read_secret(const char *path, int missing_ok, char **out, const char **why)
{
	char buf[SECRET_MAX + 2];
	size_t len = 0;
	ssize_t r;
	int fd, rc = -1;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT && missing_ok)
			return -2;
		*why = strerror(errno);
		return -1;
	}
	for (;;) {
		r = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*why = strerror(errno);
			goto fail;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		if (len == sizeof(buf) - 1) {
			*why = "too large for a client secret";
			goto fail;
		}
	}
	buf[len] = '\0';
	if (len > 0 && buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (len > 0 && buf[len - 1] == '\r')
		buf[--len] = '\0';
	if (len == 0) {
		*why = "is empty";
		goto fail;
	}
	if (strlen(buf) != len || has_control(buf)) {
		*why = "must hold the secret on a single line, without control characters";
		goto fail;
	}
	*out = strdup(buf);
	if (*out == NULL) {
		*why = "out of memory";
		goto fail;
	}
	rc = 0;
fail:
	explicit_bzero(buf, sizeof(buf));
	close(fd);
	return rc;
}

/* Takes ownership of secret (wiping it on failure). */
static int adopt_secret(struct config *cfg, char *secret, const char *source)
{
	char *src = strdup(source);

	if (src == NULL) {
		secret_free(&secret);
		return -1;
	}
	secret_free(&cfg->client_secret);
	free(cfg->client_secret_source);
	cfg->client_secret = secret;
	cfg->client_secret_source = src;
	return 0;
}

static const struct {
	const char *env, *section, *key;
} env_keys[] = {
	{ "KALEIDOSCOPE_API_URL", "upstream", "url" },
	{ "KALEIDOSCOPE_API_CLIENT_ID", "upstream", "client_id" },
	{ "KALEIDOSCOPE_API_CLIENT_SECRET", "upstream", "client_secret" },
};

static int redis_password(struct config *cfg, const char *dir, char *err, size_t errlen);

int config_apply_env(struct config *cfg, char *err, size_t errlen)
{
	const char *v, *dir, *why = NULL;
	char *path = NULL, *secret = NULL;
	char origin[64];
	size_t i;
	int rc;

	/* empty variables count as unset, as they do for the SDKs */
	for (i = 0; i < sizeof(env_keys) / sizeof(env_keys[0]); i++) {
		v = getenv(env_keys[i].env);
		if (v == NULL || *v == '\0')
			continue;
		if (strcmp(env_keys[i].key, "client_secret") == 0) {
			snprintf(origin, sizeof(origin), "environment %s", env_keys[i].env);
			if (config_set(cfg, env_keys[i].section, env_keys[i].key, v, origin, err,
				       errlen) < 0)
				goto fail;
		} else if (config_set(cfg, env_keys[i].section, env_keys[i].key, v, env_keys[i].env,
				      err, errlen) < 0) {
			goto fail;
		}
	}

	v = getenv("KALEIDOSCOPE_API_CLIENT_SECRET");
	dir = getenv("CREDENTIALS_DIRECTORY");
	if ((v == NULL || *v == '\0') && dir != NULL && *dir != '\0') {
		if (asprintf(&path, "%s/client_secret", dir) < 0) {
			path = NULL;
			errbuf_set(err, errlen, "systemd credential: out of memory");
			goto fail;
		}
		rc = read_secret(path, 1, &secret, &why);
		if (rc == -1) {
			errbuf_set(err, errlen, "systemd credential %s: %s", path, why);
			goto fail;
		}
		if (rc == 0 && adopt_secret(cfg, secret, "systemd credential") < 0) {
			errbuf_set(err, errlen, "systemd credential: out of memory");
			goto fail;
		}
	}
	free(path);
	path = NULL;
	return redis_password(cfg, dir, err, errlen);

fail:
	free(path);
	return -1;
}

/* The Redis password: KALEIDOD_REDIS_PASSWORD, else the systemd credential
 * redis_password; never a key of the file or the command line. */
static int redis_password(struct config *cfg, const char *dir, char *err, size_t errlen)
{
	const char *v = getenv("KALEIDOD_REDIS_PASSWORD"), *why = NULL;
	char *path = NULL, *secret = NULL;
	int rc;

	secret_free(&cfg->cluster_password);
	if (v != NULL && *v != '\0') {
		if ((cfg->cluster_password = strdup(v)) == NULL)
			goto nomem;
		/* read once: not left in /proc/PID/environ for the process's life */
		unsetenv("KALEIDOD_REDIS_PASSWORD");
		return 0;
	}
	if (dir == NULL || *dir == '\0')
		return 0;
	if (asprintf(&path, "%s/redis_password", dir) < 0)
		goto nomem;
	rc = read_secret(path, 1, &secret, &why);
	if (rc == -1) {
		errbuf_set(err, errlen, "systemd credential %s: %s", path, why);
		free(path);
		return -1;
	}
	free(path);
	if (rc == 0)
		cfg->cluster_password = secret;
	return 0;
nomem:
	errbuf_set(err, errlen, "[cluster] password: out of memory");
	return -1;
}

/* The first directory of a colon-separated list such as $STATE_DIRECTORY. */
static char *first_dir(const char *list)
{
	return strndup(list, strcspn(list, ":"));
}

static int default_cache_file(struct config *cfg, char *err, size_t errlen)
{
	const char *sd = getenv("STATE_DIRECTORY"), *xdg = getenv("XDG_STATE_HOME");
	const char *home = getenv("HOME");
	char *dir = NULL;
	int n;

	if (sd != NULL && *sd != '\0' && *sd != ':') {
		dir = first_dir(sd);
		if (dir == NULL)
			goto nomem;
		n = asprintf(&cfg->cache_file, "%s/cache.db", dir);
	} else if (geteuid() == 0) {
		n = asprintf(&cfg->cache_file, "/var/lib/kaleidod/cache.db");
	} else if (xdg != NULL && xdg[0] == '/') {
		/* the XDG spec says to ignore a relative value */
		n = asprintf(&cfg->cache_file, "%s/kaleidod/cache.db", xdg);
	} else if (home != NULL && home[0] == '/') {
		n = asprintf(&cfg->cache_file, "%s/.local/state/kaleidod/cache.db", home);
	} else {
		errbuf_set(err, errlen,
			   "[cache] file: no default without STATE_DIRECTORY, XDG_STATE_HOME or "
			   "HOME; set it");
		goto fail;
	}
	if (n < 0) {
		cfg->cache_file = NULL;
		goto nomem;
	}
	free(dir);
	return 0;

nomem:
	errbuf_set(err, errlen, "[cache] file: out of memory");
fail:
	free(dir);
	return -1;
}

static int header_is(const char *header, const char *name)
{
	size_t n = strlen(name);

	return strncasecmp(header, name, n) == 0 && header[n] == ':';
}

/* Without [cache] records the records families go (their paths are then
 * forwarded uncached); one a source configured is an error, not ignored. */
static int drop_records_families(struct config *cfg, char *err, size_t errlen)
{
	int j = 0;

	for (int i = 0; i < cfg->nfamilies; i++) {
		struct config_family *fam = &cfg->families[i];

		if (!fam->records || cfg->records) {
			if (i != j)
				cfg->families[j] = *fam;
			j++;
			continue;
		}
		if (fam->set) {
			errbuf_set(
				err, errlen,
				"[family.%s]: records are cached only with [cache] records = yes",
				fam->name);
			return -1;
		}
		family_clear(fam);
	}
	for (int i = j; i < cfg->nfamilies; i++)
		memset(&cfg->families[i], 0, sizeof(cfg->families[i]));
	cfg->nfamilies = j;
	return 0;
}

int config_finish(struct config *cfg, char *err, size_t errlen)
{
	char host[INET6_ADDRSTRLEN + 1], *secret = NULL, *source = NULL;
	const char *why = NULL;
	unsigned port;
	int i;

	if (cfg->client_secret == NULL && cfg->client_secret_file != NULL) {
		if (read_secret(cfg->client_secret_file, 0, &secret, &why) < 0) {
			errbuf_set(err, errlen, "[upstream] client_secret_file: %s: %s",
				   cfg->client_secret_file, why);
			goto fail;
		}
		if (asprintf(&source, "client_secret_file %s", cfg->client_secret_file) < 0) {
			source = NULL;
			secret_free(&secret);
			errbuf_set(err, errlen, "out of memory");
			goto fail;
		}
		if (adopt_secret(cfg, secret, source) < 0) {
			errbuf_set(err, errlen, "out of memory");
			goto fail;
		}
	}

	if (cfg->cache_file == NULL && default_cache_file(cfg, err, errlen) < 0)
		goto fail;

	if (config_parse_listen(cfg->listen, host, sizeof(host), &port) < 0) {
		errbuf_set(err, errlen, "[server] listen: %s", check_listen(cfg->listen));
		goto fail;
	}
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
		errbuf_set(err, errlen, "[server] tls_cert and tls_key: set both, or neither");
		goto fail;
	}
	if (cfg->tls_cert == NULL && (cfg->tls_client_ca != NULL || cfg->tls_client_required)) {
		errbuf_set(
			err, errlen,
			"[server] tls_client_ca and tls_client_required need tls_cert and tls_key");
		goto fail;
	}
	if (cfg->tls_client_required && cfg->tls_client_ca == NULL) {
		errbuf_set(err, errlen, "[server] tls_client_required needs tls_client_ca");
		goto fail;
	}
	if ((cfg->cluster_shared_cache || cfg->cluster_share_token) && cfg->cluster_redis == NULL) {
		errbuf_set(err, errlen, "[cluster] %s needs [cluster] redis",
			   cfg->cluster_shared_cache ? "shared_cache" : "share_token");
		goto fail;
	}
	if (cfg->auth_retry_min == 0 || cfg->auth_retry_min > cfg->auth_retry_max) {
		errbuf_set(err, errlen,
			   "[upstream] auth_retry_min: must be greater than 0 and not above "
			   "auth_retry_max (%u > %u)",
			   cfg->auth_retry_min, cfg->auth_retry_max);
		goto fail;
	}
	if (cfg->connect_timeout == 0 || cfg->timeout == 0 || cfg->connection_timeout == 0) {
		errbuf_set(err, errlen, "timeouts must be greater than 0");
		goto fail;
	}
	for (i = 0; i < cfg->nheaders; i++) {
		/* with both, we would send two competing bearer tokens */
		if ((cfg->auth_header != CONFIG_AUTH_X_KAL &&
		     header_is(cfg->headers[i], "Authorization")) ||
		    (cfg->auth_header != CONFIG_AUTH_AUTHORIZATION &&
		     header_is(cfg->headers[i], "X-Kal-Authorization"))) {
			errbuf_set(err, errlen,
				   "[upstream] header: kaleidod sends this header itself with "
				   "auth_header = %s",
				   auth_names[cfg->auth_header]);
			goto fail;
		}
	}
	if (drop_records_families(cfg, err, errlen) < 0)
		goto fail;
	for (i = 0; i < cfg->nfamilies; i++) {
		if (cfg->families[i].npaths == 0) {
			errbuf_set(err, errlen, "[family.%s] paths: at least one path is required",
				   cfg->families[i].name);
			goto fail;
		}
	}
	free(source);
	return 0;

fail:
	free(source);
	return -1;
}

/* --- the table, for documentation and its checks --- */

size_t config_key_count(void)
{
	return sizeof(ckeys) / sizeof(ckeys[0]);
}

int config_key_info(size_t i, const char **section, const char **name, const char **doc)
{
	if (i >= config_key_count())
		return -1;
	if (section != NULL)
		*section = ckeys[i].section;
	if (name != NULL)
		*name = ckeys[i].key;
	if (doc != NULL)
		*doc = ckeys[i].doc;
	return 0;
}

/* --- printing --- */

static int header_is_sensitive(const char *header)
{
	static const char *const words[] = { "auth", "cookie", "token",  "secret",
					     "key",  "pass",   "session" };
	size_t nl = strcspn(header, ":"), i, j, wl;

	for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		wl = strlen(words[i]);
		for (j = 0; j + wl <= nl; j++)
			if (strncasecmp(header + j, words[i], wl) == 0)
				return 1;
	}
	return 0;
}

static void print_size(FILE *out, const char *key, size_t v)
{
	if (v != 0 && v % (1ULL << 30) == 0)
		fprintf(out, "%s = %zuG\n", key, v >> 30);
	else if (v != 0 && v % (1ULL << 20) == 0)
		fprintf(out, "%s = %zuM\n", key, v >> 20);
	else if (v != 0 && v % (1ULL << 10) == 0)
		fprintf(out, "%s = %zuK\n", key, v >> 10);
	else
		fprintf(out, "%s = %zu\n", key, v);
}

static void print_list(FILE *out, const char *key, char *const *list, int n)
{
	int i;

	fprintf(out, "%s =", key);
	for (i = 0; i < n; i++)
		fprintf(out, " %s", list[i]);
	fputc('\n', out);
}

static void print_key(FILE *out, const struct config *cfg, const void *base, const struct ckey *k)
{
	const void *f = cfield(base, k->off);
	int i;

	switch (k->type) {
	case CT_STRING: {
		const char *s = *(char *const *)f;

		if (k->off == offsetof(struct config, client_secret) && base == cfg) {
			if (s == NULL)
				fprintf(out, "%s = (not set)\n", k->key);
			else
				fprintf(out, "%s = %s (from %s)\n", k->key, MASK,
					cfg->client_secret_source != NULL ?
						cfg->client_secret_source :
						"unknown source");
		} else {
			fprintf(out, "%s =%s%s\n", k->key, s != NULL ? " " : "",
				s != NULL ? s : "");
		}
		break;
	}
	case CT_UINT:
	case CT_DURATION:
		fprintf(out, "%s = %u\n", k->key, *(const unsigned *)f);
		break;
	case CT_SIZE:
		print_size(out, k->key, *(const size_t *)f);
		break;
	case CT_AUTH:
		fprintf(out, "%s = %s\n", k->key, auth_names[*(const enum config_auth_header *)f]);
		break;
	case CT_BOOL:
		fprintf(out, "%s = %s\n", k->key, *(const int *)f ? "yes" : "no");
		break;
	case CT_HEADER: {
		char *const *list = f;
		int n = *(const int *)cfield(base, k->count_off);

		if (n == 0)
			fprintf(out, "; %s = (none)\n", k->key);
		for (i = 0; i < n; i++) {
			if (header_is_sensitive(list[i]))
				fprintf(out, "%s = %.*s: %s\n", k->key, (int)strcspn(list[i], ":"),
					list[i], MASK);
			else
				fprintf(out, "%s = %s\n", k->key, list[i]);
		}
		break;
	}
	case CT_PREFIXES:
		print_list(out, k->key, f, *(const int *)cfield(base, k->count_off));
		break;
	}
}

void config_print(const struct config *cfg, FILE *out)
{
	const char *section = NULL;
	size_t i;
	int j;

	if (cfg->config_file != NULL)
		fprintf(out, "; effective configuration (file %s)\n", cfg->config_file);
	else
		fprintf(out, "; effective configuration (no file)\n");
	for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++) {
		if (ckeys[i].scope != SC_MAIN)
			continue;
		if (section == NULL || strcmp(section, ckeys[i].section) != 0) {
			section = ckeys[i].section;
			fprintf(out, "\n[%s]\n", section);
		}
		print_key(out, cfg, cfg, &ckeys[i]);
	}
	for (j = 0; j < cfg->nfamilies; j++) {
		/* Without [cache] records they are not in effect (config_finish
		 * drops them); printed, they would read back as if they were. */
		if (cfg->families[j].records && !cfg->records)
			continue;
		fprintf(out, "\n[family.%s]\n", cfg->families[j].name);
		for (i = 0; i < sizeof(ckeys) / sizeof(ckeys[0]); i++)
			if (ckeys[i].scope == SC_FAMILY)
				print_key(out, cfg, &cfg->families[j], &ckeys[i]);
	}
}
