/*
 * Unit tests of engine/shape: token buckets, adaptive backoff and warm-up
 * days, every transition driven by an injected clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>
#include <math.h>

#include "engine/shape.h"

/* Messages a bucket lets through when asked every `step` seconds over
 * [0, secs). */
static unsigned run_bucket(struct sh_bucket *b, double secs, double step)
{
	unsigned n = 0;
	for (double t = 0; t < secs; t += step)
		while (sh_bucket_take(b, t))
			n++;
	return n;
}

static void test_bucket_rate(void **state)
{
	(void)state;
	struct sh_bucket b;
	/* 100/s, burst 100: 100 at once, then 100 per second. */
	sh_bucket_init(&b, 100, 100, 0);
	unsigned n = run_bucket(&b, 60, 0.001);
	assert_true(n >= 6000 + 100 - 1 && n <= 6000 + 100);
	/* 2/min: one token every 30 s after the burst of 1. */
	sh_bucket_init(&b, 2.0 / 60, 1, 0);
	assert_true(sh_bucket_take(&b, 0));
	assert_false(sh_bucket_take(&b, 29.9));
	assert_true(fabs(sh_bucket_wait(&b, 29.9) - 0.1) < 1e-6);
	assert_true(sh_bucket_take(&b, 30));
	assert_false(sh_bucket_take(&b, 30));
	/* Unlimited. */
	sh_bucket_init(&b, 0, 1, 0);
	for (int i = 0; i < 1000; i++)
		assert_true(sh_bucket_take(&b, 0));
	assert_true(sh_bucket_wait(&b, 0) == 0);
}

static void test_bucket_set_keeps_tokens(void **state)
{
	(void)state;
	struct sh_bucket b;
	sh_bucket_init(&b, 10, 10, 0);
	for (int i = 0; i < 10; i++)
		assert_true(sh_bucket_take(&b, 0));
	assert_false(sh_bucket_take(&b, 0));
	/* Halving the rate does not hand out a new burst. */
	sh_bucket_set(&b, 5, 5, 0);
	assert_false(sh_bucket_take(&b, 0.1));
	assert_true(sh_bucket_take(&b, 0.2));
	/* A smaller burst caps what was saved. */
	sh_bucket_set(&b, 5, 2, 100);
	assert_true(sh_bucket_take(&b, 100));
	assert_true(sh_bucket_take(&b, 100));
	assert_false(sh_bucket_take(&b, 100));
	assert_true(sh_default_burst(0.1) == 1);
	assert_true(sh_default_burst(120) == 120);
}

static const struct sh_policy pol = { .quiet = 60, .cooldown = 10,
	.step_up = 0.25, .floor = 0.1 };

static void test_adapt_down_and_up(void **state)
{
	(void)state;
	struct sh_adapt a;
	sh_adapt_init(&a);
	assert_true(a.factor == 1);
	assert_true(isinf(sh_adapt_next_tick(&a, &pol)));
	/* First 421: half. */
	assert_int_equal(sh_adapt_hit(&a, &pol, 50, 0, 100), SH_DOWN);
	assert_true(a.factor == 0.5);
	assert_int_equal(sh_scale_conn(20, a.factor), 10);
	assert_true(sh_scale_rate(100, a.factor) == 50);
	assert_true(sh_scale_rate(0, a.factor) == 0);
	/* A burst within the cooldown is one signal. */
	for (int i = 1; i < 50; i++)
		assert_int_equal(sh_adapt_hit(&a, &pol, 50, 0, 100 + i * 0.1), SH_NONE);
	assert_true(a.factor == 0.5);
	assert_int_equal(a.matches, 50);
	/* After the cooldown, another step. */
	assert_int_equal(sh_adapt_hit(&a, &pol, 50, 0, 111), SH_DOWN);
	assert_true(a.factor == 0.25);
	/* Not below the floor. */
	sh_adapt_hit(&a, &pol, 50, 0, 122);
	assert_true(fabs(a.factor - 0.125) < 1e-9);
	assert_int_equal(sh_adapt_hit(&a, &pol, 50, 0, 133), SH_DOWN);
	assert_true(fabs(a.factor - 0.1) < 1e-9);
	assert_int_equal(sh_adapt_hit(&a, &pol, 50, 0, 144), SH_NONE);
	assert_int_equal(sh_scale_conn(4, a.factor), 1);
	/* Quiet: up by 25% of the full limits per quiet period. */
	assert_true(sh_adapt_next_tick(&a, &pol) == 144 + 60);
	assert_false(sh_adapt_tick(&a, &pol, 203));
	assert_true(sh_adapt_tick(&a, &pol, 204));
	assert_true(fabs(a.factor - 0.35) < 1e-9);
	assert_false(sh_adapt_tick(&a, &pol, 250));
	assert_true(sh_adapt_tick(&a, &pol, 264));
	assert_true(sh_adapt_tick(&a, &pol, 324));
	assert_true(sh_adapt_tick(&a, &pol, 384));
	assert_true(a.factor == 1);
	assert_false(sh_adapt_tick(&a, &pol, 1000));
}

