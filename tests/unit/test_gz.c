/*
 * test_gz: gzip round trips, that the output is a gzip file other readers
 * take, and that every kind of bad member (wrong size, cut short, trailing
 * bytes, a damaged byte, another format) is refused rather than half read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "gz.h"

#define GZ_HEADER_LEN 10
#define GZ_TRAILER_LEN 8

/* A fixed-seed generator, so every run tests the same bytes. */
static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Half noise, half a repeated phrase: both of deflate's cases. */
static unsigned char *mixed_data(size_t len)
{
	static const char phrase[] = "{\"id\":42,\"title\":\"Program\"},";
	unsigned char *p = malloc(len);
	uint32_t seed = 12345;

	assert_non_null(p);
	for (size_t i = 0; i < len / 2; i++)
		p[i] = (unsigned char)next_rand(&seed);
	for (size_t i = len / 2; i < len; i++)
		p[i] = (unsigned char)phrase[i % (sizeof(phrase) - 1)];
	return p;
}

static void compress_ok(const void *in, size_t len, void **out, size_t *outlen)
{
	assert_int_equal(gz_compress(in, len, 6, out, outlen), 0);
	assert_non_null(*out);
	assert_true(*outlen >= GZ_HEADER_LEN + GZ_TRAILER_LEN);
}

static void round_trip(const void *in, size_t len)
{
	void *gz = NULL, *back = (void *)1;
	size_t gzlen = 0;

	compress_ok(in, len, &gz, &gzlen);
	assert_int_equal(gz_decompress(gz, gzlen, len, &back), 0);
	assert_non_null(back);
	if (len > 0)
		assert_memory_equal(back, in, len);
	assert_int_equal(((unsigned char *)back)[len], '\0');
	free(back);
	free(gz);
}

static void expect_refused(const void *gz, size_t gzlen, size_t expect)
{
	void *out = (void *)1;

	assert_int_equal(gz_decompress(gz, gzlen, expect, &out), -1);
	assert_null(out);
}

static void test_round_trip_empty(void **state)
{
	(void)state;
	round_trip(NULL, 0);
	round_trip("", 0);
}

static void test_round_trip_small(void **state)
{
	static const char body[] = "[{\"id\":1}]\0with a NUL\xff";

	(void)state;
	round_trip(body, sizeof(body));
	round_trip("x", 1);
}

static void test_round_trip_1mib(void **state)
{
	size_t len = 1024 * 1024;
	unsigned char *data = mixed_data(len);
	void *gz = NULL;
	size_t gzlen = 0;

	(void)state;
	round_trip(data, len);
	/* The repeated half must actually have been compressed. */
	compress_ok(data, len, &gz, &gzlen);
	assert_true(gzlen < len * 3 / 4);
	free(gz);
	free(data);
}

static void test_every_level(void **state)
{
	unsigned char *data = mixed_data(20000);

	(void)state;
	for (int level = 1; level <= 9; level++) {
		void *gz = NULL, *back = NULL;
		size_t gzlen = 0;

		assert_int_equal(gz_compress(data, 20000, level, &gz, &gzlen), 0);
		assert_int_equal(gz_decompress(gz, gzlen, 20000, &back), 0);
		assert_memory_equal(back, data, 20000);
		free(back);
		free(gz);
	}
	free(data);
}

static void test_level_out_of_range_refused(void **state)
{
	void *gz = (void *)1;
	size_t gzlen = 1;

	(void)state;
	assert_int_equal(gz_compress("abc", 3, 0, &gz, &gzlen), -1);
	assert_null(gz);
	assert_int_equal(gzlen, 0);
	assert_int_equal(gz_compress("abc", 3, 10, &gz, &gzlen), -1);
	assert_int_equal(gz_compress("abc", 3, -1, &gz, &gzlen), -1);
}

