/*
 * scrape: the metrics page, assembled from each module's own counters
 * (scrape.h).  Nothing is kept here: a scrape reads the counters of
 * traffic, stats, upstream, the keeper, the table and the gateway, so a
 * number has one owner and one meaning, here and in /_kaleidod/stats.
 */
#include "scrape.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "accounts.h"
#include "audit.h"
#include "auth.h"
#include "cache.h"
#include "cluster.h"
#include "l2.h"
#include "config.h"
#include "front.h"
#include "gateway.h"
#include "keeper.h"
#include "objtab.h"
#include "policy.h"
#include "prom.h"
#include "stats.h"
#include "traffic.h"
#include "upstream.h"
#include "versions.h"

#define P "kaleidod_"

struct series_arg {
	struct prom *p;
	const struct front_deps *d;
};

static void one_series(void *arg, int family, enum traffic_method m, unsigned code, int outcome,
		       unsigned long long n)
{
	struct series_arg *a = arg;
	struct prom_labels l;
	char num[8];

	snprintf(num, sizeof(num), "%u", code);
	prom_labels_init(&l);
	prom_label(&l, "family", family >= 0 ? policy_family_name(a->d->policy, family) : "none");
	prom_label(&l, "method", traffic_method_name(m));
	prom_label(&l, "code", num);
	prom_label(&l, "cache", front_outcome_names[outcome]);
	prom_u64(a->p, P "requests_total", &l, n);
}

static void requests(struct prom *p, const struct front_deps *d)
{
	struct series_arg a = { p, d };
	struct histo_snapshot h;
	struct prom_labels l;

	prom_head(p, P "requests_total", "counter",
		  "Requests answered, by family (none: not a cached list), method, status code "
		  "and cache outcome (none: not a cacheable request).");
	traffic_each(d->traffic, one_series, &a);
	prom_head(p, P "requests_unlabelled_total", "counter",
		  "Requests past the label table's size, counted here only.");
	prom_u64(p, P "requests_unlabelled_total", NULL, traffic_overflow(d->traffic));
	prom_head(p, P "request_duration_seconds", "histogram",
		  "From a request's first byte to its answer's last, by cache outcome.");
	for (int o = 0; o < FRONT_OUTCOMES; o++) {
		traffic_durations(d->traffic, o, &h);
		prom_labels_init(&l);
		prom_label(&l, "cache", front_outcome_names[o]);
		prom_histogram(p, P "request_duration_seconds", &l, &h);
	}
}

/* A family-labelled counter from stats, one sample per family. */
static void per_family(struct prom *p, const struct front_deps *d, const char *name,
		       const char *help, enum stats_counter c)
{
	struct prom_labels l;

	prom_head(p, name, "counter", help);
	for (int f = 0; f < policy_family_count(d->policy); f++) {
		prom_labels_init(&l);
		prom_label(&l, "family", policy_family_name(d->policy, f));
		prom_u64(p, name, &l, stats_get(d->stats, f, c));
	}
}

static void gauge(struct prom *p, const char *name, const char *help, double v)
{
	prom_head(p, name, "gauge", help);
	prom_double(p, name, NULL, v);
}

static void counter(struct prom *p, const char *name, const char *help, unsigned long long v)
{
	prom_head(p, name, "counter", help);
	prom_u64(p, name, NULL, v);
}

static void cache(struct prom *p, const struct front_deps *d)
{
	struct keeper_counters kc;
	int64_t entries = 0, bytes = 0, mentries = 0, mbytes = 0;

	if (d->cache != NULL)
		cache_usage(d->cache, &entries, &bytes);
	objtab_usage(d->tab, &mentries, &mbytes);
	keeper_counters(d->keeper, &kc);
	gauge(p, P "cache_entries", "Answers stored in the cache file.", (double)entries);
	gauge(p, P "cache_bytes", "Bytes the cache file's answers take.", (double)bytes);
	gauge(p, P "cache_max_bytes", "[cache] max_size.", (double)kc.max_bytes);
	gauge(p, P "cache_memory_entries", "Answers also held in memory.", (double)mentries);
	gauge(p, P "cache_memory_bytes", "Bytes those take.", (double)mbytes);
	counter(p, P "cache_evictions_total", "Entries evicted to stay under max_size.",
		kc.evicted);
	counter(p, P "cache_prunes_total", "Entries pruned once past their stale windows.",
		kc.pruned);
	counter(p, P "cache_purges_total", "Entries removed by purges.", kc.purged);
	counter(p, P "cache_write_errors_total", "Writes the cache file refused.", kc.write_errors);
	per_family(p, d, P "cache_coalesced_total",
		   "Requests that waited on another request's fetch of the same answer.",
		   STATS_COALESCED);
	per_family(p, d, P "cache_stale_served_total",
		   "Expired answers served (while revalidating, or because the API failed).",
		   STATS_STALE);
	per_family(p, d, P "cache_revalidated_total",
		   "Expired answers the API confirmed unchanged (304).", STATS_REVALIDATED);
	per_family(p, d, P "cache_invalidations_total", "Families emptied by a write.",
		   STATS_INVALIDATIONS);
	per_family(p, d, P "cache_refreshes_total",
		   "Fetches kaleidod started itself (warm-up, refresh ahead).", STATS_REFRESHES);
}

