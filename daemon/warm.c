/*
 * warm: one small state per family (its base list's key, and a backoff so
 * an API that is down is asked at most once a minute), checked on every
 * tick of the main loop.
 */
#include "warm.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "entry.h"
#include "flight.h"
#include "objtab.h"
#include "policy.h"
#include "stats.h"
#include "upstream.h"

#define RETRY_MAX 60 /* s between attempts while the API fails */

struct base {
	int family;
	char *key;
	const char *path;
	unsigned ttl;
	int64_t retry_at;
	unsigned attempts;
};

struct warm {
	const struct config *cfg;
	struct upstream *up;
	struct objtab *tab;
	struct flights *flights;
	struct stats *stats;
	struct base *bases;
	int nbases;
	atomic_int done;
};

struct warm *warm_new(const struct config *cfg, struct upstream *up, struct objtab *tab,
		      struct flights *flights, struct policy *policy, struct stats *stats)
{
	struct warm *w = calloc(1, sizeof(*w));
	int n = policy_family_count(policy);

	if (w == NULL || (w->bases = calloc((size_t)n + 1, sizeof(*w->bases))) == NULL) {
		free(w);
		return NULL;
	}
	w->cfg = cfg;
	w->up = up;
	w->tab = tab;
	w->flights = flights;
	w->stats = stats;
	for (int i = 0; i < n && i < cfg->nfamilies; i++) {
		struct base *b = &w->bases[w->nbases];

		if (policy_family_ttl(policy, i) == 0 || cfg->families[i].npaths == 0 ||
		    !cfg->families[i].refresh_ahead)
			continue;
		b->family = i;
		b->path = cfg->families[i].paths[0];
		b->ttl = policy_family_ttl(policy, i);
		b->key = policy_cache_key(upstream_url(up), upstream_client_id(up), "GET", b->path);
		if (b->key == NULL) {
			warm_free(&w);
			return NULL;
		}
		w->nbases++;
	}
	atomic_init(&w->done, 0);
	return w;
}

void warm_free(struct warm **wp)
{
	struct warm *w = *wp;

	if (w == NULL)
		return;
	for (int i = 0; i < w->nbases; i++)
		free(w->bases[i].key);
	free(w->bases);
	free(w);
	*wp = NULL;
}

/* How long before expiry a base list is fetched again: a tenth of its TTL,
 * at least a second (the tick's resolution), at most a minute. */
static int64_t margin(unsigned ttl)
{
	unsigned m = ttl / 10;

	return m < 1 ? 1 : (m > 60 ? 60 : m);
}

void warm_tick(struct warm *w)
{
	struct auth_status st;
	int64_t now = (int64_t)time(NULL);
	int fresh = 0;

	if (w == NULL || !w->cfg->refresh_ahead)
		return;
	upstream_auth_status(w->up, &st);
	if (st.state != AUTH_OK)
		return;
	for (int i = 0; i < w->nbases; i++) {
		struct base *b = &w->bases[i];
		/* What memory or the file holds, fresh or not: never a fetch. */
		struct objtab_ask ask = { .key = b->key,
					  .hash = objtab_hash(b->key),
					  .family = b->family,
					  .now = now,
					  .flags = OBJTAB_CACHED_ONLY };
		struct objtab_answer ans;
		struct entry *e = (objtab_lookup(w->tab, &ask, &ans), ans.entry);
		int64_t left = e != NULL ? entry_expires_at(e) - now : -1;
		struct objtab_fetch *f;

		if (left > margin(b->ttl)) {
			b->attempts = 0;
			fresh++;
		} else if (now >= b->retry_at) {
			if ((f = objtab_fetch_start(w->tab, b->key, b->family)) != NULL) {
				flight_run(w->flights, f, b->path, NULL);
				objtab_fetch_unref(&f);
				stats_inc(w->stats, b->family, STATS_REFRESHES);
				unsigned step = b->attempts < 6 ? 1u << b->attempts : RETRY_MAX;

				b->attempts++;
				b->retry_at = now + (step < RETRY_MAX ? step : RETRY_MAX);
			}
		}
		entry_unref(&e);
	}
	if (fresh == w->nbases)
		atomic_store(&w->done, 1);
}

int64_t warm_base_stored_at(struct warm *w, int family)
{
	int64_t at = -1;

	for (int i = 0; w != NULL && i < w->nbases; i++) {
		struct base *b = &w->bases[i];
		struct objtab_ask ask = { .key = b->key,
					  .hash = objtab_hash(b->key),
					  .family = b->family,
					  .now = (int64_t)time(NULL),
					  .flags = OBJTAB_CACHED_ONLY };
		struct objtab_answer ans;
		struct entry *e;

		if (b->family != family)
			continue;
		objtab_lookup(w->tab, &ask, &ans);
		e = ans.entry;
		if (e != NULL)
			at = entry_stored_at(e);
		entry_unref(&e);
	}
	return at;
}

int warm_done(struct warm *w)
{
	return w != NULL && atomic_load(&w->done);
}
