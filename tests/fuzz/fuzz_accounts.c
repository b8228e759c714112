/*
 * fuzz_accounts: the gateway's accounts file (accounts_load(): the line
 * split, names, hashes through libxcrypt, scopes, paths, rates), and the
 * masking of credentials in request targets (audit_mask_target()), which
 * the audit trail and the debug log use.
 *
 * Input: the accounts file, in a memory file (memfd); the same bytes up to
 * the first NUL are also a request target.
 *
 * Invariants:
 *  - a failure names the file (the message starts with its path);
 *  - a loaded set finds each of its accounts by name, and every account
 *    has at least one scope;
 *  - masking is idempotent, and a masked target has nothing left to mask.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "accounts.h"
#include "audit.h"
#include "fuzz.h"

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if ((fd = memfd_create("kd-fuzz-accounts", MFD_CLOEXEC)) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return 0;
}

static void put(const uint8_t *data, size_t size)
{
	size_t off = 0;

	if (ftruncate(fd, 0) < 0)
		abort();
	while (off < size) {
		ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			abort();
		off += (size_t)w;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct accounts *as = NULL;
	char err[512], *target, *masked, *again;

	put(data, size);
	if (accounts_load(path, &as, err, sizeof(err)) < 0) {
		FUZZ_CHECK(as == NULL, "a failed load left a set");
		FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0, "error without the file: %s",
			   err);
	} else {
		for (size_t i = 0; i < accounts_count(as); i++) {
			struct account *a = accounts_at(as, i);

			FUZZ_CHECK(accounts_find(as, account_name(a)) == a, "'%s' not found",
				   account_name(a));
			FUZZ_CHECK(account_scopes(a) != 0, "'%s' has no scope", account_name(a));
		}
		accounts_free(&as);
	}

	target = fuzz_cstr(data, size);
	masked = audit_mask_target(target);
	again = masked != NULL ? audit_mask_target(masked) : NULL;
	if (masked != NULL && again != NULL) {
		FUZZ_CHECK(strcmp(masked, again) == 0, "masking twice changed '%s' to '%s'", masked,
			   again);
		FUZZ_CHECK(!audit_has_credential(masked), "'%s' still has a credential", masked);
	}
	free(again);
	free(masked);
	free(target);
	return 0;
}
