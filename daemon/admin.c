/*
 * admin: /_kaleidod/health, /_kaleidod/stats and /_kaleidod/purge, with cJSON.
 *
 * Health says whether kaleidod can do its job (a token, a cache) and why
 * not; stats are the counters an operator graphs.  A cluster that lost its
 * Redis is shown in both but leaves health "ok": the instance still serves.
 */
#include "admin.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "auth.h"
#include "cache.h"
#include "cluster.h"
#include "front.h"
#include "gateway.h"
#include "keeper.h"
#include "objtab.h"
#include "policy.h"
#include "config.h"
#include "l2.h"
#include "purgereq.h"
#include "stats.h"
#include "upstream.h"
#include "warm.h"

#define LOOP_MEMORY 60.0 /* s health reports a loop after the last one */

/* The cluster's link and counters ({"state": "off"} alone without one). */
static void add_cluster(const struct front_deps *d, cJSON *o)
{
	struct cluster_info ci;
	struct l2_info li;
	cJSON *cl = cJSON_AddObjectToObject(o, "cluster");

	cluster_info(d->cluster, &ci);
	cJSON_AddStringToObject(cl, "state", cluster_state_name(ci.state));
	if (ci.state == CLUSTER_OFF)
		return;
	cJSON_AddStringToObject(cl, "redis", ci.redis);
	cJSON_AddStringToObject(cl, "prefix", ci.prefix);
	cJSON_AddNumberToObject(cl, "since", ci.since);
	if (ci.last_error[0] != '\0')
		cJSON_AddStringToObject(cl, "last_error", ci.last_error);
	else
		cJSON_AddNullToObject(cl, "last_error");
	cJSON_AddNumberToObject(cl, "published", (double)ci.published);
	cJSON_AddNumberToObject(cl, "received", (double)ci.received);
	cJSON_AddNumberToObject(cl, "applied", (double)ci.applied);
	cJSON_AddNumberToObject(cl, "catchups", (double)ci.catchups);
	cJSON_AddNumberToObject(cl, "connects", (double)ci.connects);
	cJSON_AddNumberToObject(cl, "errors", (double)ci.errors);
	cJSON_AddNumberToObject(cl, "pending", (double)ci.pending);
	cJSON_AddNumberToObject(cl, "shared_out", (double)ci.shared_out);
	cJSON_AddNumberToObject(cl, "shared_in", (double)ci.shared_in);
	cJSON_AddNumberToObject(cl, "failed_logins_in", (double)ci.failures_in);
	if (d->l2 == NULL)
		return;
	l2_info(d->l2, &li);
	if (d->cfg->cluster_share_token) {
		cJSON *st = cJSON_AddObjectToObject(cl, "shared_token");

		cJSON_AddNumberToObject(st, "taken", (double)li.token_shared);
		cJSON_AddNumberToObject(st, "waits", (double)li.token_waits);
		cJSON_AddNumberToObject(st, "stored", (double)li.token_stored);
	}
	if (d->cfg->cluster_shared_cache) {
		cJSON *sc = cJSON_AddObjectToObject(cl, "shared_cache");

		cJSON_AddNumberToObject(sc, "lookups", (double)li.lookups);
		cJSON_AddNumberToObject(sc, "hits", (double)li.hits);
		cJSON_AddNumberToObject(sc, "fetches", (double)li.fetches);
		cJSON_AddNumberToObject(sc, "waits", (double)li.waits);
		cJSON_AddNumberToObject(sc, "alone", (double)li.alone);
		cJSON_AddNumberToObject(sc, "stored", (double)li.stored);
		cJSON_AddNumberToObject(sc, "errors", (double)li.errors);
	}
}

char *admin_health(const struct front_deps *d, unsigned *status)
{
	struct auth_status st;
	cJSON *o = cJSON_CreateObject(), *up, *au, *ca;
	int64_t entries = 0, bytes = 0;
	double now = (double)time(NULL);
	char *text;
	int looped;

	upstream_auth_status(d->up, &st);
	/* A loop answers every request 508 while the token looks fine. */
	looped = upstream_looped(d->up, LOOP_MEMORY);
	cJSON_AddStringToObject(o, "status",
				looped                                  ? "loop" :
				st.state == AUTH_OK && d->cache != NULL ? "ok" :
									  "degraded");
	if (looped)
		cJSON_AddStringToObject(o, "detail",
					"requests kaleidod sends come back to it: its API URL "
					"leads to itself (KALEIDOSCOPE_API_URL or [upstream] url)");
	up = cJSON_AddObjectToObject(o, "upstream");
	cJSON_AddStringToObject(up, "url", upstream_url(d->up));
	au = cJSON_AddObjectToObject(up, "auth");
	cJSON_AddStringToObject(au, "state", auth_state_name(st.state));
	if (st.last_error[0] != '\0')
		cJSON_AddStringToObject(au, "last_error", st.last_error);
	else
		cJSON_AddNullToObject(au, "last_error");
	if (st.failing_since > 0)
		cJSON_AddNumberToObject(au, "failing_since", (double)(int64_t)st.failing_since);
	else
		cJSON_AddNullToObject(au, "failing_since");
	if (st.expires_at > now)
		cJSON_AddNumberToObject(au, "expires_in", (double)(int64_t)(st.expires_at - now));
	else
		cJSON_AddNullToObject(au, "expires_in");
	ca = cJSON_AddObjectToObject(o, "cache");
	cJSON_AddBoolToObject(ca, "enabled", d->cache != NULL);
	if (d->cache != NULL) {
		cJSON_AddStringToObject(ca, "file", cache_path(d->cache));
		if (cache_usage(d->cache, &entries, &bytes) < 0)
			cJSON_AddStringToObject(ca, "error", cache_errmsg(d->cache));
	} else {
		cJSON_AddNullToObject(ca, "file");
	}
	cJSON_AddNumberToObject(ca, "entries", (double)entries);
	cJSON_AddNumberToObject(ca, "bytes", (double)bytes);
	add_cluster(d, o);
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	*status = 200;
	return text;
}

