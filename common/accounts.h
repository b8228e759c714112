/*
 * accounts: the gateway's local accounts, from their own file.
 *
 * One account a line, like passwd(5):
 *
 *     NAME:HASH:SCOPES:PATHS:RATE:CERT:COMMENT
 *
 * NAME is the client id (letters, digits, . _ - @ +; at most 64); HASH a
 * crypt(5) hash that libxcrypt verifies (yescrypt "$y$" for new ones);
 * SCOPES a comma list of read, write and admin; PATHS an optional comma
 * list of path prefixes that narrow the scopes; RATE an optional request
 * rate (N/s, N/m or N/h); CERT an optional client certificate subject DN
 * the account must present (over TLS with tls_client_ca; no ':' in it);
 * COMMENT the rest of the line (a person, an e-mail).  Blank lines and lines starting
 * with '#' are ignored.
 *
 * A loaded file is an immutable set; the daemon swaps in a new set on
 * reload.  Accounts are reference-counted, so tokens can keep theirs
 * while the set they came from is freed.  The file functions below edit
 * the file under an flock(2), by replacing it whole, so the daemon and a
 * second command never see half a file.
 */
#ifndef KD_ACCOUNTS_H
#define KD_ACCOUNTS_H

#include <stddef.h>
#include <stdint.h>

#define ACCOUNTS_NAME_MAX 64

enum accounts_scope {
	ACCOUNTS_READ = 1,  /* GET and HEAD */
	ACCOUNTS_WRITE = 2, /* the whole API */
	ACCOUNTS_ADMIN = 4, /* also /_kaleidod/purge, /stats and /metrics */
};

struct accounts;
struct account;

/* Reads the file; on an error, "FILE:LINE: why" in err and -1. */
int accounts_load(const char *path, struct accounts **out, char *err, size_t errlen);
void accounts_free(struct accounts **as);
size_t accounts_count(const struct accounts *as);
/* The i-th account by name, 0 <= i < accounts_count(). */
struct account *accounts_at(const struct accounts *as, size_t i);
/* The account named name, or NULL; not referenced (valid while as is). */
struct account *accounts_find(const struct accounts *as, const char *name);

struct account *account_ref(struct account *a);
void account_unref(struct account **a);
const char *account_name(const struct account *a);
const char *account_comment(const struct account *a); /* "" when none */
/* The client certificate subject the account must present, "" when none. */
const char *account_cert(const struct account *a);
unsigned account_scopes(const struct account *a);
/* The PATHS and RATE fields as the file has them ("" when none). */
const char *account_paths_text(const struct account *a);
const char *account_rate_text(const struct account *a);
/* Requests a second the account may make on average, 0 for no limit. */
double account_rate(const struct account *a);
/*
 * The account's rate limit, a token bucket of N (the N of its RATE) filled
 * at its rate: 0 when a request may go now (and takes a token), else the
 * seconds until one may.  Always 0 without a limit.
 */
double account_take(struct account *a, double now);
/* The tokens account_take() gave out since the last call (for the other
 * instances of a cluster, which spend them from their own buckets). */
unsigned account_take_untold(struct account *a);
/* n tokens another instance gave out: this bucket loses them too (down to
 * minus its size at most), so a cluster's instances share one rate. */
void account_spend(struct account *a, unsigned n, double now);

/* What an account did; kept across reloads for an account whose name stays. */
enum account_counter {
	ACCOUNT_REQUESTS = 0,   /* requests authenticated with its tokens */
	ACCOUNT_DENIED,         /* refused by scope or path */
	ACCOUNT_RATE_LIMITED,   /* refused by its rate limit */
	ACCOUNT_LOGINS,         /* tokens granted (logins and refreshes) */
	ACCOUNT_LOGIN_FAILURES, /* wrong secrets */
	ACCOUNT_NCOUNTERS
};
void account_count(struct account *a, enum account_counter c);
uint64_t account_counter(const struct account *a, enum account_counter c);
const char *account_counter_name(enum account_counter c); /* "requests", ... */
/* After a reload: each account of now that before has too takes over its
 * counters and rate bucket (shared, so a request still counting on the
 * old account loses nothing). */
void accounts_carry(struct accounts *now, const struct accounts *before);
/* Whether a and b have the same secret hash: a token of a stays valid for b. */
int account_same_secret(const struct account *a, const struct account *b);

/*
 * Whether secret is the account's (crypt_rn, then a comparison in
 * constant time).  a may be NULL (no such account): a hash is still
 * computed, so the answer takes as long and says nothing about which
 * names exist.  1 yes, 0 no, -1 no memory.  Slow by design (yescrypt):
 * not for a thread that serves clients.
 */
int account_verify(const struct account *a, const char *secret);

enum accounts_verdict {
	ACCOUNTS_ALLOWED = 0,
	ACCOUNTS_NEEDS_WRITE, /* a write by an account without write */
	ACCOUNTS_NEEDS_ADMIN, /* kaleidod's admin endpoints without admin */
	ACCOUNTS_OUTSIDE,     /* the path is outside the account's prefixes */
};

/* Whether the account may send method to path (the request target's path,
 * without the query).  admin: path is one of kaleidod's admin endpoints. */
enum accounts_verdict account_allows(const struct account *a, const char *method, const char *path,
				     size_t pathlen, int admin);

/* Parses "read,write" into a mask; 0 when a word is not a scope. */
unsigned accounts_parse_scopes(const char *s);
/* Writes the mask as "read,write,admin" (the words it has). */
void accounts_scopes_text(unsigned scopes, char *out, size_t outlen);

/* A crypt(5) hash of secret with a fresh yescrypt salt, malloc'd; NULL and
 * why in err when libxcrypt refuses. */
char *accounts_hash_secret(const char *secret, char *err, size_t errlen);

/* Appends an account (the file is made, mode 0600, if missing); scopes,
 * paths, rate and cert are checked as the loader would, an existing name
 * is refused.  paths, rate, cert and comment may be NULL or "".  0, or -1 with why in err. */
int accounts_file_add(const char *path, const char *name, const char *hash, const char *scopes,
		      const char *paths, const char *rate, const char *cert, const char *comment,
		      char *err, size_t errlen);
/* Removes the account's line.  0, or -1 with why (no such account). */
int accounts_file_remove(const char *path, const char *name, char *err, size_t errlen);

#endif
