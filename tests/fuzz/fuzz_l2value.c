/*
 * fuzz_l2value: a value read from Redis by the shared cache
 * (l2v_decode(), which daemon/l2.c hands Redis's bytes to).  Redis is
 * another program's memory: anyone who can write there writes this input.
 *
 * Input: the value, handed over as exactly its bytes.
 *
 * Invariants:
 *  - what decodes is a well-formed entry (status 100..999, a body no
 *    larger than the bound, its gzip copy inflating to the body);
 *  - its generations are at most 64 bytes, as l2v_encode() writes them;
 *  - written back with l2v_encode() under the same generations, it
 *    decodes to the same answer (status, times, headers, body), so a
 *    value never means two things.
 */
#include "entry.h"
#include "fuzz.h"
#include "gz.h"
#include "l2value.h"

#define MAX_BODY (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *v = fuzz_bytes(data, size), gens[2][80];
	struct entry *e = l2v_decode(v, size, MAX_BODY, "GET\n/p?", 1, "/p"), *back;
	size_t blen, zlen, hlen, hlen2, blen2, len;
	const char *body, *h, *p = v, *bar;
	const void *gz;
	void *inflated;
	char *again;

	if (e == NULL) {
		free(v);
		return 0;
	}
	body = entry_body(e, &blen);
	gz = entry_gzip(e, &zlen);
	FUZZ_CHECK(entry_status(e) >= 100 && entry_status(e) <= 999, "status %ld", entry_status(e));
	FUZZ_CHECK(blen <= MAX_BODY, "a body of %zu bytes", blen);
	if (gz != NULL) {
		FUZZ_CHECK(gz_decompress(gz, zlen, blen, &inflated) == 0 &&
				   memcmp(inflated, body, blen) == 0,
			   "the gzip copy is not the body");
		free(inflated);
	}
	/* the generations, as the value had them */
	for (int i = 0; i < 2; i++) {
		bar = memchr(p, '|', size - (size_t)(p - v));
		FUZZ_CHECK(bar != NULL && bar - p <= 64, "a generation longer than 64 bytes taken");
		memcpy(gens[i], p, (size_t)(bar - p));
		gens[i][bar - p] = '\0';
		p = bar + 1;
	}
	again = l2v_encode(gens[0], gens[1], e, SIZE_MAX, &len);
	FUZZ_CHECK(again != NULL, "a decoded value cannot be written back");
	{
		back = l2v_decode(again, len, MAX_BODY, "GET\n/p?", 1, "/p");
		FUZZ_CHECK(back != NULL, "what decoded does not decode once written back");
		h = entry_headers_text(e, &hlen);
		FUZZ_CHECK(entry_status(back) == entry_status(e) &&
				   entry_stored_at(back) == entry_stored_at(e) &&
				   entry_expires_at(back) == entry_expires_at(e),
			   "status or times changed on the way back");
		FUZZ_CHECK(hlen == (entry_headers_text(back, &hlen2), hlen2) &&
				   memcmp(h, entry_headers_text(back, &hlen2), hlen) == 0,
			   "headers changed on the way back");
		FUZZ_CHECK(blen == (entry_body(back, &blen2), blen2) &&
				   memcmp(body, entry_body(back, &blen2), blen) == 0,
			   "body changed on the way back");
		entry_unref(&back);
		free(again);
	}
	entry_unref(&e);
	free(v);
	return 0;
}
