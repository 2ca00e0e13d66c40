/*
 * shape — token buckets, adaptive backoff, rule matching, warm-up days;
 * see shape.h.
 */
#include "engine/shape.h"

#include <fnmatch.h>
#include <math.h>

void sh_bucket_init(struct sh_bucket *b, double rate, double burst, double now)
{
	b->rate = rate > 0 ? rate : 0;
	b->burst = burst >= 1 ? burst : 1;
	b->tokens = b->burst;
	b->last = now;
}

static void refill(struct sh_bucket *b, double now)
{
	if (now > b->last) {
		b->tokens += (now - b->last) * b->rate;
		if (b->tokens > b->burst)
			b->tokens = b->burst;
	}
	b->last = now;
}

void sh_bucket_set(struct sh_bucket *b, double rate, double burst, double now)
{
	refill(b, now);
	b->rate = rate > 0 ? rate : 0;
	b->burst = burst >= 1 ? burst : 1;
	if (b->tokens > b->burst)
		b->tokens = b->burst;
}

bool sh_bucket_take(struct sh_bucket *b, double now)
{
	if (b->rate <= 0)
		return true;
	refill(b, now);
	if (b->tokens < 1)
		return false;
	b->tokens -= 1;
	return true;
}

double sh_bucket_wait(struct sh_bucket *b, double now)
{
	if (b->rate <= 0)
		return 0;
	refill(b, now);
	return b->tokens >= 1 ? 0 : (1 - b->tokens) / b->rate;
}

double sh_default_burst(double rate)
{
	return rate > 1 ? ceil(rate) : 1;
}

void sh_adapt_init(struct sh_adapt *a)
{
	a->factor = 1;
	a->last_match = a->last_down = a->last_up = -INFINITY;
	a->suspended_until = -INFINITY;
	a->matches = a->steps_down = 0;
}

int sh_adapt_hit(struct sh_adapt *a, const struct sh_policy *p,
	unsigned slow_pct, double suspend, double now)
{
	int r = SH_NONE;
	a->matches++;
	a->last_match = now;
	if (slow_pct && slow_pct < 100 && now - a->last_down >= p->cooldown &&
	    a->factor > p->floor) {
		a->factor *= slow_pct / 100.0;
		if (a->factor < p->floor)
			a->factor = p->floor;
		a->last_down = now;
		a->steps_down++;
		r |= SH_DOWN;
	}
	if (suspend > 0 && now + suspend > a->suspended_until) {
		a->suspended_until = now + suspend;
		r |= SH_SUSPEND;
	}
	return r;
}

double sh_adapt_next_tick(const struct sh_adapt *a, const struct sh_policy *p)
{
	if (a->factor >= 1)
		return INFINITY;
	double t = a->last_match + p->quiet;
	if (a->last_up + p->quiet > t)
		t = a->last_up + p->quiet;
	if (a->last_down + p->quiet > t)
		t = a->last_down + p->quiet;
	return t;
}

bool sh_adapt_tick(struct sh_adapt *a, const struct sh_policy *p, double now)
{
	if (a->factor >= 1 || now < sh_adapt_next_tick(a, p))
		return false;
	a->factor += p->step_up;
	if (a->factor > 1 - 1e-9)
		a->factor = 1;
	a->last_up = now;
	return true;
}

bool sh_suspended(const struct sh_adapt *a, double now)
{
	return now < a->suspended_until;
}

unsigned sh_scale_conn(unsigned max, double factor)
{
	double v = floor(max * factor + 0.5);
	return v < 1 ? 1 : (unsigned)v;
}

double sh_scale_rate(double rate, double factor)
{
	return rate > 0 ? rate * factor : 0;
}

bool sh_rule_match(const char *pattern, const char *reply)
{
	return reply && fnmatch(pattern, reply, FNM_CASEFOLD) == 0;
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int32_t days_from_civil(int y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int32_t)doe - 719468;
}

int32_t sh_day(time_t t)
{
	struct tm tm;
	localtime_r(&t, &tm);
	return days_from_civil(tm.tm_year + 1900, (unsigned)tm.tm_mon + 1,
		(unsigned)tm.tm_mday);
}

time_t sh_next_day(time_t t)
{
	struct tm tm;
	localtime_r(&t, &tm);
	tm.tm_mday += 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_isdst = -1;
	return mktime(&tm);
}

uint32_t sh_warmup_cap(const uint32_t *caps, size_t n, int32_t first_day,
	int32_t today)
{
	int64_t i = (int64_t)today - first_day;
	if (n == 0 || i >= (int64_t)n)
		return UINT32_MAX;
	return caps[i < 0 ? 0 : i];
}