static void upstream(struct prom *p, const struct front_deps *d)
{
	struct upstream_counters uc;
	struct auth_status st;
	struct histo_snapshot h;
	struct prom_labels l;

	upstream_counters(d->up, &uc);
	upstream_durations(d->up, &h);
	upstream_auth_status(d->up, &st);
	counter(p, P "upstream_requests_total", "Requests sent to the API.", uc.started);
	prom_head(p, P "upstream_duration_seconds", "histogram",
		  "Exchanges with the API, from sending to the answer's last byte.");
	prom_histogram(p, P "upstream_duration_seconds", NULL, &h);
	prom_head(p, P "upstream_errors_total", "counter",
		  "Requests to the API that ended without a whole answer, by kind.");
	for (int e = UP_ERR_NONE + 1; e < UP_ERR_KINDS; e++) {
		prom_labels_init(&l);
		prom_label(&l, "kind", upstream_error_kind((enum up_error)e));
		prom_u64(p, P "upstream_errors_total", &l, uc.errors[e]);
	}
	counter(p, P "upstream_replayed_401_total",
		"Requests replayed with a new token after a 401.", uc.replayed_401);
	counter(p, P "upstream_retried_total",
		"GET and HEAD sent once more after a connection failure.", uc.retried);
	counter(p, P "upstream_throttled_total", "429 answers from the API.", uc.throttled);
	gauge(p, P "upstream_transfers", "Transfers with the API in flight.", (double)uc.active);
	gauge(p, P "upstream_queued", "Transfers waiting for one of max_concurrent slots.",
	      (double)uc.queued);

	prom_head(p, P "upstream_token_requests_total", "counter",
		  "Upstream token grants by grant type and result.");
	prom_labels_init(&l);
	prom_label(&l, "grant", "client_credentials");
	prom_label(&l, "result", "ok");
	prom_u64(p, P "upstream_token_requests_total", &l, st.grants);
	prom_labels_init(&l);
	prom_label(&l, "grant", "refresh_token");
	prom_label(&l, "result", "ok");
	prom_u64(p, P "upstream_token_requests_total", &l, st.refreshes);
	prom_labels_init(&l);
	prom_label(&l, "grant", "any");
	prom_label(&l, "result", "failed");
	prom_u64(p, P "upstream_token_requests_total", &l, st.failures);
	gauge(p, P "upstream_token_expiry_timestamp_seconds",
	      "When the upstream token expires, unix time; 0 without one.", st.expires_at);
	gauge(p, P "upstream_auth_ok", "1 while a valid upstream token is held.",
	      st.state == AUTH_OK ? 1 : 0);
	gauge(p, P "upstream_auth_failing_since_timestamp_seconds",
	      "Since when getting a token has failed, unix time; 0 while it works.",
	      st.failing_since);
}

struct account_arg {
	struct prom *p;
	enum account_counter c;
	const char *name;
};

static void account_sample(void *arg, const struct account *acct)
{
	struct account_arg *a = arg;
	struct prom_labels l;

	prom_labels_init(&l);
	prom_label(&l, "account", account_name(acct));
	prom_u64(a->p, a->name, &l, account_counter(acct, a->c));
}

static void gateway(struct prom *p, const struct front_deps *d)
{
	static const char *const help[ACCOUNT_NCOUNTERS] = {
		[ACCOUNT_REQUESTS] = "Requests made with the account's tokens.",
		[ACCOUNT_DENIED] = "The account's requests refused by scope or path.",
		[ACCOUNT_RATE_LIMITED] = "The account's requests refused by its rate limit.",
		[ACCOUNT_LOGINS] = "Tokens granted to the account.",
		[ACCOUNT_LOGIN_FAILURES] = "Logins with a wrong secret for the account.",
	};
	char name[96];

	gauge(p, P "gateway_tokens", "Local tokens (access and refresh) issued and still valid.",
	      (double)gateway_tokens(d->gw));
	if (!d->cfg->metrics_per_account)
		return;
	for (int c = 0; c < ACCOUNT_NCOUNTERS; c++) {
		struct account_arg a = { p, (enum account_counter)c, name };

		snprintf(name, sizeof(name), P "account_%s_total",
			 account_counter_name((enum account_counter)c));
		prom_head(p, name, "counter", help[c]);
		gateway_each_account(d->gw, account_sample, &a);
	}
}

