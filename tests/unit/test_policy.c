/*
 * test_policy: family matching, invalidation masks, cache keys, the
 * canonical query, Cache-Control and the TTL it allows.
 *
 * The families are built here, shaped like the defaults, so most cases do
 * not depend on config.c's table; one checks that table's invalidations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "hdr.h"
#include "policy.h"

enum { PROGRAMS, ENTITY_SLICES, RECORD_VIEWS };

static struct config cfg;

static void set_family(int i, char *name, char *path, unsigned ttl)
{
	cfg.families[i].name = name;
	cfg.families[i].paths[0] = path;
	cfg.families[i].npaths = 1;
	cfg.families[i].ttl = ttl;
	cfg.families[i].invalidated_by[0] = "/push/imports";
	cfg.families[i].ninvalidated_by = 1;
}

static int setup(void **state)
{
	memset(&cfg, 0, sizeof(cfg));
	set_family(PROGRAMS, "programs", "/programs", 300);
	set_family(ENTITY_SLICES, "entity_slices", "/entity_slices", 600);
	set_family(RECORD_VIEWS, "record_views", "/record_views", 900);
	for (int i = ENTITY_SLICES; i <= RECORD_VIEWS; i++) {
		cfg.families[i].invalidated_by[1] = "/key_fields";
		cfg.families[i].invalidated_by[2] = "/data_fields/";
		cfg.families[i].ninvalidated_by = 3;
	}
	cfg.nfamilies = 3;
	*state = policy_new(&cfg);
	return *state == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	struct policy *p = *state;

	policy_free(&p);
	return 0;
}

static int fam(const struct policy *p, const char *path)
{
	return policy_family(p, path, strlen(path));
}

static uint32_t inv(const struct policy *p, const char *method, const char *path)
{
	return policy_invalidates(p, method, path, strlen(path));
}

#define BIT(f) (UINT32_C(1) << (f))

static void test_families_copied(void **state)
{
	struct policy *p = *state;

	assert_int_equal(policy_family_count(p), 3);
	assert_string_equal(policy_family_name(p, RECORD_VIEWS), "record_views");
	assert_int_equal(policy_family_ttl(p, ENTITY_SLICES), 600);
}

/* The policy keeps its own copies: the config may be freed or changed. */
static void test_policy_owns_strings(void **state)
{
	char name[] = "programs", path[] = "/programs", by[] = "/push/imports";
	struct config c;
	struct policy *p;

	(void)state;
	memset(&c, 0, sizeof(c));
	c.families[0].name = name;
	c.families[0].paths[0] = path;
	c.families[0].npaths = 1;
	c.families[0].invalidated_by[0] = by;
	c.families[0].ninvalidated_by = 1;
	c.nfamilies = 1;
	p = policy_new(&c);
	assert_non_null(p);
	memset(name, 'x', sizeof(name) - 1);
	memset(path + 1, 'x', sizeof(path) - 2);
	memset(by + 1, 'x', sizeof(by) - 2);
	assert_string_equal(policy_family_name(p, 0), "programs");
	assert_int_equal(fam(p, "/programs"), 0);
	assert_int_equal(inv(p, "POST", "/push/imports"), 1);
	policy_free(&p);
}

static void test_family_match(void **state)
{
	struct policy *p = *state;

	assert_int_equal(fam(p, "/programs"), PROGRAMS);
	assert_int_equal(fam(p, "/programs/"), PROGRAMS);
	assert_int_equal(fam(p, "/programs/abc"), PROGRAMS);
	assert_int_equal(fam(p, "/programs/abc/def"), PROGRAMS);
	assert_int_equal(fam(p, "/entity_slices"), ENTITY_SLICES);
	assert_int_equal(fam(p, "/record_views/x"), RECORD_VIEWS);
	assert_int_equal(fam(p, "/programsX"), -1);
	assert_int_equal(fam(p, "/programs-old"), -1);
	assert_int_equal(fam(p, "/program"), -1);
	assert_int_equal(fam(p, "/"), -1);
	assert_int_equal(fam(p, ""), -1);
	assert_int_equal(fam(p, "/activities"), -1);
	assert_int_equal(fam(p, "programs"), -1);
	assert_int_equal(fam(p, "/PROGRAMS"), -1); /* paths are case-sensitive */
	/* pathlen bounds the path: no query or trailing junk is read. */
	assert_int_equal(policy_family(p, "/programsX", 9), PROGRAMS);
	assert_int_equal(policy_family(p, "/programs?x=1", 9), PROGRAMS);
}

