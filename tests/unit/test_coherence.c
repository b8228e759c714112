/*
 * test_coherence: another instance's message is an action and ours is not;
 * a malformed message is refused and changes nothing; a catch-up drops
 * exactly the families whose generation moved (all of them on the first
 * catch-up or a new epoch), a count handed out again with another nonce
 * counts as moved, and a missed prefix purge drops everything.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "coherence.h"

static const char *const names[] = { "programs", "entity_slices", "record_views" };
#define ME "00000000000000aa"

static struct coh *made(void)
{
	struct coh *c = coh_new(3, names, ME);

	assert_non_null(c);
	return c;
}

static int msg(struct coh *c, const char *m, struct coh_action *a)
{
	return coh_message(c, m, strlen(m), a);
}

/* A catch-up with the epoch "e1" and the generations given. */
static int catchup(struct coh *c, const char *epoch, const char *g0, const char *g1, const char *g2,
		   const char *purges, uint32_t *drop, int *all)
{
	const char *gens[4] = { g0, g1, g2, purges };

	return coh_catchup(c, epoch, gens, drop, all);
}

static void test_names(void **state)
{
	struct coh *c = made();

	(void)state;
	assert_int_equal(coh_count(c), 4);
	assert_string_equal(coh_name(c, 1), "entity_slices");
	assert_string_equal(coh_name(c, 3), COH_PURGES);
	coh_free(&c);
	assert_null(c);
}

static void test_messages(void **state)
{
	struct coh *c = made();
	struct coh_action a;

	(void)state;
	assert_int_equal(msg(c, "inv 7 00000000000000bb entity_slices", &a), 0);
	assert_int_equal(a.verb, COH_INVALIDATE);
	assert_int_equal(a.family, 1);
	/* our own announcement: nothing to do */
	assert_int_equal(msg(c, "inv 8 " ME " entity_slices", &a), 0);
	assert_int_equal(a.verb, COH_NONE);
	/* a family this instance does not have */
	assert_int_equal(msg(c, "inv 1 00000000000000bb dashboards", &a), 0);
	assert_int_equal(a.verb, COH_NONE);
	assert_int_equal(msg(c, "purge 3 00000000000000bb /programs/p1", &a), 0);
	assert_int_equal(a.verb, COH_PURGE);
	assert_string_equal(a.what, "/programs/p1");
	assert_int_equal(msg(c, "purge 4 " ME " /programs", &a), 0);
	assert_int_equal(a.verb, COH_NONE);
	coh_free(&c);
}

static void test_malformed(void **state)
{
	static const char *const bad[] = {
		"",
		"inv",
		"inv 7",
		"inv 7 00000000000000bb",
		"inv 7 00000000000000bb ",
		"inv 7;x 00000000000000bb programs",
		"inv -1 00000000000000bb programs",
		"inv 7:ABC 00000000000000bb programs", /* upper case: not the script's */
		"inv 12345678901234567890123456789012345678901 00000000000000bb programs",
		"inv  7 00000000000000bb programs",
		"purge 3 00000000000000bb programs", /* a prefix is a path */
		"drop 3 00000000000000bb programs",
	};
	struct coh *c = made();
	struct coh_action a;
	uint32_t drop;
	int all;

	(void)state;
	catchup(c, "e1", "5", "5", "5", "5", &drop, &all);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(msg(c, bad[i], &a), -1);
		assert_int_equal(a.verb, COH_NONE);
	}
	/* an embedded NUL is not a family's name */
	assert_int_equal(coh_message(c, "inv 7 00000000000000bb prog\0rams", 31, &a), -1);
	/* none of them moved what is known: the same generations drop nothing */
	assert_int_equal(catchup(c, "e1", "5", "5", "5", "5", &drop, &all), 0);
	assert_int_equal(drop, 0);
	assert_int_equal(all, 0);
	coh_free(&c);
}

