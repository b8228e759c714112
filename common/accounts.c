/*
 * accounts: parse, look up, verify and edit the gateway's accounts file.
 *
 * Verification goes through libxcrypt alone: crypt_rn() recomputes the
 * hash with the stored settings, whatever method they name, and the two
 * strings are compared in constant time.  Nothing here hashes by hand.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accounts.h"
#include "check.h"
#include "errbuf.h"
#include "secret.h"

#define MAX_PATHS 16
#define LINE_MAX_LEN 4096

/* What an account did, and its rate bucket: shared by the account's
 * versions across reloads. */
struct usage {
	atomic_uint refs;
	atomic_ullong c[ACCOUNT_NCOUNTERS];
	pthread_mutex_t lock; /* the bucket */
	double tokens, last;
	int started;
	uint64_t taken, told; /* tokens taken here; of those, told to a cluster */
};

struct account {
	unsigned magic;
#define ACCOUNT_MAGIC 0x5c1a77e2u
	atomic_uint refs;
	char *name;
	char *hash;
	char *comment;
	char *cert; /* the client certificate subject required, or NULL */
	unsigned scopes;
	char *paths[MAX_PATHS]; /* no trailing '/' */
	int npaths;
	char *paths_text, *rate_text; /* as written, for listings */
	double rate;                  /* requests a second; 0 none */
	double burst;                 /* the bucket's size */
	struct usage *u;
};

struct accounts {
	struct account **a;
	size_t n;
};

/* A hash to spend the same time on when the name is unknown, made at
 * first use (a match against it never counts: there is no account). */
static char *dummy_hash;
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static struct usage *usage_new(void)
{
	struct usage *u = calloc(1, sizeof(*u));

	if (u == NULL)
		return NULL;
	atomic_init(&u->refs, 1);
	for (int i = 0; i < ACCOUNT_NCOUNTERS; i++)
		atomic_init(&u->c[i], 0);
	pthread_mutex_init(&u->lock, NULL);
	return u;
}

static void usage_unref(struct usage **up)
{
	struct usage *u = *up;

	*up = NULL;
	if (u != NULL && atomic_fetch_sub(&u->refs, 1) == 1) {
		pthread_mutex_destroy(&u->lock);
		free(u);
	}
}

static void account_free(struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	usage_unref(&a->u);
	free(a->name);
	secret_free(&a->hash);
	free(a->comment);
	free(a->cert);
	free(a->paths_text);
	free(a->rate_text);
	for (int i = 0; i < a->npaths; i++)
		free(a->paths[i]);
	FINI_OBJ(a);
	free(a);
}

struct account *account_ref(struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	atomic_fetch_add(&a->refs, 1);
	return a;
}

void account_unref(struct account **ap)
{
	struct account *a = *ap;

	if (a == NULL)
		return;
	*ap = NULL;
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	if (atomic_fetch_sub(&a->refs, 1) == 1)
		account_free(a);
}

const char *account_name(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->name;
}

const char *account_comment(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->comment != NULL ? a->comment : "";
}

const char *account_cert(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->cert != NULL ? a->cert : "";
}

const char *account_paths_text(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->paths_text;
}

const char *account_rate_text(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->rate_text;
}

unsigned account_scopes(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->scopes;
}

double account_rate(const struct account *a)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	return a->rate;
}

void account_count(struct account *a, enum account_counter c)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	ASSERT(c < ACCOUNT_NCOUNTERS);
	atomic_fetch_add_explicit(&a->u->c[c], 1, memory_order_relaxed);
}

uint64_t account_counter(const struct account *a, enum account_counter c)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	ASSERT(c < ACCOUNT_NCOUNTERS);
	return atomic_load_explicit(&a->u->c[c], memory_order_relaxed);
}

const char *account_counter_name(enum account_counter c)
{
	static const char *const names[ACCOUNT_NCOUNTERS] = { "requests", "denied", "rate_limited",
							      "logins", "login_failures" };

	return (int)c >= 0 && c < ACCOUNT_NCOUNTERS ? names[c] : "unknown";
}

/* The bucket as of now (under u->lock): full at first, then filled at the
 * rate up to its size. */