/* Copies a NULL-terminated list into a family's fixed array. */
static int strv(char **dst, char *const *src)
{
	int n = 0;

	for (; src != NULL && src[n] != NULL; n++)
		dst[n] = src[n];
	return n;
}

/* c's next family: name, paths, and optionally invalidated_by and except. */
static void add_family(struct config *c, char *name, char *const *paths, char *const *inv,
		       char *const *except)
{
	struct config_family *f = &c->families[c->nfamilies++];

	f->name = name;
	f->npaths = strv(f->paths, paths);
	f->ninvalidated_by = strv(f->invalidated_by, inv);
	f->nexcept = strv(f->except, except);
}

static void test_family_longest_prefix(void **state)
{
	struct config c;
	struct policy *p;

	(void)state;
	memset(&c, 0, sizeof(c));
	add_family(&c, "records", (char *[]){ "/records", NULL }, NULL, NULL);
	add_family(&c, "exports", (char *[]){ "/records/export", "/exports/", NULL }, NULL, NULL);
	p = policy_new(&c);
	assert_non_null(p);
	assert_int_equal(fam(p, "/records/export/csv"), 1);
	assert_int_equal(fam(p, "/records/exportX"), 0);
	assert_int_equal(fam(p, "/records/1"), 0);
	assert_int_equal(fam(p, "/exports"), 1); /* trailing '/' on a prefix ignored */
	/* A write under the inner family invalidates both. */
	assert_int_equal(inv(p, "POST", "/records/export/x"), BIT(0) | BIT(1));
	assert_int_equal(inv(p, "POST", "/records/1"), BIT(0));
	policy_free(&p);
	assert_null(p);
}

/* A '*' segment matches any one segment; except takes paths out of a family. */
static void test_family_wildcard_and_except(void **state)
{
	struct config c;
	struct policy *p;

	(void)state;
	memset(&c, 0, sizeof(c));
	add_family(&c, "records", (char *[]){ "/records", NULL }, (char *[]){ "/operations", NULL },
		   (char *[]){ "/records/export", NULL });
	add_family(&c, "record_operations",
		   (char *[]){ "/records/*/operations", "/operations/*/records/", NULL },
		   (char *[]){ "/records", NULL }, NULL);
	p = policy_new(&c);
	assert_non_null(p);
	assert_int_equal(fam(p, "/records"), 0);
	assert_int_equal(fam(p, "/records/r1"), 0);
	assert_int_equal(fam(p, "/records/r1/values"), 0);
	assert_int_equal(fam(p, "/records/search"), 0);
	/* The wildcard's prefix is longer, so it wins over "/records". */
	assert_int_equal(fam(p, "/records/r1/operations"), 1);
	assert_int_equal(fam(p, "/records/r1/operations/"), 1);
	assert_int_equal(fam(p, "/records/r1/operationsX"), 0);
	assert_int_equal(fam(p, "/records//operations"), 0);    /* '*' is never empty */
	assert_int_equal(fam(p, "/records/a/b/operations"), 0); /* nor two segments */
	assert_int_equal(fam(p, "/operations/o1/records"), 1);
	assert_int_equal(fam(p, "/operations/o1"), -1);
	assert_int_equal(fam(p, "/operations/o1/recordsX"), -1);
	/* Excepted: forwarded, in no family. */
	assert_int_equal(fam(p, "/records/export"), -1);
	assert_int_equal(fam(p, "/records/export/csv"), -1);
	assert_int_equal(fam(p, "/records/exports"), 0);
	/* Writes. */
	assert_int_equal(inv(p, "POST", "/records"), BIT(0) | BIT(1));
	assert_int_equal(inv(p, "POST", "/records/r1/values"), BIT(0) | BIT(1));
	assert_int_equal(inv(p, "PUT", "/operations/o1/records"), BIT(0) | BIT(1));
	assert_int_equal(inv(p, "PUT", "/properties/p1"), 0);
	policy_free(&p);
}