/* Magic, deflate method, and a body zlib's gzip file reader takes. */
static void test_output_is_gzip(void **state)
{
	static const char body[] = "hello, gzip reader\n";
	char path[] = "/tmp/test_gz.XXXXXX", back[64] = "";
	unsigned char *p;
	void *gz = NULL;
	size_t gzlen = 0;
	gzFile f;
	int fd;

	(void)state;
	compress_ok(body, strlen(body), &gz, &gzlen);
	p = gz;
	assert_int_equal(p[0], 0x1f);
	assert_int_equal(p[1], 0x8b);
	assert_int_equal(p[2], 8);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, gz, gzlen), (ssize_t)gzlen);
	close(fd);
	f = gzopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(gzdirect(f), 0);
	assert_int_equal(gzread(f, back, sizeof(back) - 1), (int)strlen(body));
	assert_string_equal(back, body);
	gzclose(f);
	unlink(path);
	free(gz);
}

static void test_wrong_expect_refused(void **state)
{
	static const char body[] = "twenty-six bytes of body!";
	void *gz = NULL;
	size_t gzlen = 0, len = strlen(body);

	(void)state;
	compress_ok(body, len, &gz, &gzlen);
	expect_refused(gz, gzlen, len - 1);
	expect_refused(gz, gzlen, len + 1);
	expect_refused(gz, gzlen, 0);
	expect_refused(gz, gzlen, 1000000);
	expect_refused(gz, gzlen, SIZE_MAX);
	free(gz);
}

static void test_truncated_refused(void **state)
{
	unsigned char *data = mixed_data(5000);
	void *gz = NULL;
	size_t gzlen = 0;

	(void)state;
	compress_ok(data, 5000, &gz, &gzlen);
	/* Every cut, down to nothing: the trailer's last byte counts too. */
	for (size_t cut = 0; cut < gzlen; cut++)
		expect_refused(gz, cut, 5000);
	free(gz);
	free(data);
}

static void test_trailing_garbage_refused(void **state)
{
	static const char body[] = "body";
	unsigned char *two;
	void *gz = NULL;
	size_t gzlen = 0;

	(void)state;
	compress_ok(body, 4, &gz, &gzlen);
	two = malloc(2 * gzlen);
	assert_non_null(two);
	memcpy(two, gz, gzlen);
	two[gzlen] = 'x';
	expect_refused(two, gzlen + 1, 4);
	two[gzlen] = '\0';
	expect_refused(two, gzlen + 1, 4);
	/* A second whole member is trailing too, whatever expect says. */
	memcpy(two + gzlen, gz, gzlen);
	expect_refused(two, 2 * gzlen, 4);
	expect_refused(two, 2 * gzlen, 8);
	free(two);
	free(gz);
}

static void test_corrupted_byte_refused(void **state)
{
	unsigned char *data = mixed_data(5000), *bad;
	void *gz = NULL;
	size_t gzlen = 0;
	/* Magic, compression method, deflate data, CRC-32, ISIZE. */
	size_t at[5];

	(void)state;
	compress_ok(data, 5000, &gz, &gzlen);
	at[0] = 0;
	at[1] = 2;
	at[2] = GZ_HEADER_LEN + (gzlen - GZ_HEADER_LEN - GZ_TRAILER_LEN) / 2;
	at[3] = gzlen - GZ_TRAILER_LEN;
	at[4] = gzlen - 1;
	bad = malloc(gzlen);
	assert_non_null(bad);
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
		memcpy(bad, gz, gzlen);
		bad[at[i]] ^= 0x10;
		expect_refused(bad, gzlen, 5000);
	}
	free(bad);
	free(gz);
	free(data);
}

/* A zlib-format stream is deflate too, but not what the cache stores. */
static void test_zlib_format_refused(void **state)
{
	static const char body[] = "zlib, not gzip";
	unsigned char z[128];
	uLongf zlen = sizeof(z);

	(void)state;
	assert_int_equal(compress2(z, &zlen, (const Bytef *)body, strlen(body), 6), Z_OK);
	expect_refused(z, zlen, strlen(body));
	expect_refused("", 0, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_empty),
		cmocka_unit_test(test_round_trip_small),
		cmocka_unit_test(test_round_trip_1mib),
		cmocka_unit_test(test_every_level),
		cmocka_unit_test(test_level_out_of_range_refused),
		cmocka_unit_test(test_output_is_gzip),
		cmocka_unit_test(test_wrong_expect_refused),
		cmocka_unit_test(test_truncated_refused),
		cmocka_unit_test(test_trailing_garbage_refused),
		cmocka_unit_test(test_corrupted_byte_refused),
		cmocka_unit_test(test_zlib_format_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