static void refill(const struct account *a, struct usage *u, double now)
{
	if (!u->started) {
		u->started = 1;
		u->tokens = a->burst;
	} else if (now > u->last) {
		u->tokens += (now - u->last) * a->rate;
	}
	if (u->tokens > a->burst)
		u->tokens = a->burst;
	u->last = now > u->last ? now : u->last;
}

double account_take(struct account *a, double now)
{
	struct usage *u;
	double wait = 0;

	CHECK_OBJ(a, ACCOUNT_MAGIC);
	if (a->rate <= 0)
		return 0;
	u = a->u;
	pthread_mutex_lock(&u->lock);
	refill(a, u, now);
	if (u->tokens >= 1) {
		u->tokens -= 1;
		u->taken++;
	} else {
		wait = (1 - u->tokens) / a->rate;
	}
	pthread_mutex_unlock(&u->lock);
	return wait;
}

unsigned account_take_untold(struct account *a)
{
	struct usage *u;
	uint64_t n;

	CHECK_OBJ(a, ACCOUNT_MAGIC);
	if (a->rate <= 0)
		return 0;
	u = a->u;
	pthread_mutex_lock(&u->lock);
	n = u->taken - u->told;
	u->told = u->taken;
	pthread_mutex_unlock(&u->lock);
	return n > UINT_MAX ? UINT_MAX : (unsigned)n;
}

void account_spend(struct account *a, unsigned n, double now)
{
	struct usage *u;

	CHECK_OBJ(a, ACCOUNT_MAGIC);
	if (a->rate <= 0 || n == 0)
		return;
	u = a->u;
	pthread_mutex_lock(&u->lock);
	refill(a, u, now);
	/* Down to one bucket's worth of debt: requests another instance let
	 * through while this one could not know are paid back, never more. */
	u->tokens -= n;
	if (u->tokens < -a->burst)
		u->tokens = -a->burst;
	pthread_mutex_unlock(&u->lock);
}

void accounts_carry(struct accounts *now, const struct accounts *before)
{
	for (size_t i = 0; now != NULL && i < now->n; i++) {
		struct account *old = accounts_find(before, now->a[i]->name);

		if (old == NULL)
			continue;
		usage_unref(&now->a[i]->u);
		atomic_fetch_add(&old->u->refs, 1);
		now->a[i]->u = old->u;
	}
}

int account_same_secret(const struct account *a, const struct account *b)
{
	CHECK_OBJ(a, ACCOUNT_MAGIC);
	CHECK_OBJ(b, ACCOUNT_MAGIC);
	return strcmp(a->hash, b->hash) == 0;
}

/* ---- parsing ---- */

static int name_ok(const char *s, size_t n)
{
	if (n == 0 || n > ACCOUNTS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || strchr("._-@+", s[i]) != NULL))
			return 0;
	return 1;
}

static int printable(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

unsigned accounts_parse_scopes(const char *s)
{
	static const char *const names[] = { "read", "write", "admin" };
	unsigned mask = 0;

	while (*s != '\0') {
		size_t n = strcspn(s, ","), i;

		for (i = 0; i < 3; i++)
			if (strlen(names[i]) == n && strncmp(s, names[i], n) == 0)
				break;
		if (i == 3)
			return 0;
		mask |= 1u << i;
		s += n;
		if (*s == ',')
			s++;
	}
	return mask;
}

void accounts_scopes_text(unsigned scopes, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s%s%s%s%s", scopes & ACCOUNTS_READ ? "read" : "",
		 (scopes & ACCOUNTS_READ) && (scopes & (ACCOUNTS_WRITE | ACCOUNTS_ADMIN)) ? "," :
											    "",
		 scopes & ACCOUNTS_WRITE ? "write" : "",
		 (scopes & ACCOUNTS_WRITE) && (scopes & ACCOUNTS_ADMIN) ? "," : "",
		 scopes & ACCOUNTS_ADMIN ? "admin" : "");
}

/* "N/s", "N/m" or "N/h" (N a positive integer) into requests a second,
 * and N into *burst; "" is 0 (no limit).  -1 when malformed. */
