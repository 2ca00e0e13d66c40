/*
 * shape — the traffic-shaping arithmetic of a destination site (prefix
 * sh_): token buckets for message and connection rates, the adaptive
 * backoff state (step down on a throttling reply, suspend, step back up
 * after a quiet period), backoff rule matching and warm-up days.
 *
 * Pure functions of their arguments: time is always passed in (seconds,
 * any monotonic origin; warm-up days take epoch seconds), so the unit tests
 * drive every transition with an injected clock. engine/delivery owns one
 * set of these per site and per source address; docs/shaping.md explains the
 * model with a worked example.
 */
#ifndef CARTEIRO_SHAPE_H
#define CARTEIRO_SHAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* A token bucket: `rate` tokens per second up to `burst`; rate 0 = no limit. */
struct sh_bucket {
	double rate;
	double burst;
	double tokens;
	double last;
};

/* Start full (a new site may send `burst` at once). */
void sh_bucket_init(struct sh_bucket *b, double rate, double burst, double now);
/* New rate/burst (reload, step down/up); the tokens held are kept, capped. */
void sh_bucket_set(struct sh_bucket *b, double rate, double burst, double now);
/* Take one token if there is one. */
bool sh_bucket_take(struct sh_bucket *b, double now);
/* Seconds until a token is available (0 = now). */
double sh_bucket_wait(struct sh_bucket *b, double now);
/* The default burst of a rate: one second's worth, at least 1. */
double sh_default_burst(double rate);

/* How a site adapts. Durations in seconds, shares in (0, 1]. */
struct sh_policy {
	double quiet;       /* no matching reply this long: step up once */
	double cooldown;    /* at most one step down per this */
	double step_up;     /* share of the full limits given back per step */
	double floor;       /* never below this share */
};

struct sh_adapt {
	double factor;            /* 1 = the configured limits */
	double last_match;        /* last matching reply (-inf = never) */
	double last_down, last_up;
	double suspended_until;
	uint64_t matches;         /* replies that matched a rule */
	uint64_t steps_down;
};

enum { SH_NONE = 0, SH_DOWN = 1, SH_SUSPEND = 2 };

void sh_adapt_init(struct sh_adapt *a);
/* A reply matched a rule that slows to slow_pct (0 = no) and suspends for
 * suspend seconds (0 = no). Returns SH_DOWN and/or SH_SUSPEND. */
int sh_adapt_hit(struct sh_adapt *a, const struct sh_policy *p,
	unsigned slow_pct, double suspend, double now);
/* Step up if quiet long enough; true when it did. */
bool sh_adapt_tick(struct sh_adapt *a, const struct sh_policy *p, double now);
/* When the next step up can happen (INFINITY when at full limits). */
double sh_adapt_next_tick(const struct sh_adapt *a, const struct sh_policy *p);
bool sh_suspended(const struct sh_adapt *a, double now);
/* Limits scaled by a factor: connections at least 1; a rate of 0
 * (unlimited) stays 0. */
unsigned sh_scale_conn(unsigned max, double factor);
double sh_scale_rate(double rate, double factor);

/* Does a reply ("421 4.7.0 Try again later") match a rule pattern
 * (fnmatch, case-insensitive)? */
bool sh_rule_match(const char *pattern, const char *reply);

/* Warm-up: the local calendar day of an epoch time (days since 1970-01-01
 * in local time), the epoch time the next local day starts, and the cap of
 * day `today` for a schedule that started on `first_day` (UINT32_MAX when
 * the schedule is over or empty). */
int32_t sh_day(time_t t);
time_t sh_next_day(time_t t);
uint32_t sh_warmup_cap(const uint32_t *caps, size_t n, int32_t first_day,
	int32_t today);

#endif
