/*
 * fuzz_purge: the body of POST /_kaleidod/purge (purgereq_parse(), the
 * parser daemon/admin.c's admin_purge() hands the client's bytes to).
 *
 * Input: the body, handed over as exactly its bytes.
 *
 * Invariants:
 *  - success names one kind: all (no argument), a family (a name), or a
 *    prefix (starting with '/'); failure gives a reason and no argument;
 *  - what succeeded, written back as JSON ({"all": true}, {"family": NAME},
 *    {"prefix": PATH}), parses to the same request.
 */
#include <cjson/cJSON.h>

#include "fuzz.h"
#include "purgereq.h"

static void check(const char *body, size_t len, struct purgereq *r, int rc, const char *why)
{
	FUZZ_CHECK(rc == 0 || rc == -1 || rc == -2, "rc %d", rc);
	if (rc != 0) {
		FUZZ_CHECK(r->what == NULL, "an argument after a failure");
		FUZZ_CHECK(rc == -2 || (why != NULL && why[0] != '\0'), "a failure without reason");
		return;
	}
	switch (r->kind) {
	case CACHE_PURGE_ALL:
		FUZZ_CHECK(r->what == NULL, "all with an argument");
		break;
	case CACHE_PURGE_FAMILY:
		FUZZ_CHECK(r->what != NULL, "family without a name");
		break;
	case CACHE_PURGE_PREFIX:
		FUZZ_CHECK(r->what != NULL && r->what[0] == '/', "prefix not starting with '/'");
		break;
	default:
		FUZZ_CHECK(0, "kind %d", (int)r->kind);
	}
	(void)body;
	(void)len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *body = fuzz_bytes(data, size), *text;
	struct purgereq r, back;
	const char *why = NULL;
	cJSON *o;
	int rc;

	rc = purgereq_parse(body, size, &r, &why);
	check(body, size, &r, rc, why);
	if (rc == 0) {
		/* the same request, written the canonical way */
		if ((o = cJSON_CreateObject()) == NULL)
			abort();
		if (r.kind == CACHE_PURGE_ALL)
			cJSON_AddTrueToObject(o, "all");
		else
			cJSON_AddStringToObject(
				o, r.kind == CACHE_PURGE_FAMILY ? "family" : "prefix", r.what);
		if ((text = cJSON_PrintUnformatted(o)) == NULL)
			abort();
		why = NULL;
		rc = purgereq_parse(text, strlen(text), &back, &why);
		FUZZ_CHECK(rc == 0 && back.kind == r.kind &&
				   (r.what == NULL ?
					    back.what == NULL :
					    back.what != NULL && strcmp(back.what, r.what) == 0),
			   "%s does not parse back to the same request", text);
		purgereq_clear(&back);
		free(text);
		cJSON_Delete(o);
	}
	purgereq_clear(&r);
	FUZZ_CHECK(r.what == NULL, "purgereq_clear left what");
	free(body);
	return 0;
}