static void test_adapt_suspend(void **state)
{
	(void)state;
	struct sh_adapt a;
	sh_adapt_init(&a);
	assert_false(sh_suspended(&a, 0));
	assert_int_equal(sh_adapt_hit(&a, &pol, 0, 300, 10), SH_SUSPEND);
	assert_true(a.factor == 1);
	assert_true(sh_suspended(&a, 309.9));
	assert_false(sh_suspended(&a, 310));
	/* A later match extends it, an earlier end does not shorten it. */
	assert_int_equal(sh_adapt_hit(&a, &pol, 50, 60, 20), SH_DOWN);
	assert_true(sh_suspended(&a, 300));
	assert_int_equal(sh_adapt_hit(&a, &pol, 0, 300, 100), SH_SUSPEND);
	assert_true(sh_suspended(&a, 399));
}

static void test_rules(void **state)
{
	(void)state;
	const char *gmail = "421 4.7.28 [203.0.113.9] Our system has detected an "
		"unusual rate of unsolicited mail originating from your IP address.";
	assert_true(sh_rule_match("*unusual rate*", gmail));
	assert_true(sh_rule_match("4?? 4.7.28 *", gmail));
	assert_true(sh_rule_match("421 *", gmail));
	assert_false(sh_rule_match("5?? *", gmail));
	assert_true(sh_rule_match("*TOO MANY CONNECTIONS*",
		"421 4.7.0 too many connections from your IP"));
	assert_true(sh_rule_match("4?? *TS[S0]0[0-9]*", "421 4.7.0 [TSS04] "
		"Messages from 203.0.113.9 temporarily deferred due to unexpected "
		"volume or user complaints"));
	assert_true(sh_rule_match("4?? 4.7.65[01] *", "451 4.7.650 The mail "
		"server [203.0.113.9] has been temporarily rate limited due to IP "
		"reputation."));
	assert_false(sh_rule_match("421 *try again later*",
		"451 4.7.1 <a@b>: try again later (injected)"));
	assert_false(sh_rule_match("421 *", NULL));
}

static void test_warmup_days(void **state)
{
	(void)state;
	const uint32_t caps[] = { 500, 1000, 2500 };
	assert_int_equal(sh_warmup_cap(caps, 3, 100, 100), 500);
	assert_int_equal(sh_warmup_cap(caps, 3, 100, 101), 1000);
	assert_int_equal(sh_warmup_cap(caps, 3, 100, 102), 2500);
	assert_int_equal(sh_warmup_cap(caps, 3, 100, 103), UINT32_MAX);
	assert_int_equal(sh_warmup_cap(caps, 3, 100, 99), 500);   /* clock back */
	assert_int_equal(sh_warmup_cap(caps, 0, 100, 100), UINT32_MAX);
	/* Local days: in UTC-3 (Brasília) 02:00 UTC is still the day before. */
	setenv("TZ", "America/Sao_Paulo", 1);
	tzset();
	time_t t = 1763863200;                 /* 2025-11-23 02:00:00 UTC */
	assert_int_equal(sh_day(t), sh_day(t - 6 * 3600));
	assert_int_equal(sh_day(t) + 1, sh_day(t + 3 * 3600));
	time_t next = sh_next_day(t);          /* 2025-11-23 00:00 -03 */
	assert_int_equal(next, 1763866800);
	assert_int_equal(sh_day(next), sh_day(t) + 1);
	assert_int_equal(sh_day(next - 1), sh_day(t));
	setenv("TZ", "UTC", 1);
	tzset();
	assert_int_equal(sh_day(0), 0);
	assert_int_equal(sh_day(86400 * 20000 + 5), 20000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_rate),
		cmocka_unit_test(test_bucket_set_keeps_tokens),
		cmocka_unit_test(test_adapt_down_and_up),
		cmocka_unit_test(test_adapt_suspend),
		cmocka_unit_test(test_rules),
		cmocka_unit_test(test_warmup_days),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