static double parse_rate(const char *s, double *burst)
{
	char *end;
	unsigned long n;

	if (*s == '\0')
		return 0;
	errno = 0;
	n = strtoul(s, &end, 10);
	if (errno != 0 || end == s || n == 0 || n > 1000000 || end[0] != '/' || end[1] == '\0' ||
	    end[2] != '\0')
		return -1;
	*burst = (double)n;
	switch (end[1]) {
	case 's':
		return (double)n;
	case 'm':
		return (double)n / 60;
	case 'h':
		return (double)n / 3600;
	}
	return -1;
}

/* The comma list of prefixes into a->paths; why on error. */
static const char *parse_paths(struct account *a, const char *s)
{
	while (*s != '\0') {
		size_t n = strcspn(s, ",");

		if (s[0] != '/' || n < 2)
			return "each path prefix starts with '/' and names something";
		if (memchr(s, '?', n) != NULL || memchr(s, '#', n) != NULL)
			return "a path prefix has no query or fragment";
		if (a->npaths == MAX_PATHS)
			return "at most 16 path prefixes";
		while (n > 1 && s[n - 1] == '/')
			n--;
		if ((a->paths[a->npaths] = strndup(s, n)) == NULL)
			return "out of memory";
		a->npaths++;
		s += strcspn(s, ",");
		if (*s == ',')
			s++;
	}
	return NULL;
}

/*
 * The cost a hash asks of every check of a secret is in the hash itself,
 * and yescrypt's memory or bcrypt's rounds can be set so high that one
 * check takes gigabytes or hours (fuzz_accounts found the first).  So the
 * costs are bounded: yescrypt and scrypt settings are those libxcrypt makes
 * itself for counts up to MAX_COUNT (128 MiB of memory), bcrypt at most
 * 2^14 rounds, SHA-crypt and the like at most 1,000,000.
 */
#define MAX_COUNT 8
#define MAX_BCRYPT 14
#define MAX_ROUNDS 1000000UL

static char known[3][MAX_COUNT + 1][16]; /* $y$, $gy$ params; $7$ settings */
static pthread_once_t known_once = PTHREAD_ONCE_INIT;

static void make_known(void)
{
	static const char *const prefixes[3] = { "$y$", "$gy$", "$7$" };
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];

	for (int k = 0; k < 3; k++)
		for (int c = 1; c <= MAX_COUNT; c++) {
			size_t n = strlen(prefixes[k]), len;

			if (crypt_gensalt_rn(prefixes[k], c, NULL, 0, salt, sizeof(salt)) == NULL)
				continue;
			/* yescrypt: the params up to the next '$'; scrypt: N, r and p,
			 * 11 characters. */
			len = k < 2 ? strcspn(salt + n, "$") : 11;
			if (len < sizeof(known[k][c]) && strlen(salt + n) >= len)
				memcpy(known[k][c], salt + n, len);
		}
}

static int known_params(int k, const char *p, size_t len)
{
	for (int c = 1; c <= MAX_COUNT; c++)
		if (known[k][c][0] != '\0' && strlen(known[k][c]) == len &&
		    memcmp(known[k][c], p, len) == 0)
			return 1;
	return 0;
}

/* The number after prefix at s (up to a '$'), or ULONG_MAX when s has
 * prefix but no sane number after it; 0 when s does not start with prefix. */