/* The built-in table: each write of the API empties what it changes. */
static void test_default_table_invalidations(void **state)
{
	struct config *c = config_new();
	struct policy *p;
	char err[256];
	int f[32];
	const char *names[] = {
		"programs",         "entity_slices",   "record_views",     "key_fields",
		"data_fields",      "property_fields", "activities",       "activity_definitions",
		"activity_labels",  "dashboards",      "workspace_active", "workspace_members",
		"workspace_groups", "records",         "record_operations"
	};

	(void)state;
	assert_non_null(c);
	assert_int_equal(config_set(c, "cache", "records", "yes", NULL, err, sizeof(err)), 0);
	assert_int_equal(config_set(c, "cache", "file", "/tmp/x.db", NULL, err, sizeof(err)), 0);
	assert_int_equal(config_finish(c, err, sizeof(err)), 0);
	p = policy_new(c);
	assert_non_null(p);
	assert_int_equal(policy_family_count(p), 15);
	for (int i = 0; i < 15; i++) {
		assert_string_equal(policy_family_name(p, i), names[i]);
		f[i] = i;
	}
#define B(n) BIT(f[n])
	assert_int_equal(inv(p, "POST", "/key_fields/"), B(1) | B(2) | B(3));
	assert_int_equal(inv(p, "POST", "/data_fields/"), B(1) | B(2) | B(4));
	assert_int_equal(inv(p, "POST", "/push/imports/s1"), B(1) | B(2) | B(3) | B(4));
	assert_int_equal(inv(p, "PUT", "/record_views/v1/add_key_field"), B(2));
	assert_int_equal(inv(p, "POST", "/activities"), B(6));
	assert_int_equal(inv(p, "PUT", "/activities/a1"), B(6));
	assert_int_equal(inv(p, "POST", "/dashboards/d1/categories"), B(9));
	assert_int_equal(inv(p, "DELETE", "/dashboards/d1/charts/c1"), B(9));
	assert_int_equal(inv(p, "PUT", "/properties/p1"), B(5) | B(13) | B(14));
	assert_int_equal(inv(p, "POST", "/records"), B(13) | B(14));
	assert_int_equal(inv(p, "POST", "/records/r1/values/file"), B(13) | B(14));
	assert_int_equal(inv(p, "PUT", "/operations/o1/records"), B(13) | B(14));
#undef B
	assert_int_equal(fam(p, "/workspaces/members"), 11);
	assert_int_equal(fam(p, "/workspaces/events"), -1);
	assert_int_equal(fam(p, "/records/export/csv"), -1);
	assert_int_equal(fam(p, "/records/r1/operations"), 14);
	assert_int_equal(fam(p, "/records/identifiers"), 13);
	assert_int_equal(policy_family_ttl(p, 13), 60);
	assert_int_equal(policy_family_ttl(p, 14), 10);
	policy_free(&p);
	config_free(&c);
}

static void test_invalidates(void **state)
{
	struct policy *p = *state;
	const uint32_t all = BIT(PROGRAMS) | BIT(ENTITY_SLICES) | BIT(RECORD_VIEWS);

	assert_int_equal(inv(p, "PUT", "/record_views/x/add_key_field"), BIT(RECORD_VIEWS));
	assert_int_equal(inv(p, "POST", "/push/imports"), all);
	assert_int_equal(inv(p, "POST", "/push/imports/abc"), all);
	assert_int_equal(inv(p, "POST", "/key_fields/"), BIT(ENTITY_SLICES) | BIT(RECORD_VIEWS));
	assert_int_equal(inv(p, "POST", "/key_fields"), BIT(ENTITY_SLICES) | BIT(RECORD_VIEWS));
	assert_int_equal(inv(p, "POST", "/data_fields/"), BIT(ENTITY_SLICES) | BIT(RECORD_VIEWS));
	assert_int_equal(inv(p, "DELETE", "/programs/1"), BIT(PROGRAMS));
	assert_int_equal(inv(p, "PATCH", "/entity_slices"), BIT(ENTITY_SLICES));
	assert_int_equal(inv(p, "POST", "/push/importsX"), 0);
	assert_int_equal(inv(p, "POST", "/records"), 0);
	assert_int_equal(inv(p, "GET", "/push/imports"), 0);
	assert_int_equal(inv(p, "GET", "/record_views/x"), 0);
	assert_int_equal(inv(p, "HEAD", "/programs"), 0);
	/* Method names are case-sensitive: "get" is not GET, so it counts as a write. */
	assert_int_equal(inv(p, "get", "/programs"), BIT(PROGRAMS));
}

