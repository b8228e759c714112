/*
 * admin: /_kaleidod/health and /_kaleidod/stats, built with cJSON.
 *
 * Health says whether kaleidod can do its job (a token, a cache) and why
 * not; stats are the counters an operator graphs.
 */
#include "admin.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "auth.h"
#include "cache.h"
#include "front.h"
#include "policy.h"
#include "stats.h"
#include "upstream.h"

char *admin_health(const struct front_deps *d, unsigned *status)
{
	struct auth_status st;
	cJSON *o = cJSON_CreateObject(), *up, *au, *ca;
	int64_t entries = 0, bytes = 0;
	double now = (double)time(NULL);
	char *text;

	upstream_auth_status(d->up, &st);
	cJSON_AddStringToObject(o, "status",
				st.state == AUTH_OK && d->cache != NULL ? "ok" : "degraded");
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
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	*status = 200;
	return text;
}
