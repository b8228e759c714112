/*
 * localtoken: the opaque tokens kaleidod hands to local clients.
 *
 * They come from getrandom(2) and have no relation to the upstream token,
 * which never leaves the daemon.
 */
#ifndef KD_LOCALTOKEN_H
#define KD_LOCALTOKEN_H

#include <stddef.h>

/* 32 random bytes as 43 base64url characters plus a prefix "kd_"; out must
 * hold LOCALTOKEN_LEN + 1 bytes.  0, or -1 when the kernel gave no randomness. */
#define LOCALTOKEN_LEN 46
int localtoken_new(char *out, size_t outlen);

#endif