static unsigned long number_after(const char *s, const char *prefix)
{
	size_t n = strlen(prefix);
	unsigned long v = 0;

	if (strncmp(s, prefix, n) != 0)
		return 0;
	for (s += n; *s >= '0' && *s <= '9'; s++) {
		if (v > MAX_ROUNDS)
			return ULONG_MAX;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	return *s == '$' || *s == ',' ? v : ULONG_MAX;
}

static int cost_ok(const char *hash)
{
	pthread_once(&known_once, make_known);
	if (strncmp(hash, "$y$", 3) == 0)
		return known_params(0, hash + 3, strcspn(hash + 3, "$"));
	if (strncmp(hash, "$gy$", 4) == 0)
		return known_params(1, hash + 4, strcspn(hash + 4, "$"));
	if (strncmp(hash, "$7$", 3) == 0)
		return strlen(hash + 3) >= 11 && known_params(2, hash + 3, 11);
	if (hash[0] == '$' && hash[1] == '2' && hash[2] != '\0' && hash[3] == '$')
		return number_after(hash + 4, "") <= MAX_BCRYPT;
	if (strncmp(hash, "$5$rounds=", 10) == 0 || strncmp(hash, "$6$rounds=", 10) == 0)
		return number_after(hash, hash[1] == '5' ? "$5$rounds=" : "$6$rounds=") <=
		       MAX_ROUNDS;
	if (strncmp(hash, "$sha1$", 6) == 0)
		return number_after(hash, "$sha1$") <= MAX_ROUNDS;
	if (strncmp(hash, "$md5,rounds=", 12) == 0)
		return number_after(hash, "$md5,rounds=") <= MAX_ROUNDS;
	return 1; /* the rest have a fixed, small cost */
}

/*
 * Whether hash is a whole hash this libxcrypt verifies: a known, enabled
 * method (crypt_checksalt looks at the settings alone), and hashing with
 * it gives a string as long as the hash, so a cut or made-up hash is
 * caught here and not at every failed login.  Costs one hash.
 */
static int hash_ok(const char *hash)
{
	int v = crypt_checksalt(hash), ok;
	struct crypt_data *cd;
	const char *h;

	/* Legacy and cheap methods still verify; a disabled or unknown one
	 * never would, and a line nobody can log in with is a mistake. */
	if (hash[0] == '\0' ||
	    (v != CRYPT_SALT_OK && v != CRYPT_SALT_METHOD_LEGACY && v != CRYPT_SALT_TOO_CHEAP))
		return 0;
	if ((cd = calloc(1, sizeof(*cd))) == NULL)
		return 0;
	h = crypt_rn("", hash, cd, sizeof(*cd));
	ok = h != NULL && h[0] != '*' && strlen(h) == strlen(hash);
	free(cd);
	return ok;
}

/* One line (no newline) into an account; why on error.  Fields split at
 * the first six ':', the comment keeps any further ones. */
static const char *parse_line(char *line, struct account **out)
{
	char *f[7];
	struct account *a;
	const char *why = NULL;
	int i;

	f[0] = line;
	for (i = 1; i < 7; i++) {
		char *c = strchr(f[i - 1], ':');

		if (c == NULL)
			return "expected NAME:HASH:SCOPES:PATHS:RATE:CERT:COMMENT (seven fields)";
		*c = '\0';
		f[i] = c + 1;
	}
	if (!name_ok(f[0], strlen(f[0])))
		return "the name (client id) must be 1-64 letters, digits or . _ - @ +";
	/* The cost first: checking a hash means running it. */
	if (!cost_ok(f[1]))
		return "the secret hash asks too much of every login (yescrypt over 128 MiB, "
		       "bcrypt over 2^14, or over 1,000,000 rounds); make one with kaleidod "
		       "--hash-secret";
	if (!hash_ok(f[1]))
		return "the secret hash is not a crypt(5) hash this libxcrypt verifies "
		       "(make one with kaleidod --hash-secret)";
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return "out of memory";
	INIT_OBJ(a, ACCOUNT_MAGIC);
	atomic_init(&a->refs, 1);
	if ((a->u = usage_new()) == NULL)
		why = "out of memory";
	else if ((a->scopes = accounts_parse_scopes(f[2])) == 0)
		why = "scopes must be a comma list of read, write and admin";
	else if ((why = parse_paths(a, f[3])) != NULL)
		;
	else if ((a->rate = parse_rate(f[4], &a->burst)) < 0)
		why = "the rate must be empty or N/s, N/m or N/h";
	else if (!printable(f[5]))
		why = "the certificate subject must be printable text";
	else if ((a->name = strdup(f[0])) == NULL || (a->hash = strdup(f[1])) == NULL ||
		 (a->paths_text = strdup(f[3])) == NULL || (a->rate_text = strdup(f[4])) == NULL ||
		 (f[5][0] != '\0' && (a->cert = strdup(f[5])) == NULL) ||
		 (f[6][0] != '\0' && (a->comment = strdup(f[6])) == NULL))
		why = "out of memory";
	if (why != NULL) {
		account_free(a);
		return why;
	}
	*out = a;
	return NULL;
}

static int by_name(const void *x, const void *y)
{
	const struct account *const *a = x, *const *b = y;

	return strcmp((*a)->name, (*b)->name);
}

/* Parses the whole text (NUL-terminated, modified) into a set. */
static int parse_text(char *text, const char *path, struct accounts **out, char *err, size_t errlen)
{
	struct accounts *as = calloc(1, sizeof(*as));
	size_t cap = 0, lineno = 0;
	char *line = text, *next;

	if (as == NULL) {
		errbuf_set(err, errlen, "out of memory");
		return -1;
	}
	for (; line != NULL && *line != '\0'; line = next) {
		struct account *a = NULL;
		const char *why;

		lineno++;
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (line[0] == '#' || line[strspn(line, " \t\r")] == '\0')
			continue;
		line[strcspn(line, "\r")] = '\0';
		if ((why = parse_line(line, &a)) != NULL) {
			errbuf_set(err, errlen, "%s:%zu: %s", path, lineno, why);
			goto fail;
		}
		if (as->n == cap) {
			struct account **g = realloc(as->a, (cap ? cap * 2 : 16) * sizeof(*g));

			if (g == NULL) {
				account_unref(&a);
				errbuf_set(err, errlen, "out of memory");
				goto fail;
			}
			as->a = g;
			cap = cap ? cap * 2 : 16;
		}
		as->a[as->n++] = a;
	}
	/* Sorted, for accounts_find(); twins are then neighbours. */
	if (as->n > 1)
		qsort(as->a, as->n, sizeof(*as->a), by_name);
	for (size_t i = 1; i < as->n; i++)
		if (strcmp(as->a[i - 1]->name, as->a[i]->name) == 0) {
			errbuf_set(err, errlen, "%s: account '%s' appears twice", path,
				   as->a[i]->name);
			goto fail;
		}
	*out = as;
	return 0;
fail:
	accounts_free(&as);
	return -1;
}

/* Reads an open file whole; malloc'd, NUL-terminated. */
static char *read_all(int fd, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1), *g;
	ssize_t r;

	while (buf != NULL) {
		if (n == cap) {
			if (cap >= 64 * 1024 * 1024 || (g = realloc(buf, cap * 2 + 1)) == NULL)
				break;
			buf = g;
			cap *= 2;
		}
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		if (r == 0) {
			buf[n] = '\0';
			*len = n;
			return buf;
		}
		n += (size_t)r;
	}
	free(buf);
	return NULL;
}

