/*
 * test_prom: the text format's lines, label and HELP escaping, label sets
 * that do not fit, histograms with cumulative buckets ending in +Inf, and
 * special float values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

static void test_lines(void **state)
{
	struct prom p = { 0 };
	struct prom_labels l;
	size_t len;
	char *text;

	(void)state;
	prom_head(&p, "kd_x_total", "counter", "Back\\slash and\nnewline.");
	prom_labels_init(&l);
	prom_label(&l, "family", "programs");
	prom_label(&l, "odd", "a\"b\\c\nd");
	prom_u64(&p, "kd_x_total", &l, 18446744073709551615ULL);
	prom_u64(&p, "kd_x_total", NULL, 0);
	prom_double(&p, "kd_g", NULL, 0.25);
	prom_double(&p, "kd_g", NULL, INFINITY);
	prom_double(&p, "kd_g", NULL, NAN);
	text = prom_take(&p, &len);
	assert_non_null(text);
	assert_int_equal(len, strlen(text));
	assert_string_equal(text, "# HELP kd_x_total Back\\\\slash and\\nnewline.\n"
				  "# TYPE kd_x_total counter\n"
				  "kd_x_total{family=\"programs\",odd=\"a\\\"b\\\\c\\nd\"} "
				  "18446744073709551615\n"
				  "kd_x_total 0\n"
				  "kd_g 0.25\n"
				  "kd_g +Inf\n"
				  "kd_g NaN\n");
	free(text);
	/* Taken: the writer is empty again. */
	text = prom_take(&p, &len);
	assert_string_equal(text, "");
	assert_int_equal(len, 0);
	free(text);
}

static void test_cut_labels(void **state)
{
	struct prom p = { 0 };
	struct prom_labels l;
	char big[600];
	size_t len;
	char *text;

	(void)state;
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	prom_labels_init(&l);
	prom_label(&l, "v", big);
	assert_true(l.cut);
	/* A sample with a cut label set is left out, not written half. */
	prom_u64(&p, "kd_y", &l, 1);
	prom_u64(&p, "kd_z", NULL, 2);
	text = prom_take(&p, &len);
	assert_string_equal(text, "kd_z 2\n");
	free(text);
}

static void test_histogram(void **state)
{
	struct prom p = { 0 };
	struct prom_labels l;
	struct histo_snapshot h = { 0 };
	size_t len;
	char *text;

	(void)state;
	for (int b = 0; b < HISTO_BOUNDS; b++)
		h.le[b] = (unsigned long long)b;
	h.count = 20;
	h.sum = 1.5;
	prom_labels_init(&l);
	prom_label(&l, "cache", "HIT");
	prom_histogram(&p, "kd_d_seconds", &l, &h);
	text = prom_take(&p, &len);
	assert_non_null(strstr(text, "kd_d_seconds_bucket{cache=\"HIT\",le=\"0.0001\"} 0\n"));
	assert_non_null(strstr(text, "kd_d_seconds_bucket{cache=\"HIT\",le=\"0.00025\"} 1\n"));
	assert_non_null(strstr(text, "kd_d_seconds_bucket{cache=\"HIT\",le=\"30\"} 16\n"));
	assert_non_null(strstr(text, "kd_d_seconds_bucket{cache=\"HIT\",le=\"+Inf\"} 20\n"));
	assert_non_null(strstr(text, "kd_d_seconds_sum{cache=\"HIT\"} 1.5\n"));
	assert_non_null(strstr(text, "kd_d_seconds_count{cache=\"HIT\"} 20\n"));
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_cut_labels),
		cmocka_unit_test(test_histogram),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
