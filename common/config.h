/*
 * config: kaleidod's settings, from defaults, an INI file, the environment
 * and the command line, in that order of increasing precedence.
 *
 * Every key lives in one static table {section, key, type, default,
 * validator, one-line doc} in config.c; config_key_info() lists it, so a
 * test can hold kaleidod.conf(5) to the same keys.  Loading never prints:
 * errors come back as text naming "file:line" and the key.  The result is a
 * plain read-only record (struct config) that the rest of the daemon reads
 * after config_finish().
 *
 * Secrets: the client secret may come from KALEIDOSCOPE_API_CLIENT_SECRET,
 * $CREDENTIALS_DIRECTORY/client_secret, the file named by client_secret_file,
 * or (discouraged) client_secret in the file; never from argv.
 */
#ifndef KD_CONFIG_H
#define KD_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define CONFIG_MAX_FAMILIES 32 /* an invalidation is a 32-bit mask of families */
#define CONFIG_MAX_PREFIXES 8
#define CONFIG_MAX_HEADERS 16

enum config_auth_header {
	CONFIG_AUTH_BOTH = 0,      /* Authorization and X-Kal-Authorization */
	CONFIG_AUTH_AUTHORIZATION, /* Authorization only (kalpy) */
	CONFIG_AUTH_X_KAL,         /* X-Kal-Authorization only (kalbio) */
};

struct config_family {
	char *name;                       /* "programs" */
	char *paths[CONFIG_MAX_PREFIXES]; /* path prefixes, no trailing '/' */
	int npaths;
	char *invalidated_by[CONFIG_MAX_PREFIXES]; /* other prefixes whose writes invalidate it */
	int ninvalidated_by;
	char *except[CONFIG_MAX_PREFIXES]; /* prefixes within paths that are never cached */
	int nexcept;
	unsigned ttl;      /* seconds; 0 disables caching */
	int refresh_ahead; /* paths[0] is a base list worth fetching ahead */
	int records;       /* a records family: cached only with [cache] records = yes */
	int set;           /* a source other than the defaults set one of its keys */
};

struct config {
	/* [upstream] */
	char *upstream_url; /* no trailing '/' */
	char *client_id;
	char *client_secret;        /* resolved secret; never printed */
	char *client_secret_source; /* where it came from, for --check-config */
	char *client_secret_file;
	enum config_auth_header auth_header;
	char *headers[CONFIG_MAX_HEADERS]; /* extra upstream headers, "Name: value" */
	int nheaders;
	unsigned connect_timeout; /* s */
	unsigned timeout;         /* s until the response headers arrive; else 504 */
	unsigned auth_retry_min;  /* s, first backoff step */
	unsigned auth_retry_max;  /* s, backoff cap */
	unsigned max_concurrent;  /* transfers to the API at once; the rest queue */
	unsigned max_queued;      /* transfers that may wait for a slot; beyond, 503 */

	/* [server] */
	char *listen; /* "ADDR:PORT", "[v6]:PORT" */
	unsigned max_connections;
	unsigned max_connections_per_ip; /* 0: no cap */
	unsigned connection_timeout;     /* s idle before a client is dropped */
	unsigned threads;                /* 0: one per core but one, at least one */
	unsigned token_lifetime;         /* s, local tokens' expires_in */
	size_t max_buffered_body; /* bytes; request bodies up to this are buffered (replayable) */
	char *server_names;       /* Host names accepted besides loopback; space-separated */
	char *allowed_origins;    /* browser Origins let through; space-separated; none default */
	char *tls_cert;           /* PEM chain; set: the listener speaks TLS */
	char *tls_key;            /* PEM key of tls_cert */
	char *tls_priorities;     /* GnuTLS priority string */
	char *tls_client_ca;      /* PEM CAs of client certificates, or NULL */
	int tls_client_required;  /* no client certificate: refused */

