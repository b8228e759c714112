/* clock.h: the daemon's two clocks, in one place.
 *
 * Wall seconds date what the cache keeps (stored_at, expires_at, the file's
 * rows), because they must survive a restart and agree with the API's Date.
 * Everything that measures an interval (timeouts, waits, the request log's
 * duration) uses CLOCK_MONOTONIC directly, so a clock step cannot stretch it.
 */
#ifndef KD_CLOCK_H
#define KD_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Now, in seconds since the epoch. */
static inline int64_t clock_wall(void)
{
	return (int64_t)time(NULL);
}

#endif
