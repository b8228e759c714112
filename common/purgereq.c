/*
 * purgereq: the purge request body, from JSON text to what to purge.
 *
 * Split out of daemon/admin.c's admin_purge() unchanged in what it accepts
 * and refuses, and in the words of every refusal, so the parser that sees
 * the client's bytes can be fuzzed on its own.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "purgereq.h"

int purgereq_parse(const char *body, size_t len, struct purgereq *out, const char **why)
{
	cJSON *in = cJSON_ParseWithLength(body, len);
	const cJSON *fam = cJSON_GetObjectItemCaseSensitive(in, "family");
	const cJSON *pre = cJSON_GetObjectItemCaseSensitive(in, "prefix");
	const cJSON *all = cJSON_GetObjectItemCaseSensitive(in, "all");
	const char *what = NULL;
	int rc = -1;

	out->kind = CACHE_PURGE_ALL;
	out->what = NULL;
	if (!cJSON_IsObject(in)) {
		*why = "the body must be a JSON object";
		goto out;
	}
	if ((fam != NULL) + (pre != NULL) + (all != NULL) != 1) {
		*why = "name exactly one of family, prefix or all";
		goto out;
	}
	if (cJSON_IsTrue(all)) {
		out->kind = CACHE_PURGE_ALL;
	} else if (cJSON_IsString(fam)) {
		out->kind = CACHE_PURGE_FAMILY;
		what = fam->valuestring;
	} else if (cJSON_IsString(pre) && pre->valuestring[0] == '/') {
		out->kind = CACHE_PURGE_PREFIX;
		what = pre->valuestring;
	} else {
		*why = "family must be a name, prefix a path starting with '/', all true";
		goto out;
	}
	if (what != NULL && (out->what = strdup(what)) == NULL) {
		*why = NULL;
		rc = -2;
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(in);
	return rc;
}

void purgereq_clear(struct purgereq *out)
{
	free(out->what);
	out->what = NULL;
}