static void add_cache_stats(const struct front_deps *d, cJSON *o)
{
	struct keeper_counters kc;
	int64_t entries = 0, bytes = 0, mentries = 0, mbytes = 0;
	cJSON *ca = cJSON_AddObjectToObject(o, "cache");

	if (d->cache != NULL)
		cache_usage(d->cache, &entries, &bytes);
	objtab_usage(d->tab, &mentries, &mbytes);
	keeper_counters(d->keeper, &kc);
	cJSON_AddNumberToObject(ca, "entries", (double)entries);
	cJSON_AddNumberToObject(ca, "bytes", (double)bytes);
	cJSON_AddNumberToObject(ca, "max_bytes", (double)kc.max_bytes);
	cJSON_AddNumberToObject(ca, "memory_entries", (double)mentries);
	cJSON_AddNumberToObject(ca, "memory_bytes", (double)mbytes);
	cJSON_AddNumberToObject(ca, "evicted", (double)kc.evicted);
	cJSON_AddNumberToObject(ca, "pruned", (double)kc.pruned);
	cJSON_AddNumberToObject(ca, "purged", (double)kc.purged);
	cJSON_AddNumberToObject(ca, "write_errors", (double)kc.write_errors);
	cJSON_AddBoolToObject(ca, "warm", warm_done(d->warm));
}

struct keeper_purge *admin_purge_start(const struct front_deps *d, const char *body, size_t len,
				       void (*park)(void *), void (*unpark)(void *), void *arg,
				       int *parked, unsigned *status, const char **why)
{
	struct keeper_purge *t = NULL;
	struct purgereq req;
	int rc;

	*status = 400;
	*parked = 0;
	/* The body's words are purgereq.c's (fuzzed there); the family's
	 * existence and the purge itself are the daemon's. */
	if ((rc = purgereq_parse(body, len, &req, why)) < 0) {
		if (rc == -2)
			*status = 500;
		return NULL;
	}
	if (req.kind == CACHE_PURGE_FAMILY) {
		int known = 0;

		for (int i = 0; i < policy_family_count(d->policy); i++)
			known |= strcmp(policy_family_name(d->policy, i), req.what) == 0;
		if (!known) {
			*why = "no such family (see /_kaleidod/stats for the names)";
			goto out;
		}
	}
	/* The cluster first, as a write does (front.c): a purge that then
	 * fails only costs the others a refetch. */
	cluster_purged(d->cluster, req.kind, req.what);
	t = keeper_purge_start(d->keeper, req.kind, req.what, park, unpark, arg, parked);
	if (t == NULL) {
		*status = 500;
		*why = "out of memory";
	}
out:
	purgereq_clear(&req);
	return t;
}

char *admin_purge_answer(struct keeper_purge **t, unsigned *status, const char **why)
{
	long n = keeper_purge_result(t);
	cJSON *o;
	char *text;

	if (n == KEEPER_PURGE_PENDING) {
		*status = 503;
		*why = "kaleidod is stopping; the purge did not run";
		return NULL;
	}
	if (n < 0) {
		*status = 500;
		*why = "the cache file refused the purge (see the log)";
		return NULL;
	}
	o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "purged", (double)n);
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	*status = 200;
	return text;
}

char *admin_stats(const struct front_deps *d, unsigned *status)
{
	const char *names[32];
	int n = policy_family_count(d->policy);
	struct auth_status st;
	struct upstream_counters uc;
	cJSON *o, *up;
	char *text;

	for (int i = 0; i < n && i < 32; i++)
		names[i] = policy_family_name(d->policy, i);
	if ((o = stats_json(d->stats, names)) == NULL)
		return NULL;
	upstream_auth_status(d->up, &st);
	upstream_counters(d->up, &uc);
	up = cJSON_AddObjectToObject(o, "upstream");
	cJSON_AddNumberToObject(up, "token_grants", (double)st.grants);
	cJSON_AddNumberToObject(up, "token_refreshes", (double)st.refreshes);
	cJSON_AddNumberToObject(up, "token_failures", (double)st.failures);
	cJSON_AddNumberToObject(up, "requests", (double)uc.started);
	cJSON_AddNumberToObject(up, "failed", (double)uc.failed);
	cJSON_AddNumberToObject(up, "active", (double)uc.active);
	cJSON_AddNumberToObject(up, "replayed_401", (double)uc.replayed_401);
	cJSON_AddNumberToObject(up, "retried", (double)uc.retried);
	cJSON_AddNumberToObject(up, "not_retried", (double)uc.not_retried);
	cJSON_AddNumberToObject(up, "running", (double)uc.running);
	cJSON_AddNumberToObject(up, "queued", (double)uc.queued);
	cJSON_AddNumberToObject(up, "refused_busy", (double)uc.refused_busy);
	cJSON_AddNumberToObject(up, "throttled", (double)uc.throttled);
	cJSON_AddNumberToObject(up, "refused_throttled", (double)uc.refused_throttled);
	cJSON_AddNumberToObject(up, "paced", (double)uc.paced);
	add_cache_stats(d, o);
	add_cluster(d, o);
	if (d->gw != NULL)
		gateway_stats(d->gw, cJSON_AddObjectToObject(o, "gateway"));
	if (d->audit != NULL)
		cJSON_AddNumberToObject(o, "audit_errors", (double)audit_errors(d->audit));
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	*status = 200;
	return text;
}
