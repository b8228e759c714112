/* clock.h: the daemon's two clocks, in one place.
 *
 * Wall seconds date what the cache keeps (stored_at, expires_at, the file's
 * rows), because they must survive a restart and agree with the API's Date.
 * Everything that measures an interval (timeouts, waits, the request log's
 * duration) uses CLOCK_MONOTONIC (clock_mono(), clock_mono_ms()), so a
 * clock step cannot stretch it.
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

/* The monotonic clock, in seconds (for deadlines and rates)... */
static inline double clock_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An absolute CLOCK_MONOTONIC time ms from now, for a
 * pthread_cond_timedwait() on a condition set to that clock. */
static inline void clock_mono_deadline(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* ...and in whole milliseconds (for poll timeouts and backoffs). */
static inline int64_t clock_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