static void test_catchup(void **state)
{
	struct coh *c = made();
	struct coh_action a;
	uint32_t drop;
	int all;

	(void)state;
	/* The first catch-up of a process drops everything: the file may
	 * predate writes made elsewhere. */
	assert_int_equal(catchup(c, "e1", "3", NULL, "9", NULL, &drop, &all), 3);
	assert_int_equal(drop, 7);
	assert_int_equal(all, 1);
	/* Nothing moved: nothing dropped. */
	assert_int_equal(catchup(c, "e1", "3", NULL, "9", NULL, &drop, &all), 0);
	assert_int_equal(drop, 0);
	assert_int_equal(all, 0);
	/* What was received is known: a catch-up after it drops nothing. */
	assert_int_equal(msg(c, "inv 4 00000000000000bb programs", &a), 0);
	assert_int_equal(catchup(c, "e1", "4", NULL, "9", NULL, &drop, &all), 0);
	/* So is our own announcement, which comes back on the channel. */
	assert_int_equal(msg(c, "inv 1 " ME " entity_slices", &a), 0);
	assert_int_equal(a.verb, COH_NONE);
	assert_int_equal(catchup(c, "e1", "4", "1", "9", NULL, &drop, &all), 0);
	/* Missed while away: record_views moved, and only it is dropped. */
	assert_int_equal(catchup(c, "e1", "4", "1", "10", NULL, &drop, &all), 1);
	assert_int_equal(drop, 1u << 2);
	assert_int_equal(all, 0);
	/* A missed prefix purge: everything. */
	assert_int_equal(catchup(c, "e1", "4", "1", "10", "1", &drop, &all), 0);
	assert_int_equal(all, 1);
	/* A value not ours to read counts as moved. */
	assert_int_equal(catchup(c, "e1", "4", "X!", "10", "1", &drop, &all), 1);
	assert_int_equal(drop, 1u << 1);
	/* A count handed out again (Redis restored from an older snapshot)
	 * comes with another nonce: moved. */
	assert_int_equal(msg(c, "inv 5:aa 00000000000000bb programs", &a), 0);
	assert_int_equal(catchup(c, "e1", "5:bb", "X!", "10", "1", &drop, &all), 1);
	assert_int_equal(drop, 1u << 0);
	/* A new epoch (Redis came back empty, or another one): everything. */
	assert_int_equal(catchup(c, "e2", "4", "X!", "10", "1", &drop, &all), 3);
	assert_int_equal(all, 1);
	/* No epoch at all: nothing can be trusted either. */
	assert_int_equal(catchup(c, NULL, "4", "X!", "10", "1", &drop, &all), 3);
	coh_free(&c);
}

/* A Redis that went back (a snapshot restored, a replica behind) under the
 * same epoch: the families whose count is lower than one already seen, all
 * of them when the purges' is; a new epoch, a count that moved on, or a
 * first catch-up is no rewind. */
static void test_rewound(void **state)
{
	struct coh *c = made();
	const char *first[4] = { "7:aa", "3:bb", NULL, "2:cc" };
	const char *back[4] = { "5:dd", "3:bb", NULL, "2:cc" };
	const char *same_count[4] = { "7:ee", "3:bb", "1:ff", "2:cc" };
	const char *purges_back[4] = { "7:aa", "3:bb", NULL, "1:00" };
	uint32_t drop;
	int all;

	(void)state;
	assert_int_equal(coh_rewound(c, "e1", first), 0); /* nothing known yet */
	coh_catchup(c, "e1", first, &drop, &all);
	assert_int_equal(coh_rewound(c, "e1", first), 0);
	assert_int_equal(coh_rewound(c, "e1", back), 1u << 0);
	assert_int_equal(coh_rewound(c, "e2", back), 0); /* new epoch: dropped anyway */
	assert_int_equal(coh_rewound(c, "e1", same_count), 0);
	assert_int_equal(coh_rewound(c, "e1", purges_back), 7u);
	/* a count this instance published but never heard back counts too */
	coh_bumped(c, 1, "4:ab");
	assert_int_equal(coh_rewound(c, "e1", first), 1u << 1);
	coh_catchup(c, "e2", first, &drop, &all); /* another epoch forgets it */
	assert_int_equal(coh_rewound(c, "e2", first), 0);
	coh_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),     cmocka_unit_test(test_messages),
		cmocka_unit_test(test_malformed), cmocka_unit_test(test_catchup),
		cmocka_unit_test(test_rewound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
