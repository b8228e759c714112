/*
 * fuzz_config: the configuration file, through config_load_file() (our line
 * reader, inih, every key's parser and validator), config_finish() (the
 * cross-key rules and client_secret_file) and config_print().
 *
 * Input: an INI file.  A line "#secret" (a comment to the INI parser) ends
 * it; what follows is the content of the client_secret_file, which the
 * harness points at it.  Both live in memory files (memfd), so nothing is
 * written to disk.
 *
 * Invariants:
 *  - a file that loads has no line with an inline comment (';' after a
 *    blank) outside comments and section lines: config.c refuses those
 *    rather than let inih cut the value short;
 *  - a failure says which file (every message starts with its path);
 *  - a secret read from client_secret_file is the file's bytes less one
 *    trailing LF (and then CR), without control characters;
 *  - config_print() masks the secret: with another secret it prints the
 *    same text;
 *  - config_print()'s output loads back into the same configuration (the
 *    printed text is a fixpoint), unless a line grew past the reader's limit.
 */
#include <ctype.h>
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

#define SECRET_MARK "\n#secret\n"

struct memfile {
	int fd;
	char path[64];
};

static struct memfile conf_file, secret_file;

static void memfile_open(struct memfile *m, const char *name)
{
	char tmpl[] = "/tmp/kd-fuzz-config.XXXXXX";
	FILE *fp;

	m->fd = memfd_create(name, MFD_CLOEXEC);
	if (m->fd >= 0) {
		snprintf(m->path, sizeof(m->path), "/proc/self/fd/%d", m->fd);
		/* /proc may be missing in a sandbox: then a plain temporary file */
		if ((fp = fopen(m->path, "r")) != NULL) {
			fclose(fp);
			return;
		}
		close(m->fd);
	}
	m->fd = mkstemp(tmpl);
	if (m->fd < 0) {
		perror("fuzz_config: mkstemp");
		abort();
	}
	snprintf(m->path, sizeof(m->path), "%s", tmpl);
}