/* A counter with a direction label and its two values. */
static void two_ways(struct prom *p, const char *name, const char *help, const char *one,
		     unsigned long long v1, const char *other, unsigned long long v2)
{
	struct prom_labels l;

	prom_head(p, name, "counter", help);
	prom_labels_init(&l);
	prom_label(&l, "direction", one);
	prom_u64(p, name, &l, v1);
	prom_labels_init(&l);
	prom_label(&l, "direction", other);
	prom_u64(p, name, &l, v2);
}

static void cluster(struct prom *p, const struct front_deps *d)
{
	struct cluster_info ci;

	cluster_info(d->cluster, &ci);
	gauge(p, P "cluster_up", "1 while the cluster's Redis answers, else 0 (or no cluster).",
	      ci.state == CLUSTER_UP ? 1 : 0);
	if (ci.state == CLUSTER_OFF)
		return;
	two_ways(p, P "cluster_events_total",
		 "Invalidations and purges published to the other instances, or received "
		 "from them.",
		 "published", ci.published, "received", ci.received);
	counter(p, P "cluster_catchups_total",
		"Families dropped on reconnecting because their generation moved meanwhile (catch-ups).",
		ci.catchups);
	counter(p, P "cluster_connects_total", "Connections made to the cluster's Redis.",
		ci.connects);
	counter(p, P "cluster_errors_total", "Failed attempts to reach Redis, and links lost.",
		ci.errors);
	gauge(p, P "cluster_pending", "Invalidations and purges waiting for Redis.",
	      (double)ci.pending);
	two_ways(p, P "cluster_account_requests_total",
		 "Account requests made here and told to the other instances (out), or made "
		 "there and spent from the rate limits here (in).",
		 "out", ci.shared_out, "in", ci.shared_in);
	if (d->l2 != NULL && d->cfg->cluster_share_token) {
		struct l2_info li;
		struct prom_labels l;
		const char *const name = P "cluster_shared_token_total";

		l2_info(d->l2, &li);
		prom_head(p, name, "counter",
			  "Shared upstream token: taken from another instance (taken), waits for "
			  "another's request (wait), got here and stored for the others (stored).");
		prom_labels_init(&l);
		prom_label(&l, "result", "taken");
		prom_u64(p, name, &l, li.token_shared);
		prom_labels_init(&l);
		prom_label(&l, "result", "wait");
		prom_u64(p, name, &l, li.token_waits);
		prom_labels_init(&l);
		prom_label(&l, "result", "stored");
		prom_u64(p, name, &l, li.token_stored);
	}
	if (d->l2 != NULL && d->cfg->cluster_shared_cache) {
		struct l2_info li;
		struct prom_labels l;
		const char *const name = P "cluster_shared_cache_total";
		static const char *const result[6] = { "hit",   "fetch",  "wait",
						       "alone", "stored", "error" };
		unsigned long long v[6];

		l2_info(d->l2, &li);
		v[0] = li.hits;
		v[1] = li.fetches;
		v[2] = li.waits;
		v[3] = li.alone;
		v[4] = li.stored;
		v[5] = li.errors;
		prom_head(p, name, "counter",
			  "Shared cache: local misses answered from Redis (hit), sent to the API "
			  "holding the cluster's lease (fetch) or not (alone), that waited for "
			  "another instance's fetch (wait); answers stored there; errors.");
		for (int i = 0; i < 6; i++) {
			prom_labels_init(&l);
			prom_label(&l, "result", result[i]);
			prom_u64(p, name, &l, v[i]);
		}
	}
}

char *scrape_metrics(const struct front_deps *d, unsigned conns, size_t *len)
{
	struct prom p = { 0 };
	struct prom_labels l;
	struct versions v;

	versions_get(&v);
	prom_head(&p, P "build_info", "gauge",
		  "Always 1; the labels are the versions kaleidod runs with.");
	prom_labels_init(&l);
	prom_label(&l, "version", v.kaleidod);
	prom_label(&l, "libmicrohttpd", v.libmicrohttpd);
	prom_label(&l, "libcurl", v.libcurl);
	prom_label(&l, "sqlite", v.sqlite);
	prom_label(&l, "cjson", v.cjson);
	prom_label(&l, "gnutls", v.gnutls);
	prom_u64(&p, P "build_info", &l, 1);
	gauge(&p, P "start_time_seconds", "When kaleidod started, unix time.", d->started);
	gauge(&p, P "connections", "Client connections open.", (double)conns);
	requests(&p, d);
	counter(&p, P "local_token_grants_total",
		"Tokens the local token endpoint issued to SDKs (personal mode).",
		stats_get(d->stats, -1, STATS_LOCAL_GRANTS));
	cache(&p, d);
	upstream(&p, d);
	if (d->gw != NULL)
		gateway(&p, d);
	cluster(&p, d);
	if (d->audit != NULL)
		counter(&p, P "audit_errors_total", "Audit records that could not be written.",
			audit_errors(d->audit));
	return prom_take(&p, len);
}