static char *key(const char *url, const char *client, const char *method, const char *target)
{
	char *k = policy_cache_key(url, client, method, target);

	assert_non_null(k);
	return k;
}

static void assert_keys(const char *a, const char *b, int equal)
{
	if (equal && strcmp(a, b) != 0)
		fail_msg("keys differ:\n%s\n--\n%s", a, b);
	if (!equal && strcmp(a, b) == 0)
		fail_msg("keys collide: %s", a);
}

static void test_cache_key(void **state)
{
	const char *u = "https://api.kaleidoscope.bio";
	char *base = key(u, "client-a", "GET", "/records?b=2&a=1");
	char *k;

	(void)state;
	k = key(u, "client-a", "GET", "/records?a=1&b=2");
	assert_keys(base, k, 1);
	free(k);
	k = key(u, "client-b", "GET", "/records?b=2&a=1");
	assert_keys(base, k, 0);
	free(k);
	k = key("https://staging.kaleidoscope.bio", "client-a", "GET", "/records?b=2&a=1");
	assert_keys(base, k, 0);
	free(k);
	k = key(u, "client-a", "HEAD", "/records?b=2&a=1");
	assert_keys(base, k, 0);
	free(k);
	k = key(u, "client-a", "GET", "/records/?b=2&a=1");
	assert_keys(base, k, 0);
	free(k);
	k = key(u, "client-a", "GET", "/records?b=2&a=2");
	assert_keys(base, k, 0);
	free(k);
	free(base);

	/* NULL client id is the empty one. */
	base = key(u, NULL, "GET", "/programs");
	k = key(u, "", "GET", "/programs");
	assert_keys(base, k, 1);
	free(k);
	/* No query, an empty query and empty parameters are one request. */
	k = key(u, NULL, "GET", "/programs?&&");
	assert_keys(base, k, 1);
	free(k);
	free(base);

	/* Field boundaries cannot be shifted to make two requests collide. */
	base = key("https://a", "b\nGET", "GET", "/x");
	k = key("https://a\nb", "GET", "GET", "/x");
	assert_keys(base, k, 0);
	free(k);
	free(base);
	base = key(u, "ab", "GET", "/x");
	k = key(u, "a", "bGET", "/x");
	assert_keys(base, k, 0);
	free(k);
	free(base);
}

static void check_canon(const char *in, const char *want)
{
	char *out = policy_canonical_query(in, strlen(in));

	assert_non_null(out);
	if (strcmp(out, want) != 0)
		fail_msg("canonical(\"%s\") = \"%s\", want \"%s\"", in, out, want);
	free(out);
}

static void test_canonical_query(void **state)
{
	(void)state;
	check_canon("", "");
	check_canon("a=1", "a=1");
	check_canon("b=2&a=1", "a=1&b=2");
	check_canon("c=3&b=2&a=1", "a=1&b=2&c=3");
	/* Repeated names keep their order (stable), by name only, not value. */
	check_canon("x=3&a=0&x=1&x=2", "a=0&x=3&x=1&x=2");
	/* Empty parameters dropped. */
	check_canon("&&b=2&&a=1&", "a=1&b=2");
	check_canon("&", "");
	/* Name is the bytes before '='; a prefix sorts first; no '=' is all name. */
	check_canon("ab=1&a=2&a", "a=2&a&ab=1");
	check_canon("a==1&a=0", "a==1&a=0");
	/* Bytes untouched: no decoding, memcmp order (uppercase before lowercase). */
	check_canon("b=%20x&B=1&%41=2", "%41=2&B=1&b=%20x");
	check_canon("ids=[\"a\",\"b\"]&filter=%7B%7D", "filter=%7B%7D&ids=[\"a\",\"b\"]");
	/* len bounds the input. */
	{
		char *out = policy_canonical_query("b=1&a=2&zzz", 7);

		assert_string_equal(out, "a=2&b=1");
		free(out);
	}
}