static void memfile_put(struct memfile *m, const void *p, size_t n)
{
	const char *c = p;
	off_t off = 0;

	if (ftruncate(m->fd, 0) < 0)
		abort();
	while ((size_t)off < n) {
		ssize_t w = pwrite(m->fd, c + off, n - (size_t)off, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			abort();
		off += w;
	}
}

static void cleanup(void)
{
	/* unlinking a /proc path fails harmlessly */
	if (strncmp(conf_file.path, "/tmp/", 5) == 0)
		unlink(conf_file.path);
	if (strncmp(secret_file.path, "/tmp/", 5) == 0)
		unlink(secret_file.path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	memfile_open(&conf_file, "kd-fuzz-config");
	memfile_open(&secret_file, "kd-fuzz-secret");
	atexit(cleanup);
	/* config_finish() picks the default cache file from these */
	setenv("STATE_DIRECTORY", "/nonexistent/kd-fuzz", 1);
	return 0;
}

/*
 * Whether the file, as our line reader and inih see it, holds an inline
 * comment (';' after a blank) on a line that is neither a comment nor a
 * section heading.  Lines end at LF; a NUL ends what either reader sees of a
 * line; the first line may start with a UTF-8 BOM, which inih skips.
 */
static int has_inline_comment(const char *text, size_t len)
{
	const char *p = text, *end = text + len;
	int first = 1;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl != NULL ? nl : end;
		const char *nul = memchr(p, '\0', (size_t)(le - p));
		const char *s = p;

		if (nul != NULL)
			le = nul;
		if (first && le - s >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
			s += 3;
		first = 0;
		while (s < le && isspace((unsigned char)*s))
			s++;
		if (s < le && *s != ';' && *s != '#' && *s != '[') {
			for (const char *q = s + 1; q < le; q++)
				if (*q == ';' && isspace((unsigned char)q[-1]))
					return 1;
		}
		p = nl != NULL ? nl + 1 : end;
	}
	return 0;
}

static char *print_config(const struct config *cfg)
{
	char *text = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&text, &len);

	if (fp == NULL)
		abort();
	config_print(cfg, fp);
	if (fclose(fp) != 0 || text == NULL)
		abort();
	return text;
}

/* The printed text without its "client_secret = " line, which shows the
 * mask (or "(not set)") and cannot load back as the secret it stands for. */
static void drop_secret_line(char *text)
{
	char *p = text;

	while (*p != '\0') {
		char *nl = strchr(p, '\n');
		char *next = nl != NULL ? nl + 1 : p + strlen(p);

		if (strncmp(p, "client_secret = ", 16) == 0) {
			memmove(p, next, strlen(next) + 1);
			continue;
		}
		p = next;
	}
}

/* The secret client_secret_file should yield: one LF, then one CR, off the end. */
static void expected_secret(const char *p, size_t n, const char **out, size_t *outlen)
{
	if (n > 0 && p[n - 1] == '\n')
		n--;
	if (n > 0 && p[n - 1] == '\r')
		n--;
	*out = p;
	*outlen = n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data, *mark;
	size_t conf_len = size, secret_len = 0;
	const char *secret = NULL;
	struct config *cfg = NULL, *again = NULL;
	char err[1024], *printed = NULL, *reprinted = NULL;
	int rc;

	mark = memmem(text, size, SECRET_MARK, strlen(SECRET_MARK));
	if (mark != NULL) {
		conf_len = (size_t)(mark - text) + 1; /* keep the LF */
		secret = mark + strlen(SECRET_MARK);
		secret_len = size - (size_t)(secret - text);
	}
	memfile_put(&conf_file, text, conf_len);

	if ((cfg = config_new()) == NULL)
		abort();
	err[0] = '\0';
	rc = config_load_file(cfg, conf_file.path, err, sizeof(err));
	if (rc < 0) {
		FUZZ_CHECK(strncmp(err, conf_file.path, strlen(conf_file.path)) == 0,
			   "error without the file's name: \"%s\"", err);
		goto out;
	}
	FUZZ_CHECK(!has_inline_comment(text, conf_len),
		   "a value with an inline comment (' ;') loaded; inih cut it short");

	/* client_secret_file as the input's tail, never a path of the input's */
	free(cfg->client_secret_file);
	cfg->client_secret_file = NULL;
	if (secret != NULL) {
		memfile_put(&secret_file, secret, secret_len);
		if ((cfg->client_secret_file = strdup(secret_file.path)) == NULL)
			abort();
	}
	err[0] = '\0';
	if (config_finish(cfg, err, sizeof(err)) == 0) {
		FUZZ_CHECK(cfg->cache_file != NULL && cfg->listen != NULL, "finish left a gap");
		FUZZ_CHECK(cfg->auth_retry_min > 0 && cfg->auth_retry_min <= cfg->auth_retry_max,
			   "retry %u..%u", cfg->auth_retry_min, cfg->auth_retry_max);
		for (int i = 0; i < cfg->nfamilies; i++)
			FUZZ_CHECK(cfg->families[i].npaths > 0, "family %s without paths",
				   cfg->families[i].name);
		if (cfg->client_secret_source != NULL &&
		    strncmp(cfg->client_secret_source, "client_secret_file ", 19) == 0) {
			const char *want;
			size_t wlen;

			expected_secret(secret, secret_len, &want, &wlen);
			FUZZ_CHECK(cfg->client_secret != NULL &&
					   strlen(cfg->client_secret) == wlen &&
					   memcmp(cfg->client_secret, want, wlen) == 0,
				   "client_secret_file read as something else");
			for (const char *c = cfg->client_secret; *c != '\0'; c++)
				FUZZ_CHECK((unsigned char)*c >= 0x20 && *c != 0x7f,
					   "control character in the secret");
		}
	} else {
		FUZZ_CHECK(err[0] != '\0', "config_finish failed without a message");
	}

	printed = print_config(cfg);
	if (cfg->client_secret != NULL) {
		/* masked: another secret prints the same */
		char *held = cfg->client_secret, other[] = "kd-fuzz-other-secret";
		char *masked;

		cfg->client_secret = other;
		masked = print_config(cfg);
		cfg->client_secret = held;
		FUZZ_CHECK(strcmp(printed, masked) == 0, "config_print shows the client secret");
		free(masked);
	}

	/* What --check-config prints loads back as the same configuration. */
	drop_secret_line(printed);
	memfile_put(&conf_file, printed, strlen(printed));
	if ((again = config_new()) == NULL)
		abort();
	err[0] = '\0';
	if (config_load_file(again, conf_file.path, err, sizeof(err)) < 0) {
		FUZZ_CHECK(strstr(err, "line too long") != NULL,
			   "config_print output does not load: %s\n--- output:\n%s", err, printed);
		goto out;
	}
	reprinted = print_config(again);
	drop_secret_line(reprinted);
	FUZZ_CHECK(
		strcmp(printed, reprinted) == 0,
		"config_print output loads as another configuration\n--- first:\n%s--- then:\n%s",
		printed, reprinted);
out:
	free(printed);
	free(reprinted);
	config_free(&cfg);
	config_free(&again);
	return 0;
}
