/*
 * test_ipcount: connections counted per address, IPv4 and IPv6 apart
 * except an IPv4-mapped address, which is its IPv4 address; an address
 * leaves with its last connection.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "ipcount.h"

static struct sockaddr_in v4(const char *a)
{
	struct sockaddr_in s = { 0 };

	s.sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, a, &s.sin_addr), 1);
	return s;
}

static struct sockaddr_in6 v6(const char *a)
{
	struct sockaddr_in6 s = { 0 };

	s.sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, a, &s.sin6_addr), 1);
	return s;
}

#define SA(x) ((const struct sockaddr *)(const void *)&(x))

static void test_counts(void **state)
{
	struct ipcount *t = ipcount_new();
	struct sockaddr_in a = v4("10.0.0.1"), b = v4("10.0.0.2");
	struct sockaddr_in6 c = v6("2001:db8::1"), mapped = v6("::ffff:10.0.0.1");
	struct sockaddr_un_like {
		sa_family_t family;
	} un = { AF_UNIX };

	(void)state;
	assert_non_null(t);
	assert_int_equal(ipcount_open(t, SA(a)), 1);
	assert_int_equal(ipcount_open(t, SA(a)), 2);
	assert_int_equal(ipcount_open(t, SA(b)), 1);
	assert_int_equal(ipcount_open(t, SA(c)), 1);
	assert_int_equal(ipcount_open(t, SA(mapped)), 3); /* 10.0.0.1 again */
	assert_int_equal(ipcount_open(t, SA(un)), 0);     /* not counted */
	ipcount_close(t, SA(mapped));
	ipcount_close(t, SA(a));
	ipcount_close(t, SA(a));
	/* Gone with its last connection: the count starts over. */
	assert_int_equal(ipcount_open(t, SA(a)), 1);
	ipcount_close(t, SA(un)); /* ignored */
	ipcount_close(t, SA(a));
	ipcount_close(t, SA(b));
	ipcount_close(t, SA(c));
	ipcount_free(&t);
	assert_null(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