static void test_canonical_query_many(void **state)
{
	char in[4096], want[4096];
	size_t off = 0;

	(void)state;
	/* Reverse order in, ascending out: exercises the sort past trivial sizes. */
	for (int i = 199; i >= 0; i--)
		off += (size_t)snprintf(in + off, sizeof(in) - off, "%sp%03d=%d",
					i == 199 ? "" : "&", i, i);
	off = 0;
	for (int i = 0; i < 200; i++)
		off += (size_t)snprintf(want + off, sizeof(want) - off, "%sp%03d=%d", i ? "&" : "",
					i, i);
	check_canon(in, want);
}

static void test_cache_control(void **state)
{
	struct policy_cc cc;

	(void)state;
	memset(&cc, 0x55, sizeof(cc));
	policy_parse_cache_control(NULL, &cc);
	assert_int_equal(cc.no_store, 0);
	assert_int_equal(cc.no_cache, 0);
	assert_int_equal(cc.only_if_cached, 0);
	assert_int_equal(cc.private_, 0);
	assert_int_equal(cc.max_age, -1);
	assert_int_equal(cc.s_maxage, -1);

	policy_parse_cache_control("max-age=60", &cc);
	assert_int_equal(cc.max_age, 60);
	assert_int_equal(cc.s_maxage, -1);
	assert_int_equal(cc.no_store, 0);

	policy_parse_cache_control("Public, MAX-AGE=120 ,S-MaxAge=30", &cc);
	assert_int_equal(cc.max_age, 120);
	assert_int_equal(cc.s_maxage, 30);

	policy_parse_cache_control("no-store", &cc);
	assert_int_equal(cc.no_store, 1);
	assert_int_equal(cc.max_age, -1);

	policy_parse_cache_control("No-Cache,Only-If-Cached", &cc);
	assert_int_equal(cc.no_cache, 1);
	assert_int_equal(cc.only_if_cached, 1);
	assert_int_equal(cc.no_store, 0);

	/* Quoted values, including a quoted comma that must not split. */
	policy_parse_cache_control("private=\"Set-Cookie, X-Foo\", max-age=\"45\"", &cc);
	assert_int_equal(cc.private_, 1);
	assert_int_equal(cc.max_age, 45);
	policy_parse_cache_control("no-cache=\"a,max-age=1\", s-maxage=7", &cc);
	assert_int_equal(cc.no_cache, 1);
	assert_int_equal(cc.max_age, -1);
	assert_int_equal(cc.s_maxage, 7);

	/* OWS around '=' and between directives. */
	policy_parse_cache_control("\tmax-age = 10\t,\tno-store ", &cc);
	assert_int_equal(cc.max_age, 10);
	assert_int_equal(cc.no_store, 1);

	/* Invalid numbers are ignored, not read as zero or as a prefix. */
	policy_parse_cache_control("max-age=abc, s-maxage=-5, max-age=", &cc);
	assert_int_equal(cc.max_age, -1);
	assert_int_equal(cc.s_maxage, -1);
	policy_parse_cache_control("max-age=12x", &cc);
	assert_int_equal(cc.max_age, -1);
	policy_parse_cache_control("max-age", &cc);
	assert_int_equal(cc.max_age, -1);

	/* Huge values saturate at 2^31 (RFC 9111 1.2.2). */
	policy_parse_cache_control("max-age=99999999999999999999999", &cc);
	assert_int_equal(cc.max_age, 2147483648L);

	/* Names must match whole. */
	policy_parse_cache_control("no-storex, xprivate, max-agex=5", &cc);
	assert_int_equal(cc.no_store, 0);
	assert_int_equal(cc.private_, 0);
	assert_int_equal(cc.max_age, -1);

	/* Repeated: the smaller wins. */
	policy_parse_cache_control("max-age=100, max-age=20, max-age=50", &cc);
	assert_int_equal(cc.max_age, 20);

	/* Junk and empty elements do not derail the rest. */
	policy_parse_cache_control(",,, =x, \"odd, max-age=8", &cc);
	assert_int_equal(cc.max_age, 8);
	policy_parse_cache_control("max-age=\"9", &cc); /* unterminated quote */
	assert_int_equal(cc.max_age, 9);
}