	/* [cache] */
	char *cache_file;
	size_t max_entry_size;           /* bytes; larger answers are forwarded, not stored */
	size_t max_size;                 /* bytes the file's entries may take; LRU beyond */
	size_t memory;                   /* bytes of entries kept in memory */
	unsigned stale_while_revalidate; /* s after expiry: serve stale, refresh behind */
	unsigned stale_if_error;         /* s after expiry: serve stale when the API fails */
	int refresh_ahead;               /* warm-up and refresh of the base lists */
	int records;                     /* cache the records families (off: they are dropped) */
	unsigned maintenance_interval;   /* s between prune/evict/vacuum passes */

	/* [log] */
	char *log_level; /* "error|warn|info|debug" */
	char *audit;     /* "off", "journal" or an absolute file name */

	/* [gateway] */
	char *accounts_file;     /* NULL: no accounts, the personal daemon */
	int allow_anonymous;     /* a non-loopback listener without accounts */
	int admin_from_loopback; /* admin endpoints open to loopback without a token */
	int metrics_per_account; /* [metrics] per_account: account names as labels */
	size_t max_body;         /* bytes a write-scoped account's request may declare */
	size_t max_body_read;    /* the same for an account without write */

	/* [cluster] */
	char *cluster_redis;      /* "unix:/path" or "redis://host:port"; NULL: alone */
	char *cluster_prefix;     /* key namespace; NULL: derived (cluster.c) */
	char *cluster_password;   /* KALEIDOD_REDIS_PASSWORD or credential; never printed */
	int cluster_shared_cache; /* a second cache level in Redis (daemon/l2.c) */
	int cluster_share_token;  /* one upstream token for the cluster, in Redis */

	/* [family.NAME] sections, the defaults first */
	struct config_family families[CONFIG_MAX_FAMILIES];
	int nfamilies;

	char *config_file; /* the file read, or NULL */
};

/* A config holding every default (the default families included). NULL on ENOMEM. */
struct config *config_new(void);
void config_free(struct config **cfg);

/*
 * Reads an INI file over the current values.  Unknown sections or keys, bad
 * values, and unreadable files fail with a message "FILE:LINE: [section] key:
 * why" in err.  Returns 0 or -1.
 */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);

/*
 * Sets one key as if read from a file; "origin" names where it came from
 * ("--listen", "KALEIDOSCOPE_API_URL") for the error text.  0 or -1.
 */
int config_set(struct config *cfg, const char *section, const char *key, const char *value,
	       const char *origin, char *err, size_t errlen);

/* Applies KALEIDOSCOPE_API_URL, _CLIENT_ID, _CLIENT_SECRET and
 * $CREDENTIALS_DIRECTORY/client_secret.  0 or -1. */
int config_apply_env(struct config *cfg, char *err, size_t errlen);

/*
 * The one validation pass, after every source: reads client_secret_file when
 * no higher source gave a secret, picks the default cache file
 * ($STATE_DIRECTORY/cache.db, /var/lib/kaleidod/cache.db as root, else
 * $XDG_STATE_HOME/kaleidod/cache.db or ~/.local/state/kaleidod/cache.db),
 * and checks cross-key rules.  0 or -1.
 */
int config_finish(struct config *cfg, char *err, size_t errlen);

/* Writes the effective configuration as INI, the secret masked. */
void config_print(const struct config *cfg, FILE *out);

/*
 * The keys a file may set, in table order, for checks that the manual
 * matches them: i runs from 0 to config_key_count() - 1.  section is
 * "family" for the keys of every [family.NAME]; doc is one line saying what
 * the key does, with its type and default.  The strings are static; a NULL
 * out-pointer is skipped.  Returns 0, or -1 when i is out of range.
 */
size_t config_key_count(void);
int config_key_info(size_t i, const char **section, const char **name, const char **doc);

/* Parses "ADDR:PORT" / "[ADDR]:PORT"; host is written into host (hostlen).  0 or -1. */
int config_parse_listen(const char *spec, char *host, size_t hostlen, unsigned *port);
/* "unix:/path" (host the path, *port 0) or "redis://host:port".  0 or -1. */
int config_parse_redis(const char *spec, char *host, size_t hostlen, unsigned *port);

#endif