int accounts_load(const char *path, struct accounts **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;
	size_t len;
	char *text;

	*out = NULL;
	if (fd < 0) {
		errbuf_set(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	/* A command editing the file holds LOCK_EX while it writes. */
	while (flock(fd, LOCK_SH) < 0 && errno == EINTR)
		;
	text = read_all(fd, &len);
	close(fd);
	if (text == NULL) {
		errbuf_set(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	if (memchr(text, '\0', len) != NULL) {
		errbuf_set(err, errlen, "%s: not a text file (a NUL byte)", path);
		free(text);
		return -1;
	}
	rc = parse_text(text, path, out, err, errlen);
	explicit_bzero(text, len);
	free(text);
	return rc;
}

void accounts_free(struct accounts **asp)
{
	struct accounts *as = *asp;

	if (as == NULL)
		return;
	*asp = NULL;
	for (size_t i = 0; i < as->n; i++)
		account_unref(&as->a[i]);
	free(as->a);
	free(as);
}

size_t accounts_count(const struct accounts *as)
{
	return as != NULL ? as->n : 0;
}

struct account *accounts_at(const struct accounts *as, size_t i)
{
	ASSERT(i < as->n);
	return as->a[i];
}

struct account *accounts_find(const struct accounts *as, const char *name)
{
	size_t lo = 0, hi;

	if (as == NULL)
		return NULL;
	hi = as->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(as->a[mid]->name, name);

		if (c == 0)
			return as->a[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* ---- verification ---- */

static void make_dummy(void)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));

	if (cd != NULL && crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) != NULL) {
		const char *h = crypt_rn("an unknown account's secret", salt, cd, sizeof(*cd));

		if (h != NULL && h[0] != '*')
			dummy_hash = strdup(h);
	}
	free(cd);
}

/* Equal strings, in time that depends on their lengths alone. */
static int same(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), n = la < lb ? la : lb;
	unsigned char d = la != lb;

	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

int account_verify(const struct account *a, const char *secret)
{
	struct crypt_data *cd;
	const char *setting, *h;
	int ok;

	CHECK_OBJ_ORNULL(a, ACCOUNT_MAGIC);
	pthread_once(&dummy_once, make_dummy);
	setting = a != NULL ? a->hash : dummy_hash;
	if (setting == NULL)
		return 0;
	if ((cd = calloc(1, sizeof(*cd))) == NULL)
		return -1;
	h = crypt_rn(secret, setting, cd, sizeof(*cd));
	/* A failure is "*0" or "*1", never equal to a stored hash. */
	ok = a != NULL && h != NULL && h[0] != '*' && same(h, a->hash);
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ok;
}

/* ---- authorization ---- */

static int is_write(const char *m)
{
	return strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0;
}

static int under(const char *prefix, const char *path, size_t pathlen)
{
	size_t n = strlen(prefix);

	return pathlen >= n && memcmp(path, prefix, n) == 0 && (pathlen == n || path[n] == '/');
}

enum accounts_verdict account_allows(const struct account *a, const char *method, const char *path,
				     size_t pathlen, int admin)
{
	int i;

	CHECK_OBJ(a, ACCOUNT_MAGIC);
	if (admin)
		return a->scopes & ACCOUNTS_ADMIN ? ACCOUNTS_ALLOWED : ACCOUNTS_NEEDS_ADMIN;
	if (is_write(method) ? !(a->scopes & ACCOUNTS_WRITE) :
			       !(a->scopes & (ACCOUNTS_READ | ACCOUNTS_WRITE)))
		return ACCOUNTS_NEEDS_WRITE;
	if (a->npaths == 0)
		return ACCOUNTS_ALLOWED;
	for (i = 0; i < a->npaths; i++)
		if (under(a->paths[i], path, pathlen))
			return ACCOUNTS_ALLOWED;
	return ACCOUNTS_OUTSIDE;
}

/* ---- hashing and editing ---- */

char *accounts_hash_secret(const char *secret, char *err, size_t errlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	const char *h = NULL;
	char *out = NULL;

	if (cd == NULL) {
		errbuf_set(err, errlen, "out of memory");
		return NULL;
	}
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL ||
	    (h = crypt_rn(secret, salt, cd, sizeof(*cd))) == NULL || h[0] == '*')
		errbuf_set(err, errlen, "libxcrypt cannot make a yescrypt hash: %s",
			   strerror(errno ? errno : EINVAL));
	else if ((out = strdup(h)) == NULL)
		errbuf_set(err, errlen, "out of memory");
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return out;
}

/*
 * Opens path and takes LOCK_EX on the file that path names once locked
 * (another command may have replaced it meanwhile).  create: make it
 * (0600) if missing.  The fd, or -1 with why in err.
 */
static int lock_file(const char *path, int create, char *err, size_t errlen)
{
	for (;;) {
		struct stat a, b;
		int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);

		if (fd < 0) {
			errbuf_set(err, errlen, "%s: %s", path, strerror(errno));
			return -1;
		}
		while (flock(fd, LOCK_EX) < 0 && errno == EINTR)
			;
		if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
		    a.st_dev == b.st_dev)
			return fd;
		close(fd);
	}
}