static unsigned ttl_for(const struct policy *p, int family, const char *cc_value)
{
	struct policy_cc cc;

	policy_parse_cache_control(cc_value, &cc);
	return policy_ttl(p, family, &cc);
}

static void test_ttl(void **state)
{
	struct policy *p = *state;

	assert_int_equal(ttl_for(p, PROGRAMS, NULL), 300);
	assert_int_equal(policy_ttl(p, PROGRAMS, NULL), 300);
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=60"), 60);
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=6000"), 300); /* capped by the family */
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=0"), 0);
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=10, s-maxage=100"), 100);
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=100, s-maxage=10"), 10);
	assert_int_equal(ttl_for(p, PROGRAMS, "max-age=100, s-maxage=1000"), 300);
	assert_int_equal(ttl_for(p, PROGRAMS, "s-maxage=0, max-age=100"), 0);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "public"), 900);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "no-store, max-age=100"), 0);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "private"), 0);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "no-cache, max-age=100"), 0);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "private=\"Set-Cookie\", max-age=50"), 0);
	assert_int_equal(ttl_for(p, RECORD_VIEWS, "max-age=99999999999"), 900);
	assert_int_equal(ttl_for(p, -1, NULL), 0);
	assert_int_equal(ttl_for(p, 3, NULL), 0);
}

/* An answer's headers, "Name: value" lines, as a hdr list. */
static struct hdr *headers(const char *const *lines)
{
	struct hdr *h = hdr_new();

	for (; *lines != NULL; lines++) {
		const char *colon = strchr(*lines, ':');

		assert_non_null(colon);
		assert_int_equal(
			hdr_add(h, *lines, (size_t)(colon - *lines), colon + 2, strlen(colon + 2)),
			0);
	}
	return h;
}

static unsigned answer_ttl(struct policy *p, int family, unsigned *age, ...)
{
	const char *lines[16];
	int n = 0;
	va_list ap;
	struct hdr *h;
	unsigned ttl;

	va_start(ap, age);
	while ((lines[n] = va_arg(ap, const char *)) != NULL && n < 15)
		n++;
	va_end(ap);
	lines[n] = NULL;
	h = headers(lines);
	/* 1 Dec 2026 00:00:00 UTC */
	ttl = policy_answer_ttl(p, family, h, 1796083200, age);
	hdr_free(&h);
	return ttl;
}

static void test_answer_ttl(void **state)
{
	struct policy *p = *state;
	unsigned age = 99;

	/* Nothing said: the family's TTL, deliberately. */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, NULL), 300);
	assert_int_equal(age, 0);
	/* Expires counts without max-age, from Date (or now). */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Date: Tue, 01 Dec 2026 00:00:00 GMT",
				    "Expires: Tue, 01 Dec 2026 00:01:00 GMT", NULL),
			 60);
	assert_int_equal(
		answer_ttl(p, PROGRAMS, &age, "Expires: Tue, 01 Dec 2026 00:00:30 GMT", NULL), 30);
	assert_int_equal(
		answer_ttl(p, PROGRAMS, &age, "Expires: Wed, 02 Dec 2026 00:00:00 GMT", NULL),
		300); /* capped by the family */
	assert_int_equal(
		answer_ttl(p, PROGRAMS, &age, "Expires: Mon, 30 Nov 2026 00:00:00 GMT", NULL),
		0);                                                             /* past */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Expires: 0", NULL), 0); /* invalid */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age=100",
				    "Expires: Mon, 30 Nov 2026 00:00:00 GMT", NULL),
			 100); /* max-age wins */
	/* The API's Age counts against freshness, and is reported. */
	assert_int_equal(
		answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age=100", "Age: 30", NULL), 70);
	assert_int_equal(age, 30);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Age: 500", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Age: -4", NULL), 300);
	assert_int_equal(age, 0);
	/* Invalid or negative max-age: stale; the quoted form is read. */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age=-1", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age=1.5", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Cache-Control: max-age=\"40\"", NULL), 40);
	/* Vary: * is never kept; other fields are up to policy_vary_carried(). */
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Vary: Accept-Encoding", NULL), 300);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Vary: *", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Vary: Origin, *", NULL), 0);
	assert_int_equal(answer_ttl(p, PROGRAMS, &age, "Vary: Origin", NULL), 300);
}

