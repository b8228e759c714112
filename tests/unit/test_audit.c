/*
 * test_audit: masking of credentials in targets and request lines, and
 * the JSON lines a file receives (one per record, every field, escaped),
 * reopened after a rename.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"

static void expect_mask(const char *in, const char *want)
{
	char *got = audit_mask_target(in);

	assert_non_null(got);
	assert_string_equal(got, want);
	assert_int_equal(audit_has_credential(in), strcmp(in, want) != 0);
	free(got);
}

static void test_masking(void **state)
{
	(void)state;
	expect_mask("/programs", "/programs");
	expect_mask("/programs?page=2", "/programs?page=2");
	expect_mask("/x?token=abc", "/x?token=***");
	expect_mask("/x?a=1&access_token=abc&b=2", "/x?a=1&access_token=***&b=2");
	expect_mask("/x?API_KEY=abc&Client_Secret=s&password=p&sig=1&signature=z",
		    "/x?API_KEY=***&Client_Secret=***&password=***&sig=1&signature=***");
	expect_mask("/records/identifiers?key=k", "/records/identifiers?key=k"); /* the API's */
	expect_mask("/x?auth=1&author=me", "/x?auth=***&author=me");
	expect_mask("/x?token", "/x?token");     /* no value to hide */
	expect_mask("/x?q=token", "/x?q=token"); /* only names count */
	expect_mask("/x?authorization=Bearer%20kd_x#frag", "/x?authorization=***");
	expect_mask("GET /x?token=abc&b=1 HTTP/1.1", "GET /x?token=***&b=1 HTTP/1.1");
	expect_mask("GET /x?token=abc HTTP/1.1", "GET /x?token=*** HTTP/1.1");
	expect_mask("/x?&&token=a&", "/x?&&token=***&");
}

static void test_file_lines_and_reopen(void **state)
{
	char path[64], rotated[80], err[256], line[2048];
	struct audit_record rec = { 0 };
	struct audit *a;
	cJSON *o;
	FILE *f;
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "/tmp/kd-test-audit-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	assert_null(audit_open("off", err, sizeof(err)));
	assert_string_equal(err, "");
	assert_null(audit_open("/nonexistent-dir/audit", err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent-dir/audit"));
	a = audit_open(path, err, sizeof(err));
	assert_non_null(a);
	rec.time_ms = 1767225600123LL;
	rec.id = "abc123";
	rec.account = "amy \"the\" robot";
	rec.ip = "10.0.0.7";
	rec.method = "GET";
	rec.target = "/programs?token=kd_x";
	rec.status = 200;
	rec.cache = "HIT";
	rec.upstream_ms = -1;
	rec.bytes_out = 2260;
	assert_int_equal(audit_write(a, &rec), 0);
	snprintf(rotated, sizeof(rotated), "%s.1", path);
	assert_int_equal(rename(path, rotated), 0);
	assert_int_equal(audit_reopen(a, err, sizeof(err)), 0);
	rec.account = NULL;
	rec.cache = NULL;
	rec.upstream_ms = 12.3456;
	assert_int_equal(audit_write(a, &rec), 0);
	audit_close(&a);

	f = fopen(rotated, "r");
	assert_non_null(fgets(line, sizeof(line), f));
	assert_null(fgets(line + 1024, 1024, f)); /* one line only */
	fclose(f);
	o = cJSON_Parse(line);
	assert_non_null(o);
	assert_string_equal(cJSON_GetObjectItem(o, "time")->valuestring,
			    "2026-01-01T00:00:00.123Z");
	assert_string_equal(cJSON_GetObjectItem(o, "account")->valuestring, "amy \"the\" robot");
	assert_string_equal(cJSON_GetObjectItem(o, "path")->valuestring, "/programs?token=***");
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "upstream_ms")));
	assert_int_equal(cJSON_GetObjectItem(o, "bytes_out")->valueint, 2260);
	assert_int_equal(cJSON_GetArraySize(o), 11);
	cJSON_Delete(o);
	assert_null(strstr(line, "kd_x"));

	f = fopen(path, "r");
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	o = cJSON_Parse(line);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "account")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "cache")));
	assert_true(cJSON_GetObjectItem(o, "upstream_ms")->valuedouble > 12.344 &&
		    cJSON_GetObjectItem(o, "upstream_ms")->valuedouble < 12.346);
	cJSON_Delete(o);
	unlink(path);
	unlink(rotated);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_masking),
		cmocka_unit_test(test_file_lines_and_reopen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