/* Replaces path by text, through a file beside it and rename(2), with
 * the old file's mode.  0, or -1 with why in err. */
static int replace_file(const char *path, int oldfd, const char *text, size_t len, char *err,
			size_t errlen)
{
	char tmp[PATH_MAX];
	struct stat st;
	size_t off = 0;
	int fd;

	if (snprintf(tmp, sizeof(tmp), "%s.new", path) >= (int)sizeof(tmp)) {
		errbuf_set(err, errlen, "%s: path too long", path);
		return -1;
	}
	if (fstat(oldfd, &st) < 0 ||
	    (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777)) < 0) {
		errbuf_set(err, errlen, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	/* The owner stays (a root command editing the daemon's file). */
	if (fchown(fd, st.st_uid, st.st_gid) < 0 && geteuid() == 0)
		goto fail;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			goto fail;
		off += (size_t)w;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	if (rename(tmp, path) < 0) {
		fd = -1;
		goto fail;
	}
	return 0;
fail:
	errbuf_set(err, errlen, "%s: %s", tmp, strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return -1;
}

/* The file's text and the set it holds, under the caller's lock. */
static char *read_locked(int fd, const char *path, struct accounts **as, size_t *len, char *err,
			 size_t errlen)
{
	char *text = read_all(fd, len), *copy;

	if (text == NULL || (copy = strdup(text)) == NULL) {
		errbuf_set(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		free(text);
		return NULL;
	}
	if (parse_text(copy, path, as, err, errlen) < 0) {
		secret_free(&copy);
		free(text);
		return NULL;
	}
	secret_free(&copy);
	return text;
}

int accounts_file_add(const char *path, const char *name, const char *hash, const char *scopes,
		      const char *paths, const char *rate, const char *cert, const char *comment,
		      char *err, size_t errlen)
{
	struct accounts *as = NULL, *one = NULL;
	char *text, *line = NULL, *all = NULL;
	size_t len = 0;
	int fd, rc = -1, n;

	if (comment != NULL && strpbrk(comment, "\n\r") != NULL) {
		errbuf_set(err, errlen, "a comment is one line");
		return -1;
	}
	if (cert != NULL && strchr(cert, ':') != NULL) {
		errbuf_set(err, errlen, "a certificate subject holds no ':'");
		return -1;
	}
	n = asprintf(&line, "%s:%s:%s:%s:%s:%s:%s\n", name, hash, scopes, paths ? paths : "",
		     rate ? rate : "", cert ? cert : "", comment ? comment : "");
	if (n < 0) {
		errbuf_set(err, errlen, "out of memory");
		return -1;
	}
	/* The new line alone, through the loader's checks. */
	{
		char *copy = strdup(line);

		if (copy == NULL || parse_text(copy, "the new account", &one, err, errlen) < 0) {
			if (copy == NULL)
				errbuf_set(err, errlen, "out of memory");
			free(copy);
			goto out;
		}
		free(copy);
	}
	if ((fd = lock_file(path, 1, err, errlen)) < 0)
		goto out;
	if ((text = read_locked(fd, path, &as, &len, err, errlen)) != NULL) {
		if (accounts_find(as, name) != NULL)
			errbuf_set(err, errlen, "%s: account '%s' exists already (remove it first)",
				   path, name);
		else if (asprintf(&all, "%s%s%s", text,
				  len > 0 && text[len - 1] != '\n' ? "\n" : "", line) < 0)
			errbuf_set(err, errlen, "out of memory");
		else
			rc = replace_file(path, fd, all, strlen(all), err, errlen);
		explicit_bzero(text, len);
		free(text);
	}
	close(fd);
out:
	accounts_free(&as);
	accounts_free(&one);
	free(line);
	free(all);
	return rc;
}

int accounts_file_remove(const char *path, const char *name, char *err, size_t errlen)
{
	struct accounts *as = NULL;
	size_t len = 0, nlen = strlen(name);
	char *text, *p, *out;
	int fd, rc = -1, found = 0;

	if ((fd = lock_file(path, 0, err, errlen)) < 0)
		return -1;
	if ((text = read_locked(fd, path, &as, &len, err, errlen)) == NULL)
		goto done;
	if ((out = malloc(len + 1)) == NULL) {
		errbuf_set(err, errlen, "out of memory");
		goto free_text;
	}
	out[0] = '\0';
	/* Every line but the account's, comments and blank lines kept. */
	for (p = text; *p != '\0';) {
		size_t l = strcspn(p, "\n") + (p[strcspn(p, "\n")] == '\n');

		if (p[0] != '#' && strncmp(p, name, nlen) == 0 && p[nlen] == ':')
			found = 1;
		else
			strncat(out, p, l);
		p += l;
	}
	if (!found)
		errbuf_set(err, errlen, "%s: no account '%s'", path, name);
	else
		rc = replace_file(path, fd, out, strlen(out), err, errlen);
	explicit_bzero(out, len + 1);
	free(out);
free_text:
	explicit_bzero(text, len);
	free(text);
done:
	close(fd);
	accounts_free(&as);
	return rc;
}
