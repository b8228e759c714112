/*
 * errbuf: the one way a module below the daemon layer says why it failed:
 * formatted into the caller's buffer (errors are returned, not printed).
 */
#ifndef KD_ERRBUF_H
#define KD_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Formats into err (errlen bytes, always terminated); nothing when err is
 * NULL or errlen 0. */
__attribute__((format(printf, 3, 4))) static inline void errbuf_set(char *err, size_t errlen,
								    const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

#endif