static const char *field_of(void *arg, const char *name)
{
	return hdr_get(arg, name);
}

static void test_vary(void **state)
{
	static const char *const req_lines[] = { "Accept: */*", "Accept-Encoding: gzip", NULL };
	struct hdr *req = headers(req_lines);

	(void)state;
	assert_false(policy_vary_beyond_key(NULL));
	assert_false(policy_vary_beyond_key("Accept-Encoding"));
	assert_false(policy_vary_beyond_key(" accept-encoding , "));
	assert_true(policy_vary_beyond_key("Accept-Encoding, Origin"));
	assert_true(policy_vary_beyond_key("*"));
	/* The request carries Accept (and Accept-Encoding, which never counts). */
	assert_true(policy_vary_carried("Accept", field_of, req));
	assert_true(policy_vary_carried("origin, ACCEPT", field_of, req));
	assert_false(policy_vary_carried("Accept-Encoding", field_of, req));
	assert_false(policy_vary_carried("Origin, Accept-Language", field_of, req));
	assert_true(policy_vary_carried("*", field_of, req));
	assert_false(policy_vary_carried("", field_of, req));
	hdr_free(&req);
}

static void stale_limits_of(const char *cc, unsigned *swr, unsigned *sie)
{
	const char *lines[] = { cc, NULL };
	struct hdr *h = headers(cc != NULL ? lines : lines + 1);

	policy_stale_limits(h, 60, 604800, swr, sie);
	hdr_free(&h);
}

static void test_stale_limits(void **state)
{
	unsigned swr, sie;

	(void)state;
	stale_limits_of(NULL, &swr, &sie);
	assert_int_equal(swr, 60);
	assert_int_equal(sie, 604800);
	stale_limits_of("Cache-Control: max-age=10, stale-while-revalidate=5, stale-if-error=100",
			&swr, &sie);
	assert_int_equal(swr, 5);
	assert_int_equal(sie, 100);
	stale_limits_of("Cache-Control: stale-while-revalidate=600, stale-if-error=99999999", &swr,
			&sie);
	assert_int_equal(swr, 60); /* the answer caps, never raises */
	assert_int_equal(sie, 604800);
	for (int i = 0; i < 3; i++) {
		static const char *const forbid[] = { "Cache-Control: must-revalidate",
						      "Cache-Control: proxy-revalidate",
						      "Cache-Control: s-maxage=30" };

		stale_limits_of(forbid[i], &swr, &sie);
		assert_int_equal(swr, 0);
		assert_int_equal(sie, 0);
	}
}

static void test_ttl_zero_family(void **state)
{
	struct config c;
	struct policy *p;

	(void)state;
	memset(&c, 0, sizeof(c));
	c.families[0].name = "off";
	c.families[0].paths[0] = "/off";
	c.families[0].npaths = 1;
	c.families[0].ttl = 0;
	c.nfamilies = 1;
	p = policy_new(&c);
	assert_non_null(p);
	assert_int_equal(ttl_for(p, 0, "max-age=100"), 0);
	assert_int_equal(policy_ttl(p, 0, NULL), 0);
	policy_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_families_copied, setup, teardown),
		cmocka_unit_test(test_policy_owns_strings),
		cmocka_unit_test_setup_teardown(test_family_match, setup, teardown),
		cmocka_unit_test(test_family_longest_prefix),
		cmocka_unit_test(test_family_wildcard_and_except),
		cmocka_unit_test(test_default_table_invalidations),
		cmocka_unit_test_setup_teardown(test_invalidates, setup, teardown),
		cmocka_unit_test(test_cache_key),
		cmocka_unit_test(test_canonical_query),
		cmocka_unit_test(test_canonical_query_many),
		cmocka_unit_test(test_cache_control),
		cmocka_unit_test_setup_teardown(test_ttl, setup, teardown),
		cmocka_unit_test_setup_teardown(test_answer_ttl, setup, teardown),
		cmocka_unit_test(test_stale_limits),
		cmocka_unit_test(test_vary),
		cmocka_unit_test(test_ttl_zero_family),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
